"""What ``sculpt eval`` can score, turned into :class:`~sculptserve.offline.evaluation.EvalInputs`.

A target is one of (see ``SOURCE_KINDS``):

- ``run``: a finished training run dir (config.json, data.json, weights.safetensors). The
  torch model embeds the held-out split (or ``--data``); needs the ``train`` extra.
- ``bundle``: an exported bundle folder or a BentoML tag. ONNX Runtime embeds the held-out split
  of the training data named in the manifest (or ``--data``); no torch.
- ``embeddings``: a bare ``.npy`` of shape (n, d); factors from ``--factors FACTORS.npy`` (n, K)
  integer codes, the prior from ``--prior`` (default: a unit gaussian).

For runs and bundles the rows are a seeded sample of the held-out split, the representation is
the encoder mean, and the factors are the dataset's own (shapes' five generative factors,
a labelled dataset's class as the single factor ``label``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sculptserve.files import load_npy
from sculptserve.offline.embedding import Batch, embed_rows, model_dataset, sample_rows
from sculptserve.offline.evaluation import EvalConfig, EvalInputs
from sculptserve.stats.priors import Prior, parse_prior


@dataclass(frozen=True)
class EvalRequest:
    """The options of one ``sculpt eval`` call."""

    target: str
    config: EvalConfig = field(default_factory=EvalConfig)
    data: str | None = None
    factors: str | None = None
    prior: str | None = None
    batch_size: int = 256
    progress: bool = False


def detect_kind(target: str) -> str:
    """``run``, ``bundle`` or ``embeddings``; anything else is a ValueError saying what is."""
    path = Path(target)
    if path.is_file():
        if path.suffix == ".npy":
            return "embeddings"
        raise ValueError(f"{target}: expected a run dir, a bundle dir or an .npy of embeddings")
    if (path / "manifest.json").is_file():
        return "bundle"
    if (path / "config.json").is_file():
        return "run"
    if path.exists():
        raise ValueError(f"{target}: neither a run dir (config.json) nor a bundle (manifest.json)")
    if target.startswith("sculpt-"):  # a BentoML model tag
        return "bundle"
    raise ValueError(f"{target}: no such file or directory")


def default_output(target: str, kind: str) -> Path:
    """Where eval.json goes: inside a run dir; beside a bundle (bundles are immutable) or an
    .npy, named after it."""
    path = Path(target)
    if kind == "run":
        return path / "eval.json"
    if kind == "embeddings":
        return path.with_name(f"{path.stem}.eval.json")
    if path.is_dir():
        return path.with_name(f"{path.name}.eval.json")
    return Path(f"{target.replace(':', '-')}.eval.json")


def _prior(spec: str | None, default: Prior | None, dim: int) -> Prior:
    if spec is not None:
        return parse_prior(spec, dim=dim)
    return default if default is not None else parse_prior("gaussian", dim=dim)


def _from_model(
    request: EvalRequest,
    kind: str,
    description: dict[str, Any],
    encode: Batch,
    decode: Batch,
    prior: Prior,
) -> EvalInputs:
    if request.factors is not None:
        raise ValueError(
            "--factors is for .npy embeddings; runs and bundles use their dataset's factors"
        )
    dataset = model_dataset(description, request.data)
    rows = sample_rows(len(dataset), request.config.n_rows, request.config.seed)
    embedded = embed_rows(
        dataset,
        rows,
        encode,
        decode,
        batch_size=request.batch_size,
        progress=request.progress,
    )
    factors = dataset.get_factors(rows) if dataset.factors is not None else None
    source = {
        "kind": kind,
        "path": request.target,
        "data": dataset.source,
        "split": dataset.split,
        "rows": len(rows),
    }
    return EvalInputs(
        embeddings=embedded.embeddings,
        prior=_prior(request.prior, prior, embedded.embeddings.shape[1]),
        source=source,
        factors=factors,
        factor_names=tuple(dataset.factor_names) if factors is not None else None,
        nmse_db=embedded.nmse_db,
    )


def _load_run(request: EvalRequest) -> EvalInputs:
    import torch

    from sculptserve.training.checkpoint import load_trained_model
    from sculptserve.training.config import TrainConfig

    run = Path(request.target)
    model = load_trained_model(run)  # checks the run is finished
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    description = json.loads((run / "data.json").read_text())

    @torch.no_grad()
    def encode(x: np.ndarray) -> np.ndarray:
        return model.encoder(torch.as_tensor(x)).numpy()  # the mean for stochastic encoders

    @torch.no_grad()
    def decode(z: np.ndarray) -> np.ndarray:
        return model.decoder(torch.as_tensor(z)).numpy()

    # The run's prior, from its config: the trainer checked at the start that the objective
    # supports it, so evaluation needs only the spec (and not the trainer module).
    prior = parse_prior(config.prior, dim=config.latent_dim)
    return _from_model(request, "run", description, encode, decode, prior)


def _load_bundle(request: EvalRequest) -> EvalInputs:
    from sculptserve.bundle.load import load_bundle
    from sculptserve.offline.embedding import bundle_data_description
    from sculptserve.serving.runtime import EmbeddingRuntime

    bundle = load_bundle(request.target)
    runtime = EmbeddingRuntime(bundle)
    description = bundle_data_description(bundle)
    return _from_model(
        request, "bundle", description, runtime.encode, runtime.decode, runtime.prior
    )


def _load_embeddings(request: EvalRequest) -> EvalInputs:
    if request.data is not None:
        raise ValueError("--data is for runs and bundles; an .npy is already embedded")
    z = load_npy(request.target)
    if z.ndim != 2:
        raise ValueError(f"{request.target}: embeddings must be (n, d), got shape {z.shape}")
    factors = names = None
    if request.factors is not None:
        from sculptserve.training.data.base import check_factors

        factors, names, _ = check_factors(
            load_npy(request.factors), len(z), f"--factors {request.factors}"
        )
    notes = () if request.prior else ("prior: none given, compared with N(0, I) (--prior)",)
    return EvalInputs(
        embeddings=z,
        prior=_prior(request.prior, None, z.shape[1]),
        source={"kind": "embeddings", "path": request.target, "factors": request.factors},
        factors=factors,
        factor_names=None if names is None else tuple(names),
        notes=notes,
    )


SOURCE_KINDS: dict[str, Callable[[EvalRequest], EvalInputs]] = {
    "run": _load_run,
    "bundle": _load_bundle,
    "embeddings": _load_embeddings,
}


def load_eval_inputs(request: EvalRequest) -> tuple[str, EvalInputs]:
    """(kind, inputs) for ``request.target``."""
    kind = detect_kind(request.target)
    return kind, SOURCE_KINDS[kind](request)
