"""Pure image functions: decoding, geometry, encodings, overlays, panoptic post-processing.

Nothing here imports Ray, so all of it is tested without starting a cluster.
"""
