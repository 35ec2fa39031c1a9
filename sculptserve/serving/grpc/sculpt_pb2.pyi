from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    dtype: str
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., dtype: _Optional[str] = ...) -> None: ...

class Inputs(_message.Message):
    __slots__ = ("tensor", "images")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    images: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., images: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("inputs", "encoding")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    inputs: Inputs
    encoding: str
    def __init__(self, inputs: _Optional[_Union[Inputs, _Mapping]] = ..., encoding: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "encoding")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    embeddings: Tensor
    encoding: str
    def __init__(self, embeddings: _Optional[_Union[Tensor, _Mapping]] = ..., encoding: _Optional[str] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: Inputs
    def __init__(self, inputs: _Optional[_Union[Inputs, _Mapping]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: Tensor
    def __init__(self, outputs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("n", "seed", "fixed", "output")
    class FixedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FIXED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    n: int
    seed: int
    fixed: _containers.ScalarMap[int, float]
    output: str
    def __init__(self, n: _Optional[int] = ..., seed: _Optional[int] = ..., fixed: _Optional[_Mapping[int, float]] = ..., output: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("latents", "samples", "png", "seed")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    samples: Tensor
    png: _containers.RepeatedScalarFieldContainer[bytes]
    seed: int
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ..., png: _Optional[_Iterable[bytes]] = ..., seed: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("json", "name", "version", "latent_dim", "input_shape", "modality")
    JSON_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    json: str
    name: str
    version: str
    latent_dim: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    modality: str
    def __init__(self, json: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., latent_dim: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., modality: _Optional[str] = ...) -> None: ...

class GetDriftRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetDriftResponse(_message.Message):
    __slots__ = ("json", "state", "alert")
    JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    json: str
    state: str
    alert: bool
    def __init__(self, json: _Optional[str] = ..., state: _Optional[str] = ..., alert: _Optional[bool] = ...) -> None: ...
