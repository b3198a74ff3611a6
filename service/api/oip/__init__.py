"""The Open Inference Protocol (KServe "v2", what Triton and KServe speak): a third adapter over the one
``SegmentationCore``, on the same ports as ``/v1``.

- ``model.py``: the tensors every model takes and gives, server and model metadata, model config;
- ``tensors.py``: data types, raw bytes, JSON data and typed gRPC contents <-> numpy;
- ``infer.py``: one inference, transport-free: N images through the core, the outputs asked for;
- ``http.py``: the ``/v2`` routes (JSON and the binary tensor data extension);
- ``grpc.py`` / ``convert.py``: ``inference.GRPCInferenceService`` and its protobuf conversions.
"""
