"""The training loop, top to bottom: set up, resume, step, validate, checkpoint, report.

Every step is a pure function of (seed, step): the batch rows come from a per-epoch seeded
permutation and the prior batch from a per-step seed, so a resumed run sees exactly the data
a straight run would have seen; the torch RNG state (the VAE family's reparameterization
noise) travels in the checkpoint.

Under torchrun each rank takes a contiguous slice of the global batch. The MMD term is computed
on the *global* batch: latents are gathered with the autograd-aware
``torch.distributed.nn.functional.all_gather`` and every rank draws the same global prior
batch, so each rank computes the same MMD^2 and DDP's gradient averaging gives exactly the
single-process gradient of that global-batch loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sculptserve.files import atomic_path, save_npy
from sculptserve.stats.lps import latent_predictability
from sculptserve.stats.mmd import mmd2
from sculptserve.stats.priors import Prior, parse_prior
from sculptserve.stats.scores import nmse_db
from sculptserve.training.alignment import Alignment, factor_correlation, parse_align
from sculptserve.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    save_weights,
)
from sculptserve.training.config import (
    DEFAULT_MAX_STEPS,
    RESUMABLE_CHANGES,
    ConfigError,
    TrainConfig,
)
from sculptserve.training.data import Dataset, load_dataset
from sculptserve.training.models import build_autoencoder
from sculptserve.training.objectives import OBJECTIVES, Objective, RegularizerInput, build_objective

VAL_MMD_SAMPLES = 1024  # rows used for the validation MMD^2 (O(n^2) memory)


class TrainingDiverged(ValueError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Distributed context and device
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistContext:
        """Read torchrun's environment; a plain process is rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)


def pick_device(requested: str, dist: DistContext) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got '{requested}'")
    use_cuda = requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    return torch.device(f"cuda:{dist.local_rank}") if use_cuda else torch.device("cpu")


def init_distributed(dist: DistContext, device: torch.device) -> None:
    if dist.world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=backend)


def gather_global(z: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """Concatenate every rank's latents, keeping gradients flowing back to their owners."""
    if dist.world_size == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z), dim=0)


def any_rank(flag: bool, dist: DistContext, device: torch.device) -> bool:
    """True if ``flag`` is set on any rank (so every rank stops at the same step)."""
    if dist.world_size == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------


def prepare_run_dir(
    config: TrainConfig, resume: bool, explicit: set[str] | None
) -> tuple[TrainConfig, Path | None]:
    """Check the run dir against --resume; return the effective config and the checkpoint."""
    run_dir = Path(config.out)
    config_path = run_dir / "config.json"
    if not resume:
        if config_path.exists() or latest_checkpoint(run_dir) is not None:
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        return config, None
    if not config_path.exists():
        raise ConfigError(f"nothing to resume: {config_path} does not exist")
    stored = TrainConfig.from_dict(json.loads(config_path.read_text()))
    given = explicit if explicit is not None else {f.name for f in dataclasses.fields(config)}
    merged = dataclasses.replace(stored, **{k: getattr(config, k) for k in given})
    changed = [k for k in stored.differences(merged) if k not in RESUMABLE_CHANGES]
    if changed:
        detail = "; ".join(
            f"{k}: run has {getattr(stored, k)!r}, given {getattr(merged, k)!r}" for k in changed
        )
        raise ConfigError(f"cannot resume {run_dir} with a different config ({detail})")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(f"nothing to resume: {run_dir} has no complete checkpoint")
    return merged, checkpoint


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


