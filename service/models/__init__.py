"""Network definitions (one builder per architecture) and loading from the model repository."""
