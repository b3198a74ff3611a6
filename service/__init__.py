"""segserve: semantic and panoptic segmentation served with Ray Serve over HTTP and gRPC."""

__version__ = "0.1.0"