class MetricsLog:
    """Append-only JSONL log; on resume, lines after the checkpoint's step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_step is not None and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def make_objective(config: TrainConfig) -> Objective:
    """Build the objective, passing only the knobs its class takes."""
    if config.objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown objective '{config.objective}'; valid: {', '.join(sorted(OBJECTIVES))}"
        )
    knobs = {
        "lambda_": config.lambda_,
        "kernel": config.kernel,
        "beta": config.beta,
        "independence": config.independence,
        "marginal": config.marginal,
        "prior_multiple": config.prior_multiple,
    }
    accepted = inspect.signature(OBJECTIVES[config.objective]).parameters
    return build_objective(config.objective, **{k: v for k, v in knobs.items() if k in accepted})


def make_prior(config: TrainConfig, objective: Objective) -> Prior:
    prior = parse_prior(config.prior, dim=config.latent_dim)
    if not objective.supports_prior(prior):
        raise ConfigError(
            f"objective '{config.objective}' regularizes towards N(0, I) by construction; "
            f"--prior {config.prior} needs --objective mmd"
        )
    return prior


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of the global batch at ``step``: a seeded permutation per epoch, no remainder."""
    per_epoch = n_rows // batch_size
    epoch, offset = divmod(step, per_epoch)
    order = _epoch_order(n_rows, seed, epoch)
    return order[offset * batch_size : (offset + 1) * batch_size]


