"""`sculpt train` end to end on CPU: it learns, resumes exactly, refuses bad input clearly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from sculptserve.cli import cli
from sculptserve.training.config import ConfigError, TrainConfig
from sculptserve.training.trainer import TrainingDiverged, train

TINY = dict(width=8, val_size=256, log_every=5, report=False)


def val_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "val"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "weights.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0)


@pytest.fixture
def tabular_npy(tmp_path) -> Path:
    """6 features driven by 3 independent factors plus noise."""
    rng = np.random.default_rng(0)
    factors = rng.normal(size=(1500, 3))
    x = factors @ rng.normal(size=(3, 6)) + 0.05 * rng.normal(size=(1500, 6))
    path = tmp_path / "table.npy"
    np.save(path, x.astype(np.float32))
    return path


def test_mmd_on_shapes_lowers_mmd_and_reconstruction(tmp_path):
    run = tmp_path / "run"
    summary = train(
        TrainConfig(out=str(run), latent_dim=4, batch_size=64, max_steps=150, **TINY),
        progress=False,
    )
    first, last = val_records(run)[0], val_records(run)[-1]
    assert first["step"] == 0 and last["step"] == 150
    assert last["mmd2"] < 0.5 * first["mmd2"]
    assert last["nmse_db"] < first["nmse_db"] - 3.0
    assert summary["val"] == {k: v for k, v in last.items() if k not in ("step", "split")}
    for name in (
        "config.json",
        "data.json",
        "summary.json",
        "weights.safetensors",
        "val_latents.npy",
    ):
        assert (run / name).exists()
    stored = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert stored == TrainConfig(out=str(run), latent_dim=4, batch_size=64, max_steps=150, **TINY)


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_mmd_on_tabular_input(tmp_path, tabular_npy, suffix):
    source = tabular_npy
    if suffix == ".csv":
        source = tmp_path / "table.csv"
        x = np.load(tabular_npy)
        header = ",".join(f"f{i}" for i in range(x.shape[1]))
        np.savetxt(source, x, delimiter=",", header=header, comments="")
    run = tmp_path / "run"
    train(
        TrainConfig(
            out=str(run),
            data=str(source),
            latent_dim=3,
            batch_size=100,
            max_steps=200,
            lr=2e-3,
            **TINY,
        ),
        progress=False,
    )
    first, last = val_records(run)[0], val_records(run)[-1]
    assert last["mmd2"] < 0.5 * first["mmd2"]
    assert last["nmse_db"] < first["nmse_db"] - 3.0
    assert json.loads((run / "data.json").read_text())["modality"] == "tabular"


def test_resume_continues_exactly(tmp_path, tabular_npy):
    common = dict(data=str(tabular_npy), latent_dim=3, batch_size=50, checkpoint_every=4, **TINY)
    straight = tmp_path / "straight"
    train(TrainConfig(out=str(straight), max_steps=20, **common), progress=False)
    split = tmp_path / "split"
    train(TrainConfig(out=str(split), max_steps=10, **common), progress=False)
    train(TrainConfig(out=str(split), max_steps=20, **common), resume=True, progress=False)
    assert_same_weights(straight, split, atol=1e-6)
    steps = [
        r["step"]
        for r in map(json.loads, (split / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert steps == sorted(set(steps)), "resumed log repeats or reorders steps"


def test_resume_continues_a_vae_exactly(tmp_path, tabular_npy):
    """The VAE's reparameterization noise comes from the checkpointed torch RNG."""
    common = dict(data=str(tabular_npy), objective="vae", latent_dim=3, batch_size=50, **TINY)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(TrainConfig(out=str(straight), max_steps=12, **common), progress=False)
    train(TrainConfig(out=str(split), max_steps=6, **common), progress=False)
    train(TrainConfig(out=str(split), max_steps=12, **common), resume=True, progress=False)
    assert_same_weights(straight, split, atol=1e-6)


