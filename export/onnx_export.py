"""torch -> ONNX: export one module as a single-file graph, check it against torch, fp16 copy.

- :func:`export_module` uses the dynamo exporter (``torch.onnx.export(..., dynamo=True)``)
  with a dynamic batch axis named ``"batch"``, traces with a batch of at least 2 (a traced
  batch of 1 gets specialized), embeds the weights (``external_data=False``: one file), runs
  ``onnx.checker`` with shape inference, and only then renames the file into place.
- :func:`parity_check` compares ONNX Runtime (CPU) with torch on real inputs and on batches of
  several sizes (1 and odd sizes catch a batch axis that was specialized or mis-reshaped).
- :func:`convert_fp16` makes a float16 copy for GPU serving whose inputs and outputs stay
  float32, so callers feed and read the same arrays as for the fp32 graph.

fp16 tolerance (:data:`FP16_TOLERANCE`, 1e-2 absolute): measured with ONNX Runtime 1.32 CPU on
the trained ``shapes`` 64x64 model (width 16, 6 latents, |z| <= 3.5) over 2,048 held-out
inputs, the max abs error against torch fp32 was 4.6e-4 for the encoder (latents) and 1.1e-3
for the decoder (sigmoid outputs); untrained conv/MLP models gave 1e-4 to 8e-4. 1e-2 leaves
about 10x headroom. float16 keeps 11 significant bits, so the error grows with the size of the
outputs: :func:`fp16_tolerance` scales the bound for latents far from zero (wide priors).
The CPU build may run fp16 ops lacking a CPU kernel through inserted float32 casts, so a GPU may
see somewhat larger errors than these (not measured here: no GPU in this session).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from sculptserve.files import atomic_path

__all__ = [
    "FP16_TOLERANCE",
    "FP32_TOLERANCE",
    "PARITY_CHUNK",
    "ExportError",
    "ParityError",
    "ParityResult",
    "convert_fp16",
    "export_module",
    "fp16_tolerance",
    "ort_session",
    "parity_check",
]

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
# Held-out inputs go through both runtimes this many rows at a time (bounded memory).
PARITY_CHUNK = 256
BATCH_AXIS = "batch"

# Loggers that print warnings during a successful export (e.g. "torchvision is not installed")
# or dump whole graphs on failure; the failure itself still reaches the caller as ExportError.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportError(RuntimeError):
    """A module could not be exported to ONNX; the message names the module, the file and why."""


class ParityError(ValueError):
    """ONNX Runtime and torch disagree beyond the tolerance (or cannot be compared)."""


@dataclass(frozen=True)
class ParityResult:
    """Max abs error overall and per batch size (held-out chunks count under their size)."""

    max_abs_error: float
    per_batch: dict[int, float]
    tolerance: float


def fp16_tolerance(output_scale: float = 1.0) -> float:
    """Tolerance for an fp16 graph whose outputs reach ``output_scale`` in absolute value.

    :data:`FP16_TOLERANCE` up to a scale of 1 (sigmoid images, unit latents), then the same
    bound relative to the scale: float16 rounding error is proportional to the magnitude.
    """
    return FP16_TOLERANCE * max(1.0, float(output_scale))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's warnings, log lines and prints for the duration of the block."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    sink = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no dropout or sampling); every submodule's mode restored."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _reason(exc: BaseException) -> str:
    """A short cause: the exporter's "Exception summary" when it has one, else the message."""
    text = _ANSI.sub("", str(exc))
    summary = re.search(r"## Exception summary\s*(.+?)(?:\n\s*\(Refer to|\Z)", text, re.S)
    if summary:
        text = summary.group(1)
    text = " ".join(re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text).split())
    if len(text) > 500:
        text = text[:500] + " ..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    """The example as a float32 batch of at least 2 rows (torch.export specializes 0 and 1)."""
    x = torch.as_tensor(example).detach().to(device="cpu", dtype=torch.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"the example must be a non-empty batch, got shape {tuple(x.shape)}")
    if x.shape[0] == 1:
        x = x.repeat(2, *([1] * (x.ndim - 1)))
    return x


def _check_graph(model: onnx.ModelProto, input_name: str, output_name: str) -> None:
    """The graph has one input and one output with the requested names and a dynamic batch."""
    graph = model.graph
    inputs, outputs = [v.name for v in graph.input], [v.name for v in graph.output]
    if inputs != [input_name] or outputs != [output_name]:
        raise ValueError(
            f"graph inputs {inputs} / outputs {outputs}, expected [{input_name!r}] / "
            f"[{output_name!r}] (the exporter ignored input_names/output_names?)"
        )
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ValueError(f"{value.name!r} has no dynamic batch axis (shape {dims})")
    external = [t.name for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ValueError(f"weights stored outside the file: {external[:3]}")


def export_module(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    input_name: str,
    output_name: str,
    opset: int = 18,
) -> None:
    """Export ``module`` (in eval mode) to a single ONNX file at ``path``, batch axis dynamic.

    ``example`` is a batch of inputs (a batch of 1 is repeated to 2 for tracing). The file is
    checked with ``onnx.checker`` (with shape inference) before it replaces ``path``; any
    failure raises :class:`ExportError` and leaves ``path`` as it was.
    """
    path = Path(path)
    what = f"{type(module).__name__} to {path}"
    try:
        x = _batch_of_two(example)
        with _eval_mode(module), atomic_path(path) as tmp, _quiet_exporter():
            torch.onnx.export(
                module,
                (x,),
                str(tmp),
                dynamo=True,
                # a tuple matching the positional args: no dependence on forward's arg name
                dynamic_shapes=({0: torch.export.Dim(BATCH_AXIS)},),
                input_names=[input_name],
                output_names=[output_name],
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
            onnx.checker.check_model(str(tmp), full_check=True)
            _check_graph(onnx.load(str(tmp)), input_name, output_name)
    except Exception as exc:
        raise ExportError(f"cannot export {what}: {_reason(exc)}") from exc


def ort_session(path: Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session; ``threads`` sets the intra-op pool (None: ORT's default).

    ORT's default uses every core it sees, not a container's CPU limit: pass ``threads`` when
    the process does not own the machine.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session warnings in logs and tests
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1  # sequential graph: the inter-op pool would sit idle
    return onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _outputs(value: object) -> list[np.ndarray]:
    tensors = value if isinstance(value, list | tuple) else [value]
    return [t.detach().cpu().numpy() for t in tensors]  # type: ignore[union-attr]


def _max_abs_error(
    module: torch.nn.Module, session: onnxruntime.InferenceSession, batch: torch.Tensor, label: str
) -> float:
    """Max abs difference of every output; NaN where only one side is NaN counts as infinite."""
    with torch.no_grad():
        expected = _outputs(module(batch))
    feed = {session.get_inputs()[0].name: batch.numpy()}
    try:
        got = session.run(None, feed)
    except Exception as exc:
        raise ParityError(
            f"{label}: ONNX Runtime cannot run a batch of size {len(batch)}: {_reason(exc)}"
        ) from exc
    if len(got) != len(expected):
        raise ParityError(f"{label}: ONNX has {len(got)} outputs, torch {len(expected)}")
    worst = 0.0
    for ort_out, torch_out in zip(got, expected, strict=True):
        if ort_out.shape != torch_out.shape:
            raise ParityError(
                f"{label}: output shape {ort_out.shape} from ONNX Runtime, {torch_out.shape} "
                f"from torch at batch size {len(batch)}"
            )
        a, b = ort_out.astype(np.float64), torch_out.astype(np.float64)
        diff = np.abs(a - b)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.nan_to_num(diff, nan=np.inf))
        if diff.size:
            worst = max(worst, float(diff.max()))
    return worst


def parity_check(
    module: torch.nn.Module,
    onnx_path: Path,
    inputs: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 2, 7, 64),
    tolerance: float = FP32_TOLERANCE,
) -> ParityResult:
    """Compare ONNX Runtime (CPU) with torch (eval, no_grad, float32); raise if they disagree.

    Runs every row of ``inputs`` (real held-out data) in chunks of :data:`PARITY_CHUNK`, then
    one batch of each size in ``batch_sizes`` drawn from ``inputs`` (cycled when there are
    fewer rows). ``per_batch`` maps each batch size seen (chunk sizes included) to its max abs
    error. Raises :class:`ParityError` naming the worst batch size and the tolerance.
    """
    onnx_path = Path(onnx_path)
    x = torch.as_tensor(inputs).detach().to(device="cpu", dtype=torch.float32)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"parity_check needs a non-empty batch of inputs, got {tuple(x.shape)}")
    sizes = [int(b) for b in batch_sizes]
    if any(b < 1 for b in sizes):
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    session = ort_session(onnx_path)
    label = str(onnx_path)

    batches = list(x.split(PARITY_CHUNK))
    batches += [x[torch.arange(b) % len(x)] for b in sizes]
    per_batch: dict[int, float] = {}
    with _eval_mode(module):
        for batch in batches:
            error = _max_abs_error(module, session, batch, label)
            per_batch[len(batch)] = max(per_batch.get(len(batch), 0.0), error)

    per_batch = dict(sorted(per_batch.items()))
    worst_size = max(per_batch, key=per_batch.__getitem__)
    worst = per_batch[worst_size]
    if not worst <= tolerance:
        failing = [b for b, e in per_batch.items() if not e <= tolerance]
        raise ParityError(
            f"{label}: ONNX Runtime and torch disagree: max abs error {worst:.3g} at batch size "
            f"{worst_size} exceeds the tolerance {tolerance:g} (failing batch sizes: "
            f"{', '.join(map(str, failing))})"
        )
    return ParityResult(max_abs_error=worst, per_batch=per_batch, tolerance=float(tolerance))


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Topologically sort ``graph.node`` in place (stable).

    The fp16 converter appends the casts of the graph inputs at the end of the node list,
    which ONNX Runtime tolerates but ``onnx.checker`` rejects.
    """
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in known for name in n.input)]
        if not ready:
            missing = sorted({i for n in pending for i in n.input if i not in known})
            raise ValueError(f"graph nodes cannot be ordered; unresolved values {missing[:5]}")
        for node in ready:
            known.update(node.output)
        ordered += ready
        pending = [n for n in pending if not any(n is r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(src: Path, dst: Path) -> None:
    """Write a float16 copy of the ONNX file ``src`` to ``dst`` (may be the same path).

    Weights and activations become float16; inputs and outputs stay float32
    (``keep_io_types``), so callers and the parity check feed the same arrays. Check its
    parity with :data:`FP16_TOLERANCE` (see the module docstring for the measurement).
    """
    src, dst = Path(src), Path(dst)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(src))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "value truncated to fp16 range" notes per tensor
            half = convert_float_to_float16(model, keep_io_types=True)
        _sort_nodes(half.graph)
        for value in (*half.graph.input, *half.graph.output):
            if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                raise ValueError(f"{value.name!r} is no longer float32 after conversion")
        onnx.checker.check_model(half, full_check=True)
        with atomic_path(dst) as tmp:
            onnx.save(half, str(tmp))
    except Exception as exc:
        raise ExportError(f"cannot convert {src} to float16 at {dst}: {_reason(exc)}") from exc