_order_cache: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_order(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    key = (n_rows, seed, epoch)
    if key not in _order_cache:
        _order_cache.clear()
        _order_cache[key] = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return _order_cache[key]


def prior_batch(prior: Prior, n: int, seed: int, step: int, device: torch.device) -> torch.Tensor:
    samples = prior.sample(n, np.random.default_rng([seed, step, 1]))
    return torch.as_tensor(samples, dtype=torch.float32, device=device)


@contextlib.contextmanager
def stop_on_sigint() -> Iterator[list[bool]]:
    """First Ctrl-C sets a flag the loop checks after each step; the second one interrupts."""
    flag = [False]

    def handler(signum: int, frame: Any) -> None:
        if flag[0]:
            raise KeyboardInterrupt
        flag[0] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, plain KeyboardInterrupt semantics
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_decode(
    model: torch.nn.Module, data: Dataset, rows: np.ndarray, device: torch.device, batch: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, encoder means and reconstructions from the means, for ``rows`` of ``data``."""
    was_training = model.training
    model.eval()
    inputs, means, recons = [], [], []
    for start in range(0, len(rows), batch):
        x = torch.as_tensor(data.get_batch(rows[start : start + batch]), device=device)
        mean = model.encoder(x)
        inputs.append(x.cpu().numpy())
        means.append(mean.float().cpu().numpy())
        recons.append(model.decoder(mean).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(inputs), np.concatenate(means), np.concatenate(recons)


def validate(
    model: torch.nn.Module,
    val: Dataset,
    rows: np.ndarray,
    prior: Prior,
    alignment: Alignment | None,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """NMSE dB, MMD^2 to the prior, LPS-linear (and aligned-factor correlations) on val rows."""
    x, means, recons = encode_decode(model, val, rows, device)
    n_mmd = min(len(means), VAL_MMD_SAMPLES)
    reference = prior.sample(n_mmd, np.random.default_rng([seed, 2]))
    metrics: dict[str, float] = {
        "nmse_db": nmse_db(x, recons),
        "mmd2": float(mmd2(means[:n_mmd], reference, kernel="rbf", estimator="unbiased")),
    }
    try:
        metrics["lps_linear"] = latent_predictability(means, "linear", seed=seed).lps
    except ValueError:  # e.g. a collapsed (constant) latent early in training
        metrics["lps_linear"] = float("nan")
    if alignment is not None and val.factors is not None:
        factors = val.get_factors(rows)
        for target, column in zip(alignment.targets, alignment.columns, strict=True):
            key = f"align_corr_{target.factor}"
            metrics[key] = factor_correlation(means[:, target.dim], factors[:, column])
    return metrics


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    explicit: set[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) one training run into ``config.out``; return its summary."""
    dist = DistContext.from_env()
    config, checkpoint = prepare_run_dir(config, resume, explicit)
    run_dir = Path(config.out)
    device = pick_device(config.device, dist)

    # Everything that can reject the config runs before anything is written.
    objective = make_objective(config)
    prior = make_prior(config, objective)
    data_args = dict(
        data_path=config.data_path,
        image_size=config.image_size,
        channels=config.channels,
        seed=config.seed,
        val_fraction=config.val_fraction,
    )
    train_data = load_dataset(config.data, split="train", **data_args)
    val_data = load_dataset(
        config.data,
        split="val",
        normalization=train_data.describe().get("normalization"),
        **data_args,
    )
    if config.batch_size % dist.world_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} must divide evenly over {dist.world_size} ranks"
        )
    if config.batch_size > len(train_data):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the {len(train_data)} training rows"
        )
    alignment = None
    if config.align:
        if train_data.factors is None:
            raise ConfigError(f"--align needs factors or labels; '{config.data}' has none")
        alignment = Alignment(
            parse_align(config.align),
            factor_names=list(train_data.factor_names),
            factor_sizes=list(train_data.factor_sizes),
            n_rows=len(train_data),
            prior=prior,
            label_fraction=config.label_fraction,
            weight=config.align_weight,
            seed=config.seed,
        )

    init_distributed(dist, device)
    torch.manual_seed(config.seed)
    model = build_autoencoder(
        train_data.input_shape,
        config.latent_dim,
        stochastic=objective.stochastic,
        width=config.width,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start_step = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model)
        model.to(device)
        optimizer.load_state_dict(state.optimizer)
        restore_rng(state, device)
        start_step = state.step
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "data.json", train_data.describe())
    net = model
    if dist.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    steps_per_epoch = len(train_data) // config.batch_size
    if config.max_steps is not None:
        total_steps = config.max_steps
    elif config.epochs is not None:
        total_steps = config.epochs * steps_per_epoch
    else:
        total_steps = DEFAULT_MAX_STEPS
    if start_step >= total_steps:
        raise ConfigError(
            f"{run_dir} is already at step {start_step}; raise --max-steps or --epochs to go on"
        )
    val_every = config.val_every or min(steps_per_epoch, 1000)
    val_rows = np.arange(min(config.val_size, len(val_data)))
    local = config.batch_size // dist.world_size
    n_features = int(np.prod(train_data.input_shape))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    log = MetricsLog(run_dir / "metrics.jsonl", dist.is_main, start_step if resume else None)
    bar = _progress(total_steps, start_step, enabled=progress and dist.is_main)
    last_val: dict[str, float] = {}
    last_saved: int | None = start_step if checkpoint is not None else None
    step = start_step
    train_seconds, stopped = 0.0, "completed"
    if dist.is_main and start_step == 0:  # the baseline every later validation is read against
        log.write(
            {
                "step": 0,
                "split": "val",
                **validate(model, val_data, val_rows, prior, alignment, config.seed, device),
            }
        )
    model.train()

    loop_start = time.perf_counter()
    with stop_on_sigint() as interrupted:
        while step < total_steps:
            if any_rank(interrupted[0], dist, device):
                stopped = "interrupted"
                break
            tick = time.perf_counter()
            rows = batch_rows(step, len(train_data), config.batch_size, config.seed)
            mine = rows[dist.rank * local : (dist.rank + 1) * local]
            x = torch.as_tensor(train_data.get_batch(mine), device=device)
            with autocast:
                out = net(x)
            recon = F.mse_loss(out["recon"].float(), x)
            # The regularizers run in float32: MMD^2 is a small difference of large sums.
            z = out["z"].float()
            if not torch.isfinite(z).all():  # caught here: the MMD would refuse NaN inputs
                raise diverged(step, last_saved, run_dir, "latents")
            mean = out["mean"].float()
            logvar = None if out["logvar"] is None else out["logvar"].float()
            reg, parts = objective.regularizer(
                RegularizerInput(
                    z=z,
                    mean=mean,
                    logvar=logvar,
                    z_global=gather_global(z, dist),
                    prior_samples=prior_batch(
                        prior, objective.prior_rows(config.batch_size), config.seed, step, device
                    )
                    if objective.needs_prior
                    else None,
                    n_features=n_features,
                    dataset_size=len(train_data),
                    seed=config.seed,
                    step=step,
                )
            )
            loss = recon + reg
            if alignment is not None:
                align = alignment.loss(mean, mine, train_data.get_factors(mine))
                parts = {**parts, "align": align}
                loss = loss + align
            if not torch.isfinite(loss):
                raise diverged(step, last_saved, run_dir, f"loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            train_seconds += time.perf_counter() - tick

            if step % config.log_every == 0 or step == total_steps:
                record = {
                    "step": step,
                    "split": "train",
                    "loss": loss.item(),
                    "recon": recon.item(),
                    **{k: float(v.detach()) for k, v in parts.items()},
                    "mmd_batch": int(gather_global(z, dist).shape[0])
                    if dist.world_size > 1
                    else config.batch_size,
                    "elapsed_s": time.perf_counter() - loop_start,
                    "samples_per_s": (step - start_step)
                    * config.batch_size
                    / max(train_seconds, 1e-9),
                }
                log.write(record)
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "recon", *parts)}
                )
            bar.update(1)
            if dist.is_main and (step % val_every == 0 or step == total_steps):
                last_val = validate(
                    model, val_data, val_rows, prior, alignment, config.seed, device
                )
                log.write({"step": step, "split": "val", **last_val})
            if dist.is_main and step % config.checkpoint_every == 0:
                save_checkpoint(run_dir, model, optimizer, step, device)
                last_saved = step
    bar.close()

    summary: dict[str, Any] = {"step": step, "stopped": stopped}
    if dist.is_main:
        if step != last_saved or stopped == "interrupted":
            save_checkpoint(run_dir, model, optimizer, step, device)
        save_weights(run_dir / "weights.safetensors", model)
        if not last_val or stopped == "interrupted":
            last_val = validate(model, val_data, val_rows, prior, alignment, config.seed, device)
        summary.update(
            {
                "val": last_val,
                "train_seconds": train_seconds,
                "samples_per_s": (step - start_step) * config.batch_size / max(train_seconds, 1e-9),
                "world_size": dist.world_size,
                "device": str(device),
            }
        )
        write_json(run_dir / "summary.json", summary)
        x, means, recons = encode_decode(model, val_data, val_rows, device)
        # The held-out latents, for `sculpt lps` / `sculpt mmd` and any analysis of one's own.
        save_npy(run_dir / "val_latents.npy", means.astype(np.float32))
        if config.report and stopped == "completed":
            write_run_report(
                run_dir, model, (x, means, recons), val_data.modality, prior, config.seed, device
            )
    if dist.world_size > 1:
        torch.distributed.barrier()
    return summary


