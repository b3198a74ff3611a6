from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaskFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FORMAT_UNSPECIFIED: _ClassVar[MaskFormat]
    MASK_FORMAT_PNG: _ClassVar[MaskFormat]
    MASK_FORMAT_RAW: _ClassVar[MaskFormat]
    MASK_FORMAT_RLE: _ClassVar[MaskFormat]
    MASK_FORMAT_POLYGONS: _ClassVar[MaskFormat]
    MASK_FORMAT_COCO_PANOPTIC: _ClassVar[MaskFormat]
MASK_FORMAT_UNSPECIFIED: MaskFormat
MASK_FORMAT_PNG: MaskFormat
MASK_FORMAT_RAW: MaskFormat
MASK_FORMAT_RLE: MaskFormat
MASK_FORMAT_POLYGONS: MaskFormat
MASK_FORMAT_COCO_PANOPTIC: MaskFormat

class SegmentRequest(_message.Message):
    __slots__ = ("model", "image", "content_type", "format", "overlay", "request_id", "frame_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    content_type: str
    format: MaskFormat
    overlay: bool
    request_id: str
    frame_id: str
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., content_type: _Optional[str] = ..., format: _Optional[_Union[MaskFormat, str]] = ..., overlay: _Optional[bool] = ..., request_id: _Optional[str] = ..., frame_id: _Optional[str] = ...) -> None: ...

class ClassPresence(_message.Message):
    __slots__ = ("id", "name", "pixels")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    pixels: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., pixels: _Optional[int] = ...) -> None: ...

class Rle(_message.Message):
    __slots__ = ("size", "counts")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    size: _containers.RepeatedScalarFieldContainer[int]
    counts: str
    def __init__(self, size: _Optional[_Iterable[int]] = ..., counts: _Optional[str] = ...) -> None: ...

class ClassRle(_message.Message):
    __slots__ = ("class_id", "rle")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    rle: Rle
    def __init__(self, class_id: _Optional[int] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ...) -> None: ...

class Polygon(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, points: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassPolygons(_message.Message):
    __slots__ = ("class_id", "polygons")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, class_id: _Optional[int] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class PanopticSegment(_message.Message):
    __slots__ = ("id", "category_id", "isthing", "area", "bbox", "score", "rle")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    ISTHING_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    id: int
    category_id: int
    isthing: bool
    area: int
    bbox: _containers.RepeatedScalarFieldContainer[float]
    score: float
    rle: Rle
    def __init__(self, id: _Optional[int] = ..., category_id: _Optional[int] = ..., isthing: _Optional[bool] = ..., area: _Optional[int] = ..., bbox: _Optional[_Iterable[float]] = ..., score: _Optional[float] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("id", "category_id", "name", "score", "bbox", "area", "rle", "polygons")
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    BBOX_FIELD_NUMBER: _ClassVar[int]
    AREA_FIELD_NUMBER: _ClassVar[int]
    RLE_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    id: int
    category_id: int
    name: str
    score: float
    bbox: _containers.RepeatedScalarFieldContainer[float]
    area: int
    rle: Rle
    polygons: _containers.RepeatedCompositeFieldContainer[Polygon]
    def __init__(self, id: _Optional[int] = ..., category_id: _Optional[int] = ..., name: _Optional[str] = ..., score: _Optional[float] = ..., bbox: _Optional[_Iterable[float]] = ..., area: _Optional[int] = ..., rle: _Optional[_Union[Rle, _Mapping]] = ..., polygons: _Optional[_Iterable[_Union[Polygon, _Mapping]]] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("model", "task", "request_id", "frame_id", "width", "height", "classes", "format", "mask_png", "mask_raw", "mask_dtype", "rles", "polygons", "segments", "overlay_png", "timings_ms", "batch_size", "error", "instances")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MASK_PNG_FIELD_NUMBER: _ClassVar[int]
    MASK_RAW_FIELD_NUMBER: _ClassVar[int]
    MASK_DTYPE_FIELD_NUMBER: _ClassVar[int]
    RLES_FIELD_NUMBER: _ClassVar[int]
    POLYGONS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: str
    request_id: str
    frame_id: str
    width: int
    height: int
    classes: _containers.RepeatedCompositeFieldContainer[ClassPresence]
    format: MaskFormat
    mask_png: bytes
    mask_raw: bytes
    mask_dtype: str
    rles: _containers.RepeatedCompositeFieldContainer[ClassRle]
    polygons: _containers.RepeatedCompositeFieldContainer[ClassPolygons]
    segments: _containers.RepeatedCompositeFieldContainer[PanopticSegment]
    overlay_png: bytes
    timings_ms: _containers.ScalarMap[str, float]
    batch_size: int
    error: FrameError
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, model: _Optional[str] = ..., task: _Optional[str] = ..., request_id: _Optional[str] = ..., frame_id: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., classes: _Optional[_Iterable[_Union[ClassPresence, _Mapping]]] = ..., format: _Optional[_Union[MaskFormat, str]] = ..., mask_png: _Optional[bytes] = ..., mask_raw: _Optional[bytes] = ..., mask_dtype: _Optional[str] = ..., rles: _Optional[_Iterable[_Union[ClassRle, _Mapping]]] = ..., polygons: _Optional[_Iterable[_Union[ClassPolygons, _Mapping]]] = ..., segments: _Optional[_Iterable[_Union[PanopticSegment, _Mapping]]] = ..., overlay_png: _Optional[bytes] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., batch_size: _Optional[int] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ClassInfo(_message.Message):
    __slots__ = ("id", "name", "color", "isthing")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOR_FIELD_NUMBER: _ClassVar[int]
    ISTHING_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    color: _containers.RepeatedScalarFieldContainer[int]
    isthing: bool
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., color: _Optional[_Iterable[int]] = ..., isthing: _Optional[bool] = ...) -> None: ...

class InputPolicy(_message.Message):
    __slots__ = ("mode", "size", "size_divisor", "mean", "std", "max_size")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIZE_DIVISOR_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    size: int
    size_divisor: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    max_size: int
    def __init__(self, mode: _Optional[str] = ..., size: _Optional[int] = ..., size_divisor: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., max_size: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "task", "version", "weights_digest", "description", "architecture", "classes", "input", "max_batch_size", "instance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    version: str
    weights_digest: str
    description: str
    architecture: str
    classes: _containers.RepeatedCompositeFieldContainer[ClassInfo]
    input: InputPolicy
    max_batch_size: int
    instance: InstanceSettings
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., version: _Optional[str] = ..., weights_digest: _Optional[str] = ..., description: _Optional[str] = ..., architecture: _Optional[str] = ..., classes: _Optional[_Iterable[_Union[ClassInfo, _Mapping]]] = ..., input: _Optional[_Union[InputPolicy, _Mapping]] = ..., max_batch_size: _Optional[int] = ..., instance: _Optional[_Union[InstanceSettings, _Mapping]] = ...) -> None: ...

class InstanceSettings(_message.Message):
    __slots__ = ("score_threshold", "nms_threshold", "max_detections", "mask_threshold")
    SCORE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NMS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MAX_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    MASK_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    score_threshold: float
    nms_threshold: float
    max_detections: int
    mask_threshold: float
    def __init__(self, score_threshold: _Optional[float] = ..., nms_threshold: _Optional[float] = ..., max_detections: _Optional[int] = ..., mask_threshold: _Optional[float] = ...) -> None: ...
