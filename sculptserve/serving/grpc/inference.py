"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2).

A translation layer: messages of ``grpc_predict_v2.proto`` to the transport-free calls of
:mod:`sculptserve.serving.oip` and back; the models, their metadata and the checks of a tensor
against its model live there, and inference runs through the same
:class:`~sculptserve.serving.core.EmbeddingApp` as ``sculpt.v1.Sculpt`` and REST (validation,
limits, micro-batcher, drift monitor). Served by :func:`sculptserve.serving.grpc.server.
build_server` on the same port, behind the same API key (all RPCs but ServerLive, ServerReady
and ModelReady), shutdown gate and response cap.

Tensors: an input's bytes come from ``raw_input_contents`` (one entry per input, in order;
what tritonclient sends) or from its ``contents``; outputs always go out in
``raw_output_contents``. A bad tensor (datatype, shape, byte count, NaN, too many items) is
INVALID_ARGUMENT with a message naming the input; an unknown model or version NOT_FOUND; a
response over the cap RESOURCE_EXHAUSTED before the model runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Any

from sculptserve.serving import oip
from sculptserve.serving.core import EmbeddingApp
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.grpc import grpc_predict_v2_pb2 as pb
from sculptserve.serving.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from sculptserve.serving.grpc.errors import ResponseBudget, guarded

__all__ = ["HEALTH_METHODS", "SERVICE_NAME", "InferenceServicer"]

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
# The protocol's health RPCs: open without the API key, and answered while the server drains
# (ServerReady and ModelReady say false then), like grpc.health.v1.
HEALTH_METHODS = ("ServerLive", "ServerReady", "ModelReady")

# datatype -> the InferTensorContents field that carries it (FP16 travels raw only)
_CONTENTS_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
# Output parameters that would change what an output holds; refused rather than ignored.
_UNSUPPORTED_OUTPUT_PARAMETERS = ("classification",)


def _parameters(params: Mapping[str, pb.InferParameter], what: str) -> dict[str, Any]:
    """A parameters map as plain values (the oneof's one set field)."""
    values = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is None:
            raise PayloadError(f"{what} parameter {key!r} has no value")
        values[key] = getattr(param, choice)
    return values


def _contents(tensor: pb.ModelInferRequest.InferInputTensor, what: str) -> list[Any]:
    """The values of a tensor's typed ``contents`` (the field its datatype travels in)."""
    field = _CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        raise PayloadError(f"{what}: datatype {tensor.datatype} travels in raw_input_contents only")
    return list(getattr(tensor.contents, field))


def _input_tensors(model: oip.OipModel, request: pb.ModelInferRequest) -> list[oip.Tensor]:
    """The request's input tensors, each checked against ``model`` before its data is read."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise PayloadError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send "
            "one per input, in the order of inputs"
        )
    tensors: list[oip.Tensor] = []
    for i, tensor in enumerate(request.inputs):
        what = f"input '{tensor.name}'"
        if any(t.name == tensor.name for t in tensors):
            raise PayloadError(f"{what} is given twice")
        if raw and tensor.HasField("contents"):
            raise PayloadError(f"{what}: set either contents or raw_input_contents, not both")
        shape = list(tensor.shape)
        if raw:
            tensors.append(model.input_from_bytes(tensor.name, tensor.datatype, shape, raw[i]))
        elif tensor.HasField("contents"):
            model.input_spec(tensor.name).check(tensor.datatype, shape)  # before the values
            values = _contents(tensor, what)
            tensors.append(model.input_from_values(tensor.name, tensor.datatype, shape, values))
        else:
            raise PayloadError(
                f"{what} carries no data: send raw_input_contents or contents (shared memory "
                "is not supported)"
            )
    return tensors


def _requested(model: oip.OipModel, request: pb.ModelInferRequest) -> list[str] | None:
    """The output names the request asks for, in its order (None: all of the model's)."""
    for output in request.outputs:
        for name in _UNSUPPORTED_OUTPUT_PARAMETERS:
            if name in output.parameters:
                raise PayloadError(f"output '{output.name}': parameter {name!r} is not supported")
    return [output.name for output in request.outputs] or None


def _item_bytes(model: oip.OipModel, requested: list[str] | None) -> int:
    """Wire bytes of one item's outputs, at most: an embedding in another encoding (FP16,
    UINT8, INT8) is smaller than the FP32 of the metadata, so this is an upper bound."""
    return sum(
        math.prod(spec.shape[1:]) * oip.DATATYPES[spec.datatype].itemsize
        for spec in model.outputs
        if requested is None or spec.name in requested
    )


def _tensor_metadata(specs: list[dict[str, Any]]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(**spec) for spec in specs]


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """``inference.GRPCInferenceService`` over an :class:`EmbeddingApp`.

    ``ready`` says whether the server serves (the app is ready and no shutdown drain began):
    ServerReady and ModelReady answer it. Inference runs in a worker thread, like
    ``sculpt.v1.Sculpt``'s calls, so the event loop stays free.
    """

    def __init__(self, app: EmbeddingApp, ready: Callable[[], bool]) -> None:
        self.app = app
        self.models = oip.OipModels(app)
        self._ready = ready
        self._budget = ResponseBudget(app.limits.max_grpc_response_bytes)

    @guarded
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    @guarded
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self._ready())

    @guarded
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        try:
            self.models.get(request.name, request.version)
        except oip.ModelNotFound:
            return pb.ModelReadyResponse(ready=False)  # the spec's answer, not an error
        return pb.ModelReadyResponse(ready=self._ready())

    @guarded
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        # raw_input_contents / raw_output_contents are part of the gRPC protocol itself: no
        # extension to announce (REST announces binary_tensor_data)
        return pb.ServerMetadataResponse(**oip.server_metadata(()))

    @guarded
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        meta = self.models.get(request.name, request.version).metadata()
        return pb.ModelMetadataResponse(
            **{k: v for k, v in meta.items() if k not in ("inputs", "outputs")},
            inputs=_tensor_metadata(meta["inputs"]),
            outputs=_tensor_metadata(meta["outputs"]),
        )

    @guarded
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        model = self.models.get(request.model_name, request.model_version)
        tensors = _input_tensors(model, request)
        requested = _requested(model, request)
        items = max((len(t.array) for t in tensors if t.array.ndim), default=0)
        self._budget.check(
            "ModelInfer", items, _item_bytes(model, requested), "inputs",
            extra_bytes=len(request.id),
        )  # fmt: skip
        parameters = _parameters(request.parameters, "request")
        outputs = await asyncio.to_thread(model.infer, tensors, parameters, requested)
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        for tensor in outputs:
            response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            response.raw_output_contents.append(bytes(oip.tensor_bytes(tensor.array)))
        return response