def test_checkpoint_carries_the_cuda_rng_state(tmp_path, monkeypatch):
    """On a CUDA device the checkpoint stores that device's generator and resuming there
    restores it (faked here: this test must run without a GPU); on a CPU it stores none."""
    from sculptserve.training.checkpoint import load_checkpoint, restore_rng, save_checkpoint
    from sculptserve.training.models import build_autoencoder

    cuda = torch.device("cuda", 0)
    saved_state = torch.arange(16, dtype=torch.uint8)
    restored: list[tuple[torch.Tensor, torch.device]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: saved_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    model = build_autoencoder((4,), 2, width=4, hidden=8)
    optimizer = torch.optim.Adam(model.parameters())
    path = save_checkpoint(tmp_path / "gpu-run", model, optimizer, 3, cuda)
    state = load_checkpoint(path, model)
    assert torch.equal(state.cuda_rng, saved_state)
    restore_rng(state, cuda)
    assert len(restored) == 1 and torch.equal(restored[0][0], saved_state)
    restore_rng(state, torch.device("cpu"))  # resumed on a CPU: nothing to put back on CUDA
    assert len(restored) == 1
    cpu_path = save_checkpoint(tmp_path / "cpu-run", model, optimizer, 3, torch.device("cpu"))
    assert load_checkpoint(cpu_path, model).cuda_rng is None


@pytest.mark.gpu
def test_resume_continues_a_vae_exactly_on_cuda(tmp_path, tabular_npy):
    """The reparameterization noise on a GPU comes from the CUDA generator, checkpointed too."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    common = dict(
        data=str(tabular_npy), objective="vae", latent_dim=3, batch_size=50, device="cuda", **TINY
    )
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(TrainConfig(out=str(straight), max_steps=12, **common), progress=False)
    train(TrainConfig(out=str(split), max_steps=6, **common), progress=False)
    train(TrainConfig(out=str(split), max_steps=12, **common), resume=True, progress=False)
    assert_same_weights(straight, split, atol=1e-6)


def test_resume_refuses_a_different_config(tmp_path, tabular_npy):
    run = tmp_path / "run"
    base = dict(out=str(run), data=str(tabular_npy), latent_dim=3, batch_size=50, **TINY)
    train(TrainConfig(max_steps=4, **base), progress=False)
    with pytest.raises(ConfigError, match=r"different config.*latent_dim: run has 3, given 5"):
        train(
            TrainConfig(**{**base, "latent_dim": 5}, max_steps=8),
            resume=True,
            explicit={"latent_dim", "max_steps"},
        )
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(TrainConfig(max_steps=4, **base), progress=False)
    with pytest.raises(ConfigError, match="already at step 4"):
        train(TrainConfig(max_steps=4, **base), resume=True, progress=False)


def test_diverging_loss_stops_and_keeps_last_checkpoint(tmp_path, tabular_npy):
    run = tmp_path / "run"
    config = TrainConfig(
        out=str(run),
        data=str(tabular_npy),
        latent_dim=3,
        batch_size=50,
        lr=1e12,
        max_steps=200,
        checkpoint_every=1,
        **TINY,
    )
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train(config, progress=False)
    kept = sorted((run / "checkpoints").glob("step-*"))
    assert kept, "no checkpoint survived"
    for tensor in load_file(str(kept[-1] / "model.safetensors")).values():
        assert torch.isfinite(tensor).all()


SCULPT = [sys.executable, "-m", "sculptserve.cli"]


def tabular_args(path: Path, steps: int) -> list[str]:
    """`sculpt train` options for a tiny run on the tabular fixture."""
    return [
        "--data",
        str(path),
        "--latent-dim",
        "3",
        "--batch-size",
        "50",
        "--max-steps",
        str(steps),
        "--checkpoint-every",
        str(steps),
        "--width",
        "8",
    ]


def run_cli(*args: object):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--data", "nowhere/at/all.npy"], "no such file"),
        (["--data", "mnist-of-dreams"], "known"),
        (["--objective", "gan"], "unknown objective 'gan'"),
        (["--prior", "8:gaussian+2:uniform(-1,1)", "--latent-dim", "8"], "10 dimensions"),
        (["--objective", "vae", "--prior", "uniform(-5,5)"], "needs --objective mmd"),
        (["--align", "posX"], "FACTOR=DIM"),
        (["--align", "colour=0"], "unknown factor 'colour'"),
    ],
)
def test_bad_input_is_one_readable_line(tmp_path, args, phrase):
    result = run_cli("train", "--out", tmp_path / "run", "--max-steps", 1, *args)
    assert result.exit_code == 1, result.output
    assert phrase in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_image_is_named(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((16, 16), i * 40, dtype=np.uint8)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = run_cli("train", "--data", folder, "--out", tmp_path / "run", "--max-steps", 1)
    assert result.exit_code == 1
    assert "broken.jpg" in result.output


def test_ctrl_c_saves_a_checkpoint(tmp_path, tabular_npy):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*SCULPT, "train", *tabular_args(tabular_npy, steps=100_000), "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "interrupted"
    assert (run / "checkpoints" / f"step-{summary['step']:08d}").is_dir()


# The explicit independence term permutes the gathered batch with a (seed, step) permutation
# and the marginal term reads the global prior batch: both must match one process too.
SCULPT_TERMS = ["--independence", "1", "--marginal", "1", "--prior-multiple", "2"]


@pytest.mark.parametrize(
    "extra", [["--independence", "0"], SCULPT_TERMS], ids=["paper", "sculpt-terms"]
)
def test_torchrun_ddp_uses_the_global_batch(tmp_path, tabular_npy, extra):
    """2 gloo ranks x 25 rows train like one process on the 50-row global batch."""
    args = [*tabular_args(tabular_npy, steps=6), "--no-report", "--device", "cpu", *extra]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*SCULPT, "train", *args, "--out", str(single)],
        check=True,
        env=env,
        capture_output=True,
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "sculptserve.cli",
            "train",
            *args,
            "--out",
            str(ddp),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2
    train_lines = [
        r
        for r in map(json.loads, (ddp / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    assert train_lines and all(r["mmd_batch"] == 50 for r in train_lines)
    assert_same_weights(single, ddp, atol=1e-5)
    single_lines = [
        r
        for r in map(json.loads, (single / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "train"
    ]
    terms = [k for k in ("mmd2", "mmd2_independence", "mmd2_marginal") if k in train_lines[0]]
    assert len(terms) == (3 if extra == SCULPT_TERMS else 1)
    for one, two in zip(single_lines, train_lines, strict=True):
        for key in terms:  # the gathered batch gives the single process its value
            # float32 MMD^2 is a small difference of large sums; summation order differs
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-6)


def test_alignment_ties_the_chosen_dimension_to_its_factor(tmp_path):
    """With 10% of the labels, latent 0 follows posX on held-out data; without, it need not."""
    from sculptserve.training.alignment import factor_correlation
    from sculptserve.training.checkpoint import load_trained_model
    from sculptserve.training.data import load_dataset
    from sculptserve.training.trainer import encode_decode

    val = load_dataset("shapes", split="val")
    rows = np.arange(1024)
    pos_x = val.get_factors(rows)[:, val.factor_names.index("posX")]
    corr = {}
    for name, align in (("plain", []), ("aligned", ["posX=0"])):
        run = tmp_path / name
        config = TrainConfig(
            out=str(run),
            latent_dim=4,
            batch_size=64,
            max_steps=200,
            align=align,
            label_fraction=0.1,
            **TINY,
        )
        train(config, progress=False)
        _, means, _ = encode_decode(load_trained_model(run), val, rows, torch.device("cpu"))
        corr[name] = factor_correlation(means[:, 0], pos_x)
    assert corr["aligned"] > 0.95
    assert abs(corr["plain"]) < corr["aligned"] - 0.3
    logged = val_records(tmp_path / "aligned")[-1]["align_corr_posX"]
    assert logged == pytest.approx(corr["aligned"], abs=0.02)


def test_seeded_runs_are_reproducible_on_cpu(tmp_path, tabular_npy):
    common = dict(data=str(tabular_npy), latent_dim=3, batch_size=50, max_steps=8, **TINY)
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(TrainConfig(out=str(tmp_path / name), seed=seed, **common), progress=False)
    assert_same_weights(tmp_path / "a", tmp_path / "b", atol=0)
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "a", tmp_path / "c", atol=1e-6)


def test_a_config_written_before_the_independence_term_resumes_as_it_trained():
    """config.json files from before the term existed lack its key: they trained without it."""
    legacy = TrainConfig(out="x").to_dict()
    del legacy["independence"]
    assert TrainConfig.from_dict(legacy).independence == 0.0
    assert TrainConfig(out="x").independence == 2.0  # today's default for new runs
    assert TrainConfig.from_dict(TrainConfig(out="x").to_dict()).independence == 2.0
