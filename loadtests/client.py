"""The Python client's pieces the load tests use, imported from here only: when the client moves to
its own package (``clients/python``, ``segserve_client``), the lines below are all that change."""

from service.client.grpc import GrpcClient, channel_options
from service.client.images import encode_array
from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

__all__ = ["GrpcClient", "channel_options", "encode_array", "pb", "pb_grpc"]
