"""torch -> ONNX export: parity with ONNX Runtime, dynamic batch, names, one file, errors, fp16."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sculptserve.export.onnx_export import (
    FP16_TOLERANCE,
    ExportError,
    ParityError,
    convert_fp16,
    export_module,
    fp16_tolerance,
    ort_session,
    parity_check,
)
from sculptserve.training.models import Autoencoder, build_autoencoder

BATCHES = (1, 2, 7, 64)


@dataclass
class Exported:
    model: Autoencoder
    folder: Path
    encoder: Path
    decoder: Path
    inputs: Callable[[int], torch.Tensor]  # n -> n held-out-like inputs
    latents: Callable[[int], torch.Tensor]  # n -> n latent vectors


def _uniform(shape: tuple[int, ...], seed: int) -> Callable[[int], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda n: torch.rand(n, *shape, generator=gen)


def _normal(shape: tuple[int, ...], seed: int) -> Callable[[int], torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return lambda n: torch.randn(n, *shape, generator=gen)


# (input shape, latent dim, width, example batch): the tabular case traces from a batch of 1 to
# cover the repeat-to-2 path.
CASES = {
    "conv16": ((1, 16, 16), 4, 8, 2),
    "conv64": ((1, 64, 64), 4, 8, 3),
    "tabular": ((6,), 3, 8, 1),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def exported(request, tmp_path_factory) -> Exported:
    shape, latent, width, example_batch = CASES[request.param]
    torch.manual_seed(0)
    model = build_autoencoder(shape, latent, width=width)
    folder = tmp_path_factory.mktemp(request.param)
    make = _uniform if len(shape) == 3 else _normal  # images in [0, 1], tabular standardized
    inputs, latents = make(shape, 1), _normal((latent,), 2)
    enc, dec = folder / "encoder.onnx", folder / "decoder.onnx"
    export_module(model.encoder, inputs(example_batch), enc, input_name="x", output_name="z")
    export_module(model.decoder, latents(example_batch), dec, input_name="z", output_name="x_hat")
    return Exported(model, folder, enc, dec, inputs, latents)


def test_parity_at_fp32_tolerance(exported: Exported) -> None:
    for module, path, data in (
        (exported.model.encoder, exported.encoder, exported.inputs(300)),
        (exported.model.decoder, exported.decoder, exported.latents(300)),
    ):
        result = parity_check(module, path, data, batch_sizes=BATCHES, tolerance=1e-4)
        assert result.tolerance == 1e-4
        assert result.max_abs_error <= 1e-4
        # held-out rows in chunks of 256 (256 + 44) and each requested batch size
        assert set(result.per_batch) == {*BATCHES, 256, 44}
        assert result.max_abs_error == max(result.per_batch.values())


def test_graph_has_names_dynamic_batch_and_one_file(exported: Exported) -> None:
    shape, latent = exported.model.input_shape, exported.model.latent_dim
    for path, names, dims in (
        (exported.encoder, ("x", "z"), (shape, (latent,))),
        (exported.decoder, ("z", "x_hat"), ((latent,), shape)),
    ):
        session = ort_session(path, threads=1)
        assert session.get_providers() == ["CPUExecutionProvider"]
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        assert (inp.name, out.name) == names
        for arg, rest in zip((inp, out), dims, strict=True):
            assert arg.shape[0] is None or isinstance(arg.shape[0], str)
            assert tuple(arg.shape[1:]) == tuple(rest)
            assert arg.type == "tensor(float)"
        model = onnx.load(str(path), load_external_data=False)
        assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    # one file per module: no external-data files or leftover temporaries beside them
    assert sorted(p.name for p in exported.folder.iterdir()) == ["decoder.onnx", "encoder.onnx"]


def test_batch_one_runs_on_the_exported_graph(exported: Exported) -> None:
    session = ort_session(exported.encoder)
    x = exported.inputs(1)
    (z,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        expected = exported.model.encoder(x).numpy()
    np.testing.assert_allclose(z, expected, atol=1e-4, rtol=0)


def test_parity_error_when_weights_differ(exported: Exported) -> None:
    encoder = copy.deepcopy(exported.model.encoder)
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.05)
    with pytest.raises(ParityError) as info:
        parity_check(encoder, exported.encoder, exported.inputs(16), batch_sizes=BATCHES)
    message = str(info.value)
    assert re.search(r"max abs error \S+ at batch size \d+", message)
    assert f"tolerance {1e-4:g}" in message
    assert "encoder.onnx" in message


def test_parity_error_on_output_shape_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_autoencoder((6,), 3, hidden=16)
    path = tmp_path / "decoder.onnx"
    export_module(model.decoder, torch.randn(2, 3), path, input_name="z", output_name="x_hat")
    other = torch.nn.Linear(3, 5)  # same input, 5 outputs instead of 6
    with pytest.raises(ParityError, match="output shape"):
        parity_check(other, path, torch.randn(4, 3))


def test_stochastic_encoder_exports_the_mean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_autoencoder((1, 16, 16), 4, stochastic=True, width=8)
    model.train()
    path = tmp_path / "encoder.onnx"
    export_module(model.encoder, torch.rand(2, 1, 16, 16), path, input_name="x", output_name="z")
    assert model.encoder.training  # export does not leave the caller's module in eval mode
    model.eval()
    x = torch.rand(9, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    (z,) = ort_session(path).run(None, {"x": x.numpy()})
    with torch.no_grad():
        mean, logvar = model.encode(x)
    assert logvar is not None
    assert z.shape == (9, 4)
    np.testing.assert_allclose(z, mean.numpy(), atol=1e-4, rtol=0)
    parity_check(model.encoder, path, x, batch_sizes=BATCHES)


class _Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this module cannot run")


class _DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # a Python branch on a tensor value: not traceable
            return x * 2
        return x


@pytest.mark.parametrize("module", [_Raises(), _DataDependent()], ids=["raises", "data-branch"])
def test_export_error_names_the_file(module: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    with pytest.raises(ExportError) as info:
        export_module(module, torch.rand(2, 3), path, input_name="x", output_name="y")
    message = str(info.value)
    assert str(path) in message
    assert type(module).__name__ in message
    assert "\x1b[" not in message  # the exporter's colour codes are stripped
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_fp16_copy_keeps_float32_io_and_passes_its_tolerance(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_autoencoder((1, 16, 16), 4, width=8)
    x = torch.rand(300, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    z = torch.randn(300, 4, generator=torch.Generator().manual_seed(2))
    for module, data, names in (
        (model.encoder, x, ("x", "z")),
        (model.decoder, z, ("z", "x_hat")),
    ):
        path = tmp_path / f"{names[1]}.onnx"
        export_module(module, data[:2], path, input_name=names[0], output_name=names[1])
        convert_fp16(path, path)  # in place, as a bundle writer does
        graph = onnx.load(str(path)).graph
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
        session = ort_session(path)
        assert [a.type for a in (*session.get_inputs(), *session.get_outputs())] == [
            "tensor(float)",
            "tensor(float)",
        ]
        result = parity_check(module, path, data, batch_sizes=BATCHES, tolerance=FP16_TOLERANCE)
        assert result.max_abs_error <= FP16_TOLERANCE
        # it really is lower precision: fp16 cannot match torch to fp32 round-off
        assert result.max_abs_error > 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_hat.onnx", "z.onnx"]


def test_fp16_tolerance_scales_with_output_size() -> None:
    assert fp16_tolerance() == FP16_TOLERANCE
    assert fp16_tolerance(0.5) == FP16_TOLERANCE
    assert fp16_tolerance(10.0) == pytest.approx(10 * FP16_TOLERANCE)


def test_convert_fp16_error_names_the_source(tmp_path: Path) -> None:
    src = tmp_path / "missing.onnx"
    with pytest.raises(ExportError, match=r"missing\.onnx"):
        convert_fp16(src, tmp_path / "out.onnx")


def test_ort_session_rejects_missing_file_and_bad_threads(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        ort_session(tmp_path / "nope.onnx")
    torch.manual_seed(0)
    path = tmp_path / "enc.onnx"
    model = build_autoencoder((6,), 3, hidden=16)
    export_module(model.encoder, torch.randn(2, 6), path, input_name="x", output_name="z")
    with pytest.raises(ValueError, match="threads"):
        ort_session(path, threads=0)
