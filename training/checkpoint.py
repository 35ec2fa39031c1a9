"""Checkpoints: weights in safetensors, trainer state (optimizer, step, RNGs) in a torch file
read back with ``weights_only=True`` (no pickle). Each checkpoint is a folder written under a
temporary name and renamed into place, and ``latest`` names the newest complete one, so a
crash or Ctrl-C mid-write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sculptserve.files import atomic_path

WEIGHTS = "model.safetensors"
STATE = "state.pt"
KEEP = 2  # checkpoints kept: the newest and one before it


@dataclass
class TrainerState:
    step: int
    optimizer: dict
    torch_rng: torch.Tensor
    # The CUDA generator of the device that trained (a stochastic encoder's noise comes from
    # it on a GPU); None for a CPU run. Every DDP rank's generator is in the same state (same
    # seed, same draws per step), so rank 0's stands for all.
    cuda_rng: torch.Tensor | None = None


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    device: torch.device | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, prune old ones.

    On a CUDA ``device`` the state also holds that device's RNG state.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights_of(model), str(tmp / WEIGHTS))
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    torch.save(state, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with atomic_path(root / "latest") as pointer:
        pointer.write_text(final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = checkpoint_dir(run_dir) / "latest"
    if not pointer.exists():
        return None
    path = checkpoint_dir(run_dir) / pointer.read_text().strip()
    return path if (path / WEIGHTS).exists() and (path / STATE).exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> TrainerState:
    """Load weights into ``model`` and return the trainer state stored beside them."""
    model.load_state_dict(load_file(str(path / WEIGHTS), device="cpu"))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    return TrainerState(
        step=int(state["step"]),
        optimizer=state["optimizer"],
        torch_rng=state["torch_rng"],
        cuda_rng=state.get("cuda_rng"),
    )


def restore_rng(state: TrainerState, device: torch.device) -> None:
    """Put the RNGs back where the checkpoint left them. A CUDA state is restored on a CUDA
    device only: a run resumed on another kind of device draws its noise afresh there."""
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state.cuda_rng, device)


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can store: contiguous CPU tensors, no shared storage."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_weights(path: Path, model: torch.nn.Module) -> None:
    with atomic_path(path) as tmp:
        save_file(weights_of(model), str(tmp))


def load_trained_model(run_dir: str | Path) -> torch.nn.Module:
    """Rebuild a finished run's model from config.json + data.json and load its weights."""
    import json

    from sculptserve.training.config import TrainConfig
    from sculptserve.training.models import build_autoencoder
    from sculptserve.training.objectives import OBJECTIVES

    run = Path(run_dir)
    for name in ("config.json", "data.json", "weights.safetensors"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run} is not a finished run: {name} is missing")
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    shape = tuple(json.loads((run / "data.json").read_text())["input_shape"])
    model = build_autoencoder(
        shape,
        config.latent_dim,
        stochastic=OBJECTIVES[config.objective].stochastic,
        width=config.width,
    )
    model.load_state_dict(load_file(str(run / "weights.safetensors"), device="cpu"))
    return model.eval()
