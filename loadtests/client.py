"""The Python client's pieces (``clients/python``, package ``segserve_client``) and the generated
protobufs that the load tests use, imported from here only."""

from segserve_client.grpc import GrpcClient, channel_options
from segserve_client.images import encode_array

from service.generated.segmentation.v1 import segmentation_pb2 as pb
from service.generated.segmentation.v1 import segmentation_pb2_grpc as pb_grpc

__all__ = ["GrpcClient", "channel_options", "encode_array", "pb", "pb_grpc"]