def diverged(step: int, last_saved: int | None, run_dir: Path, what: str) -> TrainingDiverged:
    kept = (
        "no checkpoint had been saved yet"
        if last_saved is None
        else f"the last good checkpoint (step {last_saved}) is kept in {run_dir / 'checkpoints'}"
    )
    return TrainingDiverged(
        f"training diverged at step {step} ({what} not finite); {kept}; "
        "try a lower --lr or --lambda"
    )


def write_run_report(
    run_dir: Path,
    model: torch.nn.Module,
    held_out: tuple[np.ndarray, np.ndarray, np.ndarray],
    modality: str,
    prior: Prior,
    seed: int,
    device: torch.device,
) -> None:
    """PNGs of the latent space and the decoder; a failure here never loses the run."""
    from sculptserve.training.report import write_report

    x, means, recons = held_out

    @torch.no_grad()
    def decode(latents: np.ndarray) -> np.ndarray:
        model.eval()
        z = torch.as_tensor(latents, dtype=torch.float32, device=device)
        return model.decoder(z).float().cpu().numpy()

    try:
        write_report(
            run_dir / "report",
            latents=means,
            prior=prior,
            decode=decode,
            inputs=x[:8],
            reconstructions=recons[:8],
            modality=modality,
            seed=seed,
        )
    except Exception as exc:  # the report is a convenience; the run itself is saved
        print(f"warning: the report could not be written ({exc})")


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
