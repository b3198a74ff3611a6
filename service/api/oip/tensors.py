"""Open Inference Protocol tensors <-> numpy: data types, raw bytes, JSON data and typed gRPC contents.

Pure functions, no I/O. A tensor's values are a numpy array of its shape (numeric data types) or a
flat list of ``bytes`` (``BYTES``). Every malformed tensor is an ``InvalidArgument`` (400 /
INVALID_ARGUMENT) that names the tensor.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidArgument

# The protocol's data types with a numpy equivalent, little-endian on the wire (BF16 has none).
NUMPY_TYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMPY_TYPES, "BYTES")

# The field of the gRPC InferTensorContents that holds each data type (FP16 travels raw only).
CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

Values = np.ndarray | list[bytes]
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name of a numpy dtype (byte order aside)."""
    for name, known in NUMPY_TYPES.items():
        if known.newbyteorder("=") == dtype.newbyteorder("="):
            return name
    raise ValueError(f"no Open Inference Protocol data type for {dtype}")


def check_shape(name: str, shape: Sequence[Any]) -> tuple[int, ...]:
    """The shape as ints; 400 unless every dimension is a non-negative integer."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidArgument(f"input {name!r}: shape must be a list of integers")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidArgument(f"input {name!r}: shape {list(shape)} must hold non-negative integers")
        dims.append(int(d))
    return tuple(dims)


def check_datatype(name: str, datatype: str) -> str:
    if datatype not in DATATYPES:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}; known: {', '.join(DATATYPES)}")
    return datatype


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# --- raw bytes (HTTP binary extension, gRPC raw_*_contents) ----------------------------------------------


def from_raw(name: str, raw: bytes, datatype: str, shape: tuple[int, ...]) -> Values:
    """Raw bytes -> values: row-major little-endian elements, or BYTES as length-prefixed elements."""
    count = element_count(shape)
    if datatype == "BYTES":
        return _split_bytes(name, raw, count)
    dtype = NUMPY_TYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {name!r}: {len(raw)} bytes of data, but shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype).reshape(shape)


def _split_bytes(name: str, raw: bytes, count: int) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    view, items, at = memoryview(raw), [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidArgument(f"input {name!r}: BYTES data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(view, at)
        at += 4
        if at + size > len(raw):
            raise InvalidArgument(f"input {name!r}: a BYTES element of {size} bytes runs past the data")
        items.append(bytes(view[at : at + size]))
        at += size
    if len(items) != count:
        raise InvalidArgument(f"input {name!r}: {len(items)} BYTES elements, but its shape holds {count}")
    return items


def to_raw(values: Values, datatype: str) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(v)) + v for v in values)
    return np.ascontiguousarray(values, NUMPY_TYPES[datatype]).tobytes()


# --- JSON data (HTTP) ----------------------------------------------------------------------------------


def from_json(name: str, data: Any, datatype: str, shape: tuple[int, ...], base64_strings: bool) -> Values:
    """JSON ``data`` (flat or nested, row-major) -> values. BYTES elements are strings: their UTF-8
    bytes, or with ``base64_strings`` (the input's ``content_type: base64`` parameter) their decoding."""
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name!r}: 'data' must be a JSON array (or use binary_data_size)")
    count = element_count(shape)
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if len(flat) != count:
            raise InvalidArgument(f"input {name!r}: {len(flat)} elements, but its shape holds {count}")
        return [_string_bytes(name, s, base64_strings) for s in flat]
    try:
        given = np.asarray(data)
    except ValueError:  # ragged nesting
        raise InvalidArgument(f"input {name!r}: 'data' is not a regular array") from None
    if given.size != count:
        raise InvalidArgument(f"input {name!r}: {given.size} elements, but shape {list(shape)} holds {count}")
    return _coerce(name, given.reshape(shape), NUMPY_TYPES[datatype], datatype)


def _flatten(data: Any):
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _string_bytes(name: str, value: Any, base64_strings: bool) -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"input {name!r}: BYTES elements in JSON must be strings")
    if not base64_strings:
        return value.encode()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"input {name!r}: an element is not valid base64") from None


def _coerce(name: str, given: np.ndarray, dtype: np.dtype, datatype: str) -> np.ndarray:
    """JSON numbers -> ``dtype``, refusing what would change a value (floats for integers, out of range)."""
    kinds = {"b": "b", "u": "biu", "i": "biu", "f": "biuf"}[dtype.kind]
    if given.size and given.dtype.kind not in kinds:
        raise InvalidArgument(f"input {name!r}: elements of {given.dtype.kind!r} kind are not {datatype}")
    if dtype.kind in "iu" and given.size:
        info = np.iinfo(dtype)
        if given.min() < info.min or given.max() > info.max:
            raise InvalidArgument(f"input {name!r}: elements out of {datatype}'s range")
    return given.astype(dtype)


def to_json(values: Values, datatype: str) -> list:
    """Values -> a flat JSON array (BYTES: UTF-8 strings)."""
    if datatype == "BYTES":
        return [v.decode() for v in values]
    return np.asarray(values).reshape(-1).tolist()


# --- typed gRPC contents ---------------------------------------------------------------------------------


def from_contents(name: str, contents: Sequence[Any], datatype: str, shape: tuple[int, ...]) -> Values:
    """The repeated field of a gRPC InferTensorContents -> values."""
    count = element_count(shape)
    if len(contents) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(contents)} elements, but shape {list(shape)} holds {count}"
        )
    if datatype == "BYTES":
        return [bytes(v) for v in contents]
    return _coerce(name, np.asarray(contents).reshape(shape), NUMPY_TYPES[datatype], datatype)


def to_contents(values: Values, datatype: str) -> list:
    if datatype == "BYTES":
        return list(values)
    return np.asarray(values).reshape(-1).tolist()
