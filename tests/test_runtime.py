"""EmbeddingRuntime on toy bundles against the numpy reference model, and RuntimeConfig."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from bundle_factory import make_bundle, toy_decode, toy_encode, toy_weights

from sculptserve.bundle.load import load_bundle
from sculptserve.serving.errors import PayloadError
from sculptserve.serving.runtime import EmbeddingRuntime, RuntimeConfig, available_cpus
from sculptserve.serving.settings import SculptDeprecationWarning, load_settings

ENV_THREADS = "SCULPT_ORT_THREADS"
ENV_PROVIDERS = "SCULPT_ORT_PROVIDERS"
ENV_MAX_ROWS = "SCULPT_ORT_MAX_ROWS"
ENV_MAX_BATCH = "SCULPT_MAX_BATCH"  # the deprecated name of SCULPT_ORT_MAX_ROWS
ENV_SPINNING = "SCULPT_ORT_SPINNING"

SHAPE = (1, 4, 4)
D = 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(make_bundle(tmp_path_factory.mktemp("b") / "toy", latent_dim=D))


@pytest.fixture(scope="module")
def runtime(bundle):
    return EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=1))


@pytest.fixture(scope="module")
def weights():
    return toy_weights(SHAPE, D)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in (ENV_THREADS, ENV_PROVIDERS, ENV_MAX_ROWS, ENV_MAX_BATCH, ENV_SPINNING):
        monkeypatch.delenv(name, raising=False)


def inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE)).astype(np.float32)


def test_encode_decode_reconstruct_match_the_reference(runtime, weights):
    w_enc, w_dec = weights
    x = inputs(7)
    z = runtime.encode(x)
    assert z.dtype == np.float32 and z.shape == (7, D)
    np.testing.assert_allclose(z, toy_encode(x, w_enc), atol=1e-5)
    out = runtime.decode(z)
    assert out.dtype == np.float32 and out.shape == (7, *SHAPE)
    np.testing.assert_allclose(out, toy_decode(z, w_dec, SHAPE), atol=1e-5)
    np.testing.assert_allclose(runtime.reconstruct(x), out, atol=1e-6)
    # float64 input is cast, batch of one works
    np.testing.assert_allclose(runtime.encode(x[:1].astype(np.float64)), z[:1], atol=1e-6)


def test_attributes(runtime, bundle):
    assert runtime.latent_dim == D and runtime.input_shape == SHAPE
    assert runtime.bundle is bundle and runtime.manifest is bundle.manifest
    assert "CPUExecutionProvider" in runtime.providers
    assert runtime.intra_op_threads == 1


def test_chunking_gives_the_same_result(bundle, runtime):
    small = EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=1, max_batch=3))
    x = inputs(10, seed=1)
    np.testing.assert_allclose(small.encode(x), runtime.encode(x), atol=1e-6)
    z = runtime.encode(x)
    np.testing.assert_allclose(small.decode(z), runtime.decode(z), atol=1e-6)
    _, outs = small.generate(10, seed=4)
    np.testing.assert_allclose(outs, runtime.generate(10, seed=4)[1], atol=1e-6)


def test_bad_inputs_are_payload_errors(runtime):
    with pytest.raises(PayloadError, match=r"input has shape \[2, 4, 4\], expected \(B, 1, 4, 4\)"):
        runtime.encode(np.zeros((2, 4, 4), np.float32))
    with pytest.raises(PayloadError, match="NaN"):
        runtime.encode(np.full((1, *SHAPE), np.nan, np.float32))
    with pytest.raises(PayloadError, match=r"latent has shape \[2, 4\]"):
        runtime.decode(np.zeros((2, 4), np.float32))
    with pytest.raises(PayloadError, match="empty"):
        runtime.decode(np.zeros((0, D), np.float32))


def test_generate_is_deterministic_per_seed(runtime, weights):
    z1, x1 = runtime.generate(5, seed=11)
    z2, x2 = runtime.generate(5, seed=11)
    z3, _ = runtime.generate(5, seed=12)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(x1, x2)
    assert not np.allclose(z1, z3)
    assert z1.dtype == np.float32 and z1.shape == (5, D) and x1.shape == (5, *SHAPE)
    expected = runtime.prior.sample(5, np.random.default_rng(11)).astype(np.float32)
    np.testing.assert_array_equal(z1, expected)
    np.testing.assert_allclose(x1, toy_decode(z1, weights[1], SHAPE), atol=1e-5)


def test_generate_fixed_dims(runtime):
    z, x = runtime.generate(6, seed=3, fixed={0: 1.5, "2": -0.25})
    assert (z[:, 0] == 1.5).all() and (z[:, 2] == -0.25).all()
    free, _ = runtime.generate(6, seed=3)
    np.testing.assert_array_equal(z[:, 1], free[:, 1])  # the other dims are untouched
    np.testing.assert_allclose(x, runtime.decode(z), atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"fixed": {3: 0.0}}, r"dimension 3 is not an index in 0..2"),
        ({"fixed": {-1: 0.0}}, "not an index"),
        ({"fixed": {0: float("inf")}}, "finite number"),
        ({"n": 0}, "n must be an integer >= 1"),
        ({"n": 2.0}, "n must be an integer"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_generate_bad_arguments(runtime, kwargs, pattern):
    args = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(PayloadError, match=pattern):
        runtime.generate(**args)


def test_shared_across_threads(runtime, weights):
    x = inputs(64, seed=5)
    expected = toy_encode(x, weights[0])
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = runtime.encode(x[i * 8 : (i + 1) * 8])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.concatenate([results[i] for i in range(8)]), expected, atol=1e-5)


def test_tabular_and_rgb_bundles(tmp_path):
    for shape in [(6,), (3, 5, 5)]:
        folder = make_bundle(tmp_path / str(len(shape)), latent_dim=2, input_shape=shape)
        rt = EmbeddingRuntime(load_bundle(folder), RuntimeConfig(intra_op_threads=1))
        w_enc, w_dec = toy_weights(shape, 2)
        x = np.random.default_rng(0).random((4, *shape)).astype(np.float32)
        np.testing.assert_allclose(rt.encode(x), toy_encode(x, w_enc), atol=1e-5)
        z, out = rt.generate(3, seed=0)
        np.testing.assert_allclose(out, toy_decode(z, w_dec, shape), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def test_thread_counts_reach_the_sessions(bundle, monkeypatch):
    rt = EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=2, inter_op_threads=1))
    for role in ("encoder", "decoder"):
        opts = rt.session_options(role)
        assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    monkeypatch.setenv(ENV_THREADS, "3")
    rt = EmbeddingRuntime(bundle, load_settings().runtime_config())  # from the environment
    assert rt.intra_op_threads == 3 and rt.session_options().intra_op_num_threads == 3
    # a config built in code never reads the environment: None means the CPUs
    assert RuntimeConfig().resolved_threads() == available_cpus()
    assert EmbeddingRuntime(bundle).intra_op_threads == available_cpus()


def test_pool_threads_sleep_unless_spinning_is_asked_for(bundle, monkeypatch):
    def spinning(rt: EmbeddingRuntime, role: str) -> tuple[str, str]:
        opts = rt.session_options(role)
        return tuple(
            opts.get_session_config_entry(f"session.{pool}.allow_spinning")
            for pool in ("intra_op", "inter_op")
        )

    rt = EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=1))
    assert spinning(rt, "encoder") == spinning(rt, "decoder") == ("0", "0")
    monkeypatch.setenv(ENV_SPINNING, "on")
    rt = EmbeddingRuntime(bundle, load_settings().runtime_config())
    assert spinning(rt, "encoder") == spinning(rt, "decoder") == ("1", "1")
    with pytest.raises(ValueError, match="spinning must be a bool"):
        RuntimeConfig(spinning="yes")


def test_available_cpus_respects_affinity_and_cgroup_quota(tmp_path):
    import os

    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == affinity  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU -> 1 thread
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(affinity + 4) * 100000} 100000\n")
    assert available_cpus(tmp_path) == affinity  # a quota above the mask changes nothing
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1) == 1


def runtime_config(env):
    return load_settings(env).runtime_config()


def test_from_env_parses_every_variable():
    env = {ENV_THREADS: " 4 ", ENV_PROVIDERS: "cpu", ENV_MAX_ROWS: "256"}
    cfg = runtime_config(env)
    assert cfg == RuntimeConfig(
        intra_op_threads=4, providers=("CPUExecutionProvider",), max_batch=256
    )
    assert runtime_config({}) == RuntimeConfig()
    assert runtime_config({ENV_THREADS: "", ENV_PROVIDERS: " "}) == RuntimeConfig()
    for text, value in (("on", True), (" OFF ", False), ("1", True), ("false", False)):
        assert runtime_config({ENV_SPINNING: text}).spinning is value
    full = runtime_config({ENV_PROVIDERS: "CPUExecutionProvider,"})
    assert full.providers == ("CPUExecutionProvider",)
    with pytest.warns(SculptDeprecationWarning, match="SCULPT_MAX_BATCH is deprecated.*"):
        assert runtime_config({ENV_MAX_BATCH: "256"}).max_batch == 256
    with pytest.warns(SculptDeprecationWarning, match="SCULPT_ORT_MAX_ROWS is also set and wins"):
        assert runtime_config({ENV_MAX_BATCH: "256", ENV_MAX_ROWS: "8"}).max_batch == 8


@pytest.mark.parametrize(
    ("env", "pattern"),
    [
        ({ENV_THREADS: "two"}, "SCULPT_ORT_THREADS='two' is not an integer"),
        ({ENV_THREADS: "0"}, "SCULPT_ORT_THREADS='0' must be >= 1"),
        ({ENV_MAX_ROWS: "-5"}, "SCULPT_ORT_MAX_ROWS='-5' must be >= 1"),
        ({ENV_MAX_ROWS: "1.5"}, "SCULPT_ORT_MAX_ROWS='1.5' is not an integer"),
        ({ENV_MAX_BATCH: "-5"}, "SCULPT_MAX_BATCH='-5' must be >= 1"),
        ({ENV_MAX_BATCH: "1.5"}, "SCULPT_MAX_BATCH='1.5' is not an integer"),
        ({ENV_PROVIDERS: "NopeExecutionProvider"}, "SCULPT_ORT_PROVIDERS=.* names Nope"),
        ({ENV_PROVIDERS: ","}, "SCULPT_ORT_PROVIDERS=',' is empty"),
        ({ENV_SPINNING: "sometimes"}, "SCULPT_ORT_SPINNING='sometimes' is not a switch"),
    ],
)
@pytest.mark.filterwarnings("ignore::sculptserve.serving.settings.SculptDeprecationWarning")
def test_from_env_errors_name_the_variable(env, pattern):
    with pytest.raises(ValueError, match=pattern):
        runtime_config(env)


def test_from_env_reads_os_environ(monkeypatch):
    monkeypatch.setenv(ENV_MAX_ROWS, "7")
    assert load_settings().runtime_config().max_batch == 7


def test_config_validation_and_providers(bundle):
    for bad in ({"intra_op_threads": 0}, {"max_batch": 0}, {"inter_op_threads": True}):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            RuntimeConfig(**bad)
    with pytest.raises(ValueError, match="non-empty tuple"):
        RuntimeConfig(providers=())
    assert "CPUExecutionProvider" in RuntimeConfig().resolved_providers()
    with pytest.raises(ValueError, match=r"RuntimeConfig\.providers names FooExecutionProvider"):
        EmbeddingRuntime(bundle, RuntimeConfig(providers=("FooExecutionProvider",)))
    rt = EmbeddingRuntime(bundle, RuntimeConfig(intra_op_threads=1, providers=("CPU",)))
    assert rt.providers == ["CPUExecutionProvider"]


def test_runtime_and_codec_import_no_transport():
    import subprocess
    import sys

    code = (
        "import sys, sculptserve.serving.runtime, sculptserve.serving.inputs; "
        "bad = [m for m in ('bentoml', 'grpc', 'fastapi') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"serving modules imported {proc.stdout.strip()}"
