"""The ``sculpt`` command line.

Heavy modules (torch, LightGBM, the training and export packages) are imported inside the
commands that need them, so ``sculpt --help`` and the serving commands stay light.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from sculptserve import __version__
from sculptserve.files import load_npy, save_npy
from sculptserve.offline.evaluation import EVAL_KEYS
from sculptserve.serving.settings import help_text as settings_help
from sculptserve.stats.lps import REGRESSORS
from sculptserve.stats.mmd import KERNELS

# Errors a user can cause: reported as one line and a non-zero exit, never a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


class SculptGroup(click.Group):
    """Click group that turns user errors raised inside any command into one readable line."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None


def print_json(payload: dict) -> None:
    click.echo(json.dumps(payload, indent=None, allow_nan=True))


def print_table(title: str, columns: tuple[str, ...], rows: list[tuple], footer: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for name in columns:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
    console = Console()
    console.print(title)
    console.print(table)
    console.print(footer)


npy_path = click.Path(exists=True, dir_okay=False)
kernel_option = click.option(
    "--kernel",
    type=click.Choice(sorted(KERNELS)),
    default="rbf",
    show_default=True,
    help="MMD kernel: multi-scale RBF (median heuristic) or IMQ.",
)


def _digest_param(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from sculptserve.bundle.digest import parse_digest

    try:
        return None if value is None else parse_digest(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


expect_digest_option = click.option(
    "--expect-digest",
    metavar="sha256:HEX",
    callback=_digest_param,
    help="Refuse the bundle unless its digest is this one (as `sculpt export` printed it).",
)
verify_key_option = click.option(
    "--verify-key",
    type=click.Path(exists=True, dir_okay=False),
    help="ed25519 public key (PEM, from `sculpt keygen`): refuse the bundle unless its "
    "signature.json verifies with it.",
)
permutations_option = click.option(
    "--permutations",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Permutations for the p-value, (1 + #null >= observed) / (1 + B).",
)


@click.group(cls=SculptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sculpt")
def cli() -> None:
    """sculptserve: train autoencoders whose latent space is sculpted into a chosen prior,
    score embeddings for independence, and serve them.

    Run `sculpt COMMAND --help` for each command's options.
    """


@cli.command("lps")
@click.argument("embeddings", type=npy_path)
@click.option(
    "--regressor",
    type=click.Choice(list(REGRESSORS)),
    default="linear",
    show_default=True,
    help="Model predicting each dimension from the others. linear is exact OLS (instant); "
    "lgbm (the paper's) and mlp also see non-linear dependence.",
)
@click.option("--test-fraction", default=0.2, show_default=True, help="Held-out share.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split and regressors.")
@click.option(
    "--max-samples",
    type=click.IntRange(min=10),
    default=10_000,
    show_default=True,
    help="Score a seeded subsample of at most this many rows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def lps_command(
    embeddings: str,
    regressor: str,
    test_fraction: float,
    seed: int,
    max_samples: int,
    as_json: bool,
) -> None:
    """Latent Predictability Score of EMBEDDINGS (an .npy of shape n x d).

    Each dimension is predicted from the others on a held-out split; the per-dimension R^2
    and their mean (LPS) are printed. About 0 means independent dimensions, 1 fully
    determined. Lower is better.
    """
    from sculptserve.stats.lps import latent_predictability

    result = latent_predictability(
        load_npy(embeddings),
        regressor,
        test_fraction=test_fraction,
        seed=seed,
        max_samples=max_samples,
    )
    if as_json:
        print_json(result.to_dict())
        return
    print_table(
        f"LPS-{regressor} of {embeddings}",
        ("dim", "held-out R^2"),
        list(enumerate(result.per_dim)),
        f"LPS = {result.lps:.4f}  (train {result.n_train}, test {result.n_test}, seed {seed})",
    )


@cli.command("mmd")
@click.argument("embeddings", type=npy_path)
@click.option("--prior", "prior_spec", help="Compare with samples of this prior (SPEC).")
@click.option("--against", type=npy_path, help="Compare with the rows of another .npy.")
@kernel_option
@permutations_option
@click.option(
    "--max-samples",
    type=click.IntRange(min=2),
    default=2_000,
    show_default=True,
    help="Use a seeded subsample of at most this many rows from each side.",
)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def mmd_command(
    embeddings: str,
    prior_spec: str | None,
    against: str | None,
    kernel: str,
    permutations: int,
    max_samples: int,
    seed: int,
    as_json: bool,
) -> None:
    """Unbiased MMD^2 between EMBEDDINGS and a prior (--prior) or another sample (--against),
    with a permutation-test p-value. Small MMD^2 and large p: indistinguishable."""
    from sculptserve.stats.mmd import permutation_test
    from sculptserve.stats.validation import as_embeddings

    if (prior_spec is None) == (against is None):
        raise click.UsageError("give exactly one of --prior SPEC or --against OTHER.npy")
    rng = np.random.default_rng(seed)
    x = subsample(as_embeddings(load_npy(embeddings), name=embeddings), max_samples, rng)
    if prior_spec is not None:
        from sculptserve.stats.priors import parse_prior

        y = parse_prior(prior_spec, dim=x.shape[1]).sample(len(x), rng)
    else:
        y = subsample(as_embeddings(load_npy(against), name=against), max_samples, rng)
    result = permutation_test(x, y, kernel=kernel, n_permutations=permutations, seed=seed)
    payload = {
        "mmd2": result.statistic,
        "mmd2_pvalue": result.p_value,
        "kernel": kernel,
        "n_permutations": result.n_permutations,
        "n_x": len(x),
        "n_y": len(y),
    }
    if as_json:
        print_json(payload)
        return
    click.echo(
        f"MMD^2 ({kernel}, unbiased) = {result.statistic:.6g}   p = {result.p_value:.4g}   "
        f"(n = {len(x)} vs {len(y)}, {result.n_permutations} permutations)"
    )


def subsample(arr: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    if len(arr) <= max_rows:
        return arr
    return arr[np.sort(rng.choice(len(arr), size=max_rows, replace=False))]


@cli.command("train")
@click.option(
    "--data",
    default="shapes",
    show_default=True,
    help="shapes | fashion-mnist | digits, or a path: a folder of images, .npy, .npz, "
    ".csv or .parquet.",
)
@click.option("--data-path", help="Where a named dataset's files are (fashion-mnist).")
@click.option("--image-size", type=click.IntRange(min=4), help="Resize an image folder to this.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Image channels (gray or RGB).")
@click.option(
    "--objective",
    default="mmd",
    show_default=True,
    help="mmd (the product: reconstruction + lambda MMD^2 to the prior), ae, vae, beta-vae, "
    "beta-tcvae.",
)
@click.option(
    "--prior",
    default="gaussian",
    show_default=True,
    help="Target latent distribution (see `sculpt prior --help`).",
)
@click.option("--latent-dim", type=int, default=8, show_default=True)
@click.option("--kernel", type=click.Choice(sorted(KERNELS)), default="rbf", show_default=True)
@click.option("--lambda", "lambda_", type=float, default=0.3, show_default=True, help="MMD weight.")
@click.option(
    "--independence",
    type=float,
    default=2.0,
    show_default=True,
    help="mmd: weight (relative to --lambda) of MMD^2 between the latents and the latents with "
    "every column shuffled on its own; it sees only dependence between dimensions. 0 is the "
    "paper's objective.",
)
@click.option(
    "--marginal",
    type=float,
    default=0.0,
    show_default=True,
    help="mmd: weight (relative to --lambda) of the mean 1-D MMD^2 of each latent dimension to "
    "the prior's marginal.",
)
@click.option(
    "--prior-multiple",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="mmd: prior samples drawn per batch row each step.",
)
@click.option("--beta", type=float, default=4.0, show_default=True, help="beta-VAE/TCVAE weight.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Global batch.")
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--epochs", type=int, help="Passes over the training set.")
@click.option("--max-steps", type=int, help="Optimizer steps (default 2000 without --epochs).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--width", type=int, default=32, show_default=True, help="Conv channels (first).")
@click.option(
    "--val-every", type=int, help="Validate every N steps (default: each epoch, <= 1000)."
)
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option(
    "--align",
    multiple=True,
    metavar="FACTOR=DIM",
    help="Tie latent DIM to a known factor or label (repeatable).",
)
@click.option(
    "--label-fraction",
    type=float,
    default=0.1,
    show_default=True,
    help="Share of training rows whose factors --align may use.",
)
@click.option("--align-weight", type=float, default=1.0, show_default=True)
@click.option("--report/--no-report", default=True, help="Write report/*.png at the end.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.pass_context
def train_command(ctx: click.Context, resume: bool, **options: object) -> None:
    """Train an autoencoder whose latents are sculpted into --prior.

    Writes config.json, metrics.jsonl, checkpoints/, weights.safetensors, summary.json and
    report/*.png into --out. Ctrl-C saves a checkpoint; --resume continues exactly. Under
    `torchrun --nproc_per_node N -m sculptserve.cli train ...` it trains with DDP.
    """
    from sculptserve.training.config import TrainConfig
    from sculptserve.training.trainer import train

    options["align"] = list(options["align"])
    if options["channels"] is not None:
        options["channels"] = int(options["channels"])
    explicit = {
        name
        for name in options
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    }
    config = TrainConfig(**options)
    summary = train(config, resume=resume, explicit=explicit)
    if "val" in summary:
        val = ", ".join(f"{k} {v:.4g}" for k, v in summary["val"].items())
        click.echo(f"{summary['stopped']} at step {summary['step']}: {val}")
        click.echo(f"run saved in {config.out}")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New bundle folder.")
@click.option("--name", help="Bundle name (default: the run dir's name).")
@click.option("--opset", type=click.IntRange(min=13), default=18, show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="fp16 graphs are for GPU serving (inputs and outputs stay float32).",
)
@click.option("--reference-size", type=click.IntRange(min=16), default=2048, show_default=True)
@click.option(
    "--window",
    type=click.IntRange(min=8),
    default=256,
    show_default=True,
    help="Drift-monitor window the thresholds are calibrated for.",
)
@click.option(
    "--false-alarm-rate",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.01,
    show_default=True,
    help="Null fire rate per drift window (either statistic over its threshold).",
)
@click.option(
    "--expected-run-length",
    type=click.FloatRange(min=0),
    default=100_000,
    show_default=True,
    help="Embeddings between false drift alerts to calibrate for (thresholds are raised "
    "until simulated in-distribution streams show it); 0: no target.",
)
@click.option("--bentoml", "to_bentoml", is_flag=True, help="Also import into the model store.")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False),
    help="Sign the bundle digest with this ed25519 private key (PEM, from `sculpt keygen`) "
    "into signature.json; serving checks it with --verify-key.",
)
def export_command(
    run_dir: str,
    out: str,
    name: str | None,
    opset: int,
    precision: str,
    reference_size: int,
    window: int,
    false_alarm_rate: float,
    expected_run_length: float,
    to_bentoml: bool,
    signing_key: str | None,
) -> None:
    """Export a finished run to a verified ONNX bundle in --out.

    Writes encoder.onnx, decoder.onnx, reference.npy (held-out embeddings) and manifest.json
    (input spec, prior, metrics, drift thresholds, sha256 of every file). ONNX Runtime must
    match torch (1e-4 for fp32) on held-out inputs and batches of 1, 2, 7 and 64, or nothing
    is written. Prints the bundle digest: pin it with `sculpt serve --expect-digest`.
    """
    from sculptserve.export.onnx_export import ExportError
    from sculptserve.export.writer import ExportOptions, export_run, import_to_bentoml

    options = ExportOptions(
        name=name,
        opset=opset,
        precision=precision,
        n_reference=reference_size,
        window=window,
        false_alarm_rate=false_alarm_rate,
        expected_run_length=expected_run_length or None,
        signing_key=signing_key,
    )
    try:
        bundle = export_run(run_dir, out, options)
    except ExportError as exc:
        raise click.ClickException(str(exc)) from None
    from sculptserve.bundle.load import bundle_digest

    click.echo(f"bundle written to {bundle}")
    click.echo(f"bundle digest {bundle_digest(bundle)}")
    if signing_key is not None:
        from sculptserve.bundle.digest import key_id, load_private_key

        click.echo(f"signed with key {key_id(load_private_key(signing_key))}")
    if to_bentoml:
        click.echo(f"imported into the BentoML model store as {import_to_bentoml(bundle)}")


@cli.command("eval")
@click.argument("target")
@click.option(
    "--data",
    help="Score on all rows of this dataset or path instead of the held-out "
    "split (runs and bundles).",
)
@click.option(
    "--factors",
    type=npy_path,
    help="Ground-truth factor codes (n x K integers) "
    "for an .npy of embeddings: enables MIG, DCI, SAP and the FactorVAE score.",
)
@click.option(
    "--prior",
    "prior_spec",
    help="Prior SPEC to compare with (default: the model's; N(0, I) for a bare .npy).",
)
@click.option(
    "--regressor",
    "regressors",
    type=click.Choice(list(REGRESSORS)),
    multiple=True,
    help="LPS variants to compute (repeatable; default all: linear, lgbm, mlp).",
)
@click.option(
    "--n-train",
    type=click.IntRange(min=10),
    default=10_000,
    show_default=True,
    help="Training points of the supervised metrics.",
)
@click.option(
    "--n-test",
    type=click.IntRange(min=10),
    default=5_000,
    show_default=True,
    help="Test points of the supervised metrics.",
)
@click.option(
    "--lps-samples",
    type=click.IntRange(min=10),
    default=10_000,
    show_default=True,
    help="Rows LPS is scored on (80/20 split).",
)
@kernel_option
@click.option(
    "--mmd-samples",
    type=click.IntRange(min=10),
    default=2_000,
    show_default=True,
    help="Rows (and as many prior samples) of the MMD^2 to the prior.",
)
@permutations_option
@click.option("--seed", default=0, show_default=True, help="Seed of row sampling and splits.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    help="eval.json path (default: in a run "
    "dir; beside a bundle or .npy as NAME.eval.json). eval.md goes beside it.",
)
@click.option("--json", "as_json", is_flag=True, help="Also print eval.json on stdout.")
def eval_command(
    target: str,
    data: str | None,
    factors: str | None,
    prior_spec: str | None,
    regressors: tuple[str, ...],
    n_train: int,
    n_test: int,
    lps_samples: int,
    kernel: str,
    mmd_samples: int,
    permutations: int,
    seed: int,
    batch_size: int,
    out: str | None,
    as_json: bool,
) -> None:
    """Score TARGET: a run dir, a bundle (folder or sculpt-NAME[:VERSION]) or an .npy of
    embeddings. Writes eval.json and a short eval.md.

    \b
    Unsupervised: LPS (linear, lgbm, mlp), Gaussian total correlation, covariance ratio,
      MMD^2 to the prior with its permutation p-value, max per-dimension KS to the prior,
      NMSE in dB (runs and bundles).
    Supervised, where the data has ground-truth factors (shapes; labels count as one factor):
      MIG, DCI disentanglement / completeness / informativeness, SAP, FactorVAE score.
    Runs and bundles are scored on a seeded sample of their held-out split (encoder means).
    """
    from sculptserve.offline.evaluation import EvalConfig, evaluate, render_report
    from sculptserve.offline.sources import EvalRequest, default_output, load_eval_inputs

    config = EvalConfig(
        seed=seed,
        regressors=regressors or tuple(REGRESSORS),
        lps_samples=lps_samples,
        kernel=kernel,
        mmd_samples=mmd_samples,
        n_permutations=permutations,
        n_train=n_train,
        n_test=n_test,
    )
    request = EvalRequest(
        target,
        config,
        data=data,
        factors=factors,
        prior=prior_spec,
        batch_size=batch_size,
        progress=not as_json,
    )
    kind, inputs = load_eval_inputs(request)
    result = evaluate(inputs, config, log=lambda line: click.echo(line, err=True))
    path = Path(out) if out else default_output(target, kind)
    write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
    write_text(path.with_suffix(".md"), render_report(result))
    if as_json:
        print_json(result)
        return
    print_table(
        f"Evaluation of {target} ({kind}, {result['n']} rows)",
        ("metric", "value"),
        [(key, "n/a" if result[key] is None else float(result[key])) for key in EVAL_KEYS],
        f"written to {path} and {path.with_suffix('.md')}",
    )


@cli.command("embed")
@click.argument("bundle")
@click.argument("data")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npy.")
@click.option(
    "--encoding",
    type=click.Choice(["float32", "float16", "uint8", "int8"]),
    default="float32",
    show_default=True,
    help="float16, or uint8/int8 codes quantized through the prior's CDF (as the service).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
def embed_command(bundle: str, data: str, out: str, encoding: str, batch_size: int) -> None:
    """Embed every row of DATA (a dataset name or a path, prepared as at training) with
    BUNDLE's encoder in ONNX Runtime, into an .npy (rows in DATA's order). No torch."""
    from sculptserve.bundle.load import load_bundle
    from sculptserve.offline.embedding import bundle_data_description, embed_rows, model_dataset
    from sculptserve.serving.encodings import encode_embeddings
    from sculptserve.serving.runtime import EmbeddingRuntime

    loaded = load_bundle(bundle)
    runtime = EmbeddingRuntime(loaded)
    dataset = model_dataset(bundle_data_description(loaded), data)
    rows = np.arange(len(dataset), dtype=np.int64)
    embedded = embed_rows(dataset, rows, runtime.encode, batch_size=batch_size, progress=True)
    codes = encode_embeddings(embedded.embeddings, runtime.prior, encoding)
    save_npy(out, codes)
    click.echo(f"wrote {codes.shape[0]} x {codes.shape[1]} {encoding} embeddings to {out}")


def write_text(path: Path, text: str) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    from sculptserve.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@cli.command("inspect")
@click.argument("bundle")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@expect_digest_option
@verify_key_option
def inspect_command(
    bundle: str, as_json: bool, expect_digest: str | None, verify_key: str | None
) -> None:
    """Verify BUNDLE (a folder or a BentoML tag sculpt-NAME[:VERSION]) and summarize it.

    Checks that the folder holds regular files only, the schema version, the sha256 of every
    file and the ONNX graphs' names and shapes; with --expect-digest the bundle digest, with
    --verify-key the signature. The summary's "digest" is what --expect-digest pins.
    """
    from sculptserve.bundle.load import load_bundle, summarize

    summary = summarize(load_bundle(bundle, expect_digest=expect_digest, verify_key=verify_key))
    if as_json:
        print_json(summary)
        return
    click.echo(json.dumps(summary, indent=2))


@cli.command("serve", epilog=settings_help())
@click.argument("bundle")
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=50051, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@expect_digest_option
@verify_key_option
def serve_command(
    bundle: str,
    port: int,
    grpc_port: int,
    host: str,
    expect_digest: str | None,
    verify_key: str | None,
) -> None:
    """Serve BUNDLE (a folder or sculpt-NAME[:VERSION]) over REST and gRPC.

    REST on --port (/embed, /generate, /reconstruct, /info, /drift, /livez, /readyz, /metrics,
    /docs.json), gRPC sculpt.v1 and the Open Inference Protocol (inference.GRPCInferenceService)
    on --grpc-port, one runtime and drift monitor for both.
    The service reads the SCULPT_* variables below (`python -m sculptserve.serving.settings` prints
    what the environment sets now; README.md's Serving section describes each).
    --expect-digest and --verify-key set SCULPT_BUNDLE_DIGEST and SCULPT_BUNDLE_VERIFY_KEY.
    """
    from sculptserve.serving.launcher import run_serve

    code = run_serve(
        bundle,
        port=port,
        grpc_port=grpc_port,
        host=host,
        expect_digest=expect_digest,
        verify_key=verify_key,
    )
    sys.exit(code)


@cli.command("keygen")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Private key file to write (PEM, mode 0600); the public key goes beside it as "
    "NAME.pub.pem.",
)
def keygen_command(out: str) -> None:
    """Make an ed25519 key pair for signing bundles (`sculpt export --signing-key KEY.pem`)
    and verifying them (`sculpt serve --verify-key KEY.pub.pem`). Keep the private key off
    the serving machines."""
    from sculptserve.bundle.digest import generate_key, key_id, write_keypair

    private = Path(out)
    public = private.with_name(private.name.removesuffix(".pem") + ".pub.pem")
    key = generate_key()
    write_keypair(key, private, public)
    click.echo(f"private key {private}, public key {public}, key id {key_id(key)}")


@cli.group("prior")
def prior_group() -> None:
    """Inspect and sample prior specs.

    \b
    SPEC is a short form, inline JSON, or a .json/.yaml file:
      gaussian                     N(0, 1) in every dimension (needs --dim)
      uniform(-5,5)                Uniform(-5, 5)
      laplace(0,1)                 Laplace(loc, scale)
      bimodal(5,1)                 mixture of N(-5, 1) and N(5, 1), per dimension
      mixture(-5,1,5,1)            mixture of N(m1, s1), N(m2, s2), ... equal weights
      correlated(0.5)              unit gaussian, equicorrelation 0.5 (needs --dim)
      empirical(bank.npy)          rows of a sample bank
      8:gaussian+2:uniform(-1,1)   a different prior per block of dimensions
    """


@prior_group.command("show")
@click.argument("spec")
@click.option("--dim", type=click.IntRange(min=1), help="Dimension for specs that leave it open.")
def prior_show(spec: str, dim: int | None) -> None:
    """Print SPEC as its full JSON form, with its marginal means and variances."""
    from sculptserve.stats.priors import parse_prior

    prior = parse_prior(spec, dim=dim)
    print_json(
        {
            "spec": prior.to_dict(),
            "dim": prior.dim,
            "mean": prior.mean().tolist(),
            "var": prior.var().tolist(),
        }
    )


@prior_group.command("sample")
@click.argument("spec")
@click.option("--dim", type=click.IntRange(min=1), help="Dimension for specs that leave it open.")
@click.option("-n", "--n-samples", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output .npy path.")
def prior_sample(spec: str, dim: int | None, n_samples: int, seed: int, out: str) -> None:
    """Draw samples of SPEC into an .npy file (n x d, float32)."""
    from sculptserve.stats.priors import parse_prior

    samples = parse_prior(spec, dim=dim).sample(n_samples, seed).astype(np.float32)
    save_npy(out, samples)
    click.echo(f"wrote {samples.shape[0]} x {samples.shape[1]} samples to {out}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="sculpt")


if __name__ == "__main__":
    sys.exit(main())
