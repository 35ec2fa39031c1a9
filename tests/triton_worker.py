"""A tritonclient.grpc process for the tests: one JSON request per stdin line, one JSON answer
per stdout line.

tritonclient's stubs and sculptserve's both define the protobuf package ``inference`` (the
protocol's own name), and a process's default descriptor pool refuses the second definition
("duplicate symbol 'inference.ServerLiveRequest'"). So tritonclient.grpc never shares a process
with the server: the tests (tests/test_oip_grpc.py) drive it here. This module imports only
tritonclient, numpy and the standard library.

Requests (every one has ``url``, ``host:port``; ``headers`` is optional gRPC metadata):

- ``{"op": "call", "method": M, "kwargs": {...}}``: ``client.M(**kwargs)`` of
  ``InferenceServerClient`` (``is_server_live``, ``get_model_metadata`` with ``as_json``...);
- ``{"op": "infer", "model": M, "inputs": [{"name", "datatype", "array", "shape"?}], ...}``:
  ``client.infer`` with ``InferInput(name, array.shape, datatype).set_data_from_numpy(array)``
  (and then ``set_shape(shape)`` when a ``shape`` is given: a shape that disagrees with the
  data, through tritonclient's public API); optional ``outputs`` (names), ``parameters``,
  ``model_version``, ``request_id``. The answer has the response header (``as_json``) and
  every output as an array;
- ``{"op": "descriptor", "messages": [...]}``: the fields of tritonclient's own messages and the
  methods of its ``GRPCInferenceService`` (for the wire-compatibility test).

Arrays travel as ``{"b64", "dtype", "shape"}`` (raw little-endian bytes). Answers are
``{"result": ...}``, ``{"error": {"status", "message"}}`` for an InferenceServerException, or
``{"crash": traceback}`` for anything else.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import tritonclient.grpc as triton
from array_json import decode, encode
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

_clients: dict[str, triton.InferenceServerClient] = {}


def client(url: str) -> triton.InferenceServerClient:
    if url not in _clients:
        _clients[url] = triton.InferenceServerClient(url)
    return _clients[url]


def call(req: dict[str, Any]) -> Any:
    kwargs = dict(req.get("kwargs", {}))
    if req.get("headers"):
        kwargs["headers"] = req["headers"]
    result = getattr(client(req["url"]), req["method"])(**kwargs)
    if isinstance(result, Message):  # a response without as_json
        return MessageToDict(result, preserving_proto_field_name=True)
    return result


def infer(req: dict[str, Any]) -> Any:
    inputs = []
    for spec in req["inputs"]:
        array = decode(spec["array"])
        tensor = triton.InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array)
        if "shape" in spec:
            tensor.set_shape(spec["shape"])
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(name) for name in req.get("outputs", [])]
    result = client(req["url"]).infer(
        req["model"],
        inputs,
        model_version=req.get("model_version", ""),
        outputs=outputs or None,
        request_id=req.get("request_id", ""),
        parameters=req.get("parameters"),
        headers=req.get("headers"),
    )
    response = result.get_response(as_json=True)
    arrays = {out["name"]: encode(result.as_numpy(out["name"])) for out in response["outputs"]}
    return {"response": response, "arrays": arrays}


def descriptor(req: dict[str, Any]) -> Any:
    def fields(message: Any) -> dict[str, Any]:
        out = {}
        for f in message.fields:
            kind = f.message_type.full_name if f.message_type else f.type
            out[f.name] = [f.number, kind, f.is_repeated]
        for nested in message.nested_types:
            out.update({f"{nested.name}.{k}": v for k, v in fields(nested).items()})
        return out

    pool = service_pb2.DESCRIPTOR
    service = pool.services_by_name["GRPCInferenceService"]
    return {
        "messages": {name: fields(pool.message_types_by_name[name]) for name in req["messages"]},
        "methods": {
            m.name: [
                m.input_type.full_name,
                m.output_type.full_name,
                m.client_streaming,
                m.server_streaming,
            ]
            for m in service.methods
        },
    }


OPS = {"call": call, "infer": infer, "descriptor": descriptor}


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = {"result": OPS[req["op"]](req)}
        except InferenceServerException as exc:
            answer = {"error": {"status": exc.status(), "message": exc.message()}}
        except Exception:  # a bug of the test or this worker: reported, the worker lives on
            answer = {"crash": traceback.format_exc()}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
