"""Tests for sculptserve.stats.mmd: estimators, kernels, backends, gradients, permutation test."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from sculptserve.stats.mmd import (
    ESTIMATORS,
    KERNELS,
    IMQKernel,
    PermutationTestResult,
    RBFKernel,
    get_kernel,
    mmd2,
    mmd2_from_kernel_matrix,
    mmd2_linear,
    pairwise_sq_dists,
    permutation_test,
    pooled_kernel_matrix,
)

torch = pytest.importorskip("torch")

KERNEL_NAMES = ["rbf", "imq"]
QUADRATIC = ["unbiased", "biased"]
ALL_ESTIMATORS = ["unbiased", "biased", "linear"]
RBF_SCALES = (0.5, 1.0, 2.0)
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def gaussians(seed: int, n: int, m: int, d: int, shift: float = 0.0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), shift + scale * rng.normal(size=(m, d))


# ---------------------------------------------------------------------------------------------
# A naive reference implementation (double loops, Python floats, statistics.median)
# ---------------------------------------------------------------------------------------------


def naive_sq(a, b) -> float:
    return sum((float(ai) - float(bi)) ** 2 for ai, bi in zip(a, b, strict=True))


def naive_k(kname: str, d2: float, base: float) -> float:
    if kname == "rbf":
        return sum(math.exp(-d2 / (2.0 * (base * f) ** 2)) for f in RBF_SCALES)
    return sum(base * f / (base * f + d2) for f in IMQ_SCALES)


def naive_base(kname: str, points, pair_d2) -> float:
    """Median of the Euclidean distances (rbf) or 2 * d * mean population variance (imq)."""
    if kname == "rbf":
        return statistics.median(math.sqrt(v) for v in pair_d2)
    d = len(points[0])
    variances = [statistics.pvariance([float(p[j]) for p in points]) for j in range(d)]
    return 2.0 * d * statistics.fmean(variances)


def naive_mmd2(x, y, kname: str, estimator: str) -> float:
    z = list(x) + list(y)
    pairs = [naive_sq(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    base = naive_base(kname, z, pairs)

    def k(a, b):
        return naive_k(kname, naive_sq(a, b), base)

    n, m = len(x), len(y)
    keep_diag = estimator == "biased"
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if keep_diag or i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if keep_diag or i != j)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    if keep_diag:
        return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def naive_linear(x, y, kname: str) -> float:
    n2 = min(len(x), len(y)) // 2 * 2
    quads = [(x[2 * i], x[2 * i + 1], y[2 * i], y[2 * i + 1]) for i in range(n2 // 2)]
    pair_d2 = []
    for x0, x1, y0, y1 in quads:
        pair_d2 += [naive_sq(x0, x1), naive_sq(y0, y1), naive_sq(x0, y1), naive_sq(x1, y0)]
    base = naive_base(kname, list(x[:n2]) + list(y[:n2]), pair_d2)
    hs = [
        naive_k(kname, naive_sq(x0, x1), base)
        + naive_k(kname, naive_sq(y0, y1), base)
        - naive_k(kname, naive_sq(x0, y1), base)
        - naive_k(kname, naive_sq(x1, y0), base)
        for x0, x1, y0, y1 in quads
    ]
    return statistics.fmean(hs)


# ---------------------------------------------------------------------------------------------
# Exactness against the naive implementation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize("estimator", QUADRATIC)
@pytest.mark.parametrize(("n", "m"), [(5, 4), (4, 3)])  # 36 pairs (even), 21 pairs (odd)
def test_quadratic_matches_naive(kname, estimator, n, m):
    x, y = gaussians(1, n, m, 3, shift=0.3)
    got = mmd2(x, y, kname, estimator)
    assert isinstance(got, float)
    assert got == pytest.approx(naive_mmd2(x, y, kname, estimator), abs=1e-10, rel=0)


@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize(("n", "m"), [(7, 9), (8, 8), (2, 5)])
def test_linear_matches_naive(kname, n, m):
    x, y = gaussians(2, n, m, 3, scale=1.5)
    got = mmd2_linear(x, y, kname)
    assert got == pytest.approx(naive_linear(x, y, kname), abs=1e-10, rel=0)
    assert mmd2(x, y, kname, "linear") == got


def test_pairwise_sq_dists_matches_naive_and_is_clamped():
    x, y = gaussians(3, 6, 4, 5, shift=100.0)  # far from the origin: cancellation-prone
    d2 = pairwise_sq_dists(x, y)
    assert d2.shape == (6, 4)
    for i, j in itertools.product(range(6), range(4)):
        assert d2[i, j] == pytest.approx(naive_sq(x[i], y[j]), rel=1e-10)
    same = pairwise_sq_dists(x, x)
    assert same.min() >= 0.0
    np.testing.assert_allclose(np.diagonal(same), 0.0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Estimator algebra
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kname", KERNEL_NAMES)
def test_biased_equals_unbiased_plus_diagonal_term(kname):
    """V - U = (k(0) - mean offdiag Kxx) / n + (k(0) - mean offdiag Kyy) / m >= 0 exactly."""
    n, m = 30, 20
    x, y = gaussians(4, n, m, 4, shift=0.2)
    u, v = mmd2(x, y, kname, "unbiased"), mmd2(x, y, kname, "biased")
    K = pooled_kernel_matrix(x, y, kname)
    kxx, kyy = K[:n, :n], K[n:, n:]
    uxx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    uyy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    expected = -uxx / n + np.trace(kxx) / n**2 - uyy / m + np.trace(kyy) / m**2
    assert v - u == pytest.approx(expected, abs=1e-10, rel=0)
    k0 = len(RBF_SCALES) if kname == "rbf" else len(IMQ_SCALES)  # k(a, a)
    np.testing.assert_allclose(np.diagonal(K), k0, rtol=0, atol=1e-12)
    assert v > u


@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize("estimator", QUADRATIC)
def test_from_kernel_matrix_is_consistent_with_mmd2(kname, estimator):
    x, y = gaussians(5, 12, 9, 3, shift=0.5)
    K = pooled_kernel_matrix(x, y, kname)
    assert K.shape == (21, 21)
    np.testing.assert_allclose(K, K.T, atol=1e-12)
    assert mmd2_from_kernel_matrix(K, 12, estimator) == pytest.approx(
        mmd2(x, y, kname, estimator), abs=1e-12
    )


@pytest.mark.parametrize("kname", KERNEL_NAMES)
def test_pooled_kernel_matrix_is_permutation_equivariant(kname):
    """The bandwidth depends only on the pooled set: relabelling permutes K, nothing else."""
    x, y = gaussians(6, 10, 8, 3, shift=1.0)
    z = np.concatenate([x, y])
    perm = np.random.default_rng(0).permutation(18)
    K = pooled_kernel_matrix(x, y, kname)
    Kp = pooled_kernel_matrix(z[perm[:10]], z[perm[10:]], kname)
    np.testing.assert_allclose(Kp, K[np.ix_(perm, perm)], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Statistical behaviour
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kname", KERNEL_NAMES)
def test_unbiased_is_centred_under_the_null(kname):
    reps = 50
    u, v = np.empty(reps), np.empty(reps)
    for r in range(reps):
        x, y = gaussians(100 + r, 200, 200, 5)
        K = pooled_kernel_matrix(x, y, kname)
        u[r] = mmd2(x, y, kname, "unbiased")
        v[r] = mmd2_from_kernel_matrix(K, 200, "biased")
    se = u.std(ddof=1) / math.sqrt(reps)
    assert abs(u.mean()) < 3 * se
    assert abs(u.mean()) < 5e-3
    # The V-statistic is biased upwards by a visible margin on the same data.
    assert v.mean() > u.mean() + 5 * se


@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
@pytest.mark.parametrize(("shift", "scale"), [(1.0, 1.0), (0.0, 2.0)], ids=["shift", "rescale"])
def test_positive_for_different_distributions(kname, estimator, shift, scale):
    n = 2000 if estimator == "linear" else 200
    x, y = gaussians(7, n, n, 5, shift=shift, scale=scale)
    x0, y0 = gaussians(8, n, n, 5)
    alt, null = mmd2(x, y, kname, estimator), mmd2(x0, y0, kname, estimator)
    # Null spread is about 0.005 (quadratic, n=200) and 0.03 (linear, n=2000).
    assert alt > 0.1
    assert alt > null + 0.1


def test_identical_points_give_zero_not_nan():
    x = np.ones((5, 3))
    for kname in KERNEL_NAMES:
        for est in ALL_ESTIMATORS:
            assert mmd2(x, x.copy(), kname, est) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Permutation test
# ---------------------------------------------------------------------------------------------


def test_permutation_test_false_positive_rate():
    trials, alpha = 400, 0.05
    rejections = 0
    for t in range(trials):
        x, y = gaussians(1000 + t, 50, 50, 3)
        rejections += permutation_test(x, y, n_permutations=200, seed=t).p_value <= alpha
    assert 0.02 <= rejections / trials <= 0.08


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kname", "estimator", "trials", "B"),
    [("rbf", "unbiased", 2000, 200), ("imq", "biased", 2000, 200), ("rbf", "linear", 400, 100)],
)
def test_permutation_test_calibration_many_trials(kname, estimator, trials, B):
    """Rejection rate at several alphas stays within ~3 binomial standard errors."""
    p = np.array(
        [
            permutation_test(*gaussians(20000 + t, 40, 30, 3), kname, estimator, B, seed=t).p_value
            for t in range(trials)
        ]
    )
    for alpha in (0.05, 0.1, 0.25):
        size = np.floor(alpha * (B + 1)) / (B + 1)  # exact size of the discrete test
        se = math.sqrt(size * (1 - size) / trials)
        assert abs(np.mean(p <= alpha) - size) < 3.5 * se


def test_permutation_test_power():
    trials = 100
    rejections = 0
    for t in range(trials):
        x, y = gaussians(5000 + t, 50, 50, 3, shift=0.75)
        rejections += permutation_test(x, y, n_permutations=200, seed=t).p_value <= 0.05
    assert rejections / trials > 0.9


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
def test_permutation_p_value_formula(estimator):
    B = 99
    x, y = gaussians(9, 40, 30, 2, shift=0.2)
    res = permutation_test(x, y, estimator=estimator, n_permutations=B, seed=3)
    assert isinstance(res, PermutationTestResult)
    assert res.n_permutations == B and res.null.shape == (B,)
    assert res.statistic == pytest.approx(mmd2(x, y, estimator=estimator), abs=1e-12)
    k = res.p_value * (1 + B) - 1
    assert k == pytest.approx(round(k), abs=1e-9) and 0 <= round(k) <= B
    assert res.p_value == (1 + np.count_nonzero(res.null >= res.statistic)) / (1 + B)
    # A huge shift: no permutation reaches the observed value, p is its floor 1 / (1 + B).
    far = permutation_test(x, y + 50.0, estimator=estimator, n_permutations=B, seed=3)
    assert far.p_value == 1 / (1 + B)


def test_permutation_null_values_are_exact_split_statistics():
    """n = m = 3: every permuted statistic must be the MMD of one of the 20 possible splits."""
    x, y = gaussians(10, 3, 3, 2, shift=1.0)
    z = np.concatenate([x, y])
    possible = np.array(
        [
            mmd2(z[list(c)], z[[i for i in range(6) if i not in c]], "imq")
            for c in itertools.combinations(range(6), 3)
        ]
    )
    res = permutation_test(x, y, "imq", n_permutations=2000, seed=1)
    dist = np.abs(res.null[:, None] - possible[None, :]).min(axis=1)
    assert dist.max() < 1e-12
    # ... and random labellings visit every split (each has probability 1/20).
    hit = np.abs(res.null[:, None] - possible[None, :]) < 1e-12
    assert hit.any(axis=0).all()


def test_permutation_test_reproducible_and_accepts_torch():
    x, y = gaussians(11, 30, 25, 3)
    a = permutation_test(x, y, n_permutations=50, seed=7)
    b = permutation_test(torch.from_numpy(x), torch.from_numpy(y), n_permutations=50, seed=7)
    c = permutation_test(x, y, n_permutations=50, seed=8)
    np.testing.assert_array_equal(a.null, b.null)
    assert a.p_value == b.p_value and a.statistic == b.statistic
    assert not np.array_equal(a.null, c.null)
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_test(x, y, n_permutations=0)


# ---------------------------------------------------------------------------------------------
# numpy vs torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numpy_and_torch_agree(kname, estimator, dtype):
    x, y = gaussians(12, 64, 48, 6, shift=0.3, scale=1.2)
    x, y = x.astype(dtype), y.astype(dtype)
    got_np = mmd2(x, y, kname, estimator)
    got_t = mmd2(torch.from_numpy(x), torch.from_numpy(y), kname, estimator)
    assert isinstance(got_t, torch.Tensor) and got_t.ndim == 0
    assert got_t.dtype == getattr(torch, dtype)
    assert float(got_t) == pytest.approx(got_np, abs=1e-5 if dtype == "float32" else 1e-12)
    ref = mmd2(x.astype(np.float64), y.astype(np.float64), kname, estimator)
    assert got_np == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_median_averages_the_two_middle_values(backend):
    """Points 0, 1, 3, 7: pair distances 1, 2, 3, 4, 6, 7; median 3.5 (torch.median says 3)."""
    x = np.array([[0.0], [1.0]])
    y = np.array([[3.0], [7.0]])
    if backend == "torch":
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    z = np.array([[0.0], [1.0], [3.0], [7.0]])
    d2 = (z - z.T) ** 2
    if backend == "torch":
        z, d2 = torch.from_numpy(z), torch.from_numpy(d2)
    assert float(RBFKernel().base_scale(z, d2, n_self=4)) == 3.5
    auto = float(mmd2(x, y, "rbf", "biased"))
    assert auto == pytest.approx(float(mmd2(x, y, RBFKernel(bandwidth=3.5), "biased")), abs=1e-14)
    assert auto != pytest.approx(float(mmd2(x, y, RBFKernel(bandwidth=3.0), "biased")), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel", [RBFKernel(bandwidth=1.3), IMQKernel(sigma2=1.0)], ids=["rbf", "imq"]
)
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
def test_gradcheck_with_fixed_bandwidth(kernel, estimator):
    # With the heuristic, finite differences would see the bandwidth move while autograd
    # (by design) does not, so gradcheck runs with the bandwidth fixed.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    y = (torch.randn(6, 3, dtype=torch.float64, generator=gen) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mmd2(a, b, kernel, estimator), (x, y))


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
@pytest.mark.parametrize("kname", KERNEL_NAMES)
def test_no_gradient_flows_into_the_bandwidth(kname, estimator):
    """Autograd with the heuristic equals autograd with that bandwidth frozen as a constant."""
    x_np, y_np = gaussians(13, 10, 8, 3, shift=0.4)
    if estimator == "linear":
        n2 = 8
        pair_d2 = []
        for i in range(n2 // 2):
            x0, x1, y0, y1 = x_np[2 * i], x_np[2 * i + 1], y_np[2 * i], y_np[2 * i + 1]
            pair_d2 += [naive_sq(x0, x1), naive_sq(y0, y1), naive_sq(x0, y1), naive_sq(x1, y0)]
        points = list(x_np[:n2]) + list(y_np[:n2])
    else:
        points = list(x_np) + list(y_np)
        pair_d2 = [naive_sq(a, b) for a, b in itertools.combinations(points, 2)]
    base = naive_base(kname, points, pair_d2)
    frozen = RBFKernel(bandwidth=base) if kname == "rbf" else IMQKernel(sigma2=base / (2 * 3))

    grads = []
    for kernel in (get_kernel(kname), frozen):
        x = torch.tensor(x_np, requires_grad=True)
        y = torch.tensor(y_np, requires_grad=True)
        mmd2(x, y, kernel, estimator).backward()
        grads.append((x.grad, y.grad))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-12)

    # The kernel's base scale itself is returned without a graph.
    z = torch.tensor(np.array(points), requires_grad=True)
    d2 = pairwise_sq_dists(z, z)
    s = get_kernel(kname).base_scale(z, d2, n_self=len(points))
    assert not s.requires_grad


# ---------------------------------------------------------------------------------------------
# Validation and registries
# ---------------------------------------------------------------------------------------------


def test_registries_and_unknown_names():
    assert set(KERNELS) == {"rbf", "imq"}
    assert set(ESTIMATORS) == {"unbiased", "biased", "linear"}
    assert isinstance(get_kernel("RBF"), RBFKernel)
    k = IMQKernel(sigma2=2.0)
    assert get_kernel(k) is k
    x, y = gaussians(14, 5, 5, 2)
    with pytest.raises(ValueError, match=r"unknown kernel 'laplace'.*imq, rbf"):
        mmd2(x, y, kernel="laplace")
    with pytest.raises(ValueError, match=r"unknown estimator 'exact'.*unbiased, biased, linear"):
        mmd2(x, y, estimator="exact")
    with pytest.raises(ValueError, match="unknown estimator"):
        permutation_test(x, y, estimator="exact")
    with pytest.raises(TypeError):
        get_kernel(3)
    with pytest.raises(ValueError, match="scales"):
        RBFKernel(scales=())
    with pytest.raises(ValueError, match="bandwidth"):
        RBFKernel(bandwidth=0.0)
    with pytest.raises(ValueError, match="sigma2"):
        IMQKernel(sigma2=-1.0)


@pytest.mark.parametrize(
    ("x", "y", "estimator", "message"),
    [
        (np.zeros(5), np.zeros((5, 2)), "unbiased", "x must be 2-D"),
        (np.zeros((5, 2)), np.zeros((5, 2, 1)), "unbiased", "y must be 2-D"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "unbiased", "same number of features"),
        (np.zeros((0, 2)), np.zeros((5, 2)), "biased", "x is empty"),
        (np.zeros((5, 0)), np.zeros((5, 0)), "biased", "x is empty"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "unbiased", "at least 2 rows"),
        (np.zeros((5, 2)), np.zeros((1, 2)), "linear", "at least 2 rows"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((3, 2)), "unbiased", "x contains NaN"),
        (np.zeros((3, 2)), np.array([[0.0, np.inf], [1.0, 2.0]]), "biased", "y contains NaN"),
    ],
)
def test_input_validation(x, y, estimator, message):
    with pytest.raises(ValueError, match=message):
        mmd2(x, y, estimator=estimator)


def test_input_validation_torch_and_kernel_matrix():
    x = torch.zeros(4, 2)
    y = torch.tensor([[0.0, float("nan")], [1.0, 1.0]])
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        mmd2(x, y)
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        permutation_test(x, y)
    assert mmd2(np.ones((2, 1)), np.ones((1, 1)), estimator="biased") == pytest.approx(0.0)
    K = np.ones((5, 5))
    with pytest.raises(ValueError, match="mmd2_linear"):
        mmd2_from_kernel_matrix(K, 2, "linear")
    with pytest.raises(ValueError, match="square"):
        mmd2_from_kernel_matrix(np.ones((5, 4)), 2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd2_from_kernel_matrix(K, 4, "unbiased")


def test_integer_input_is_promoted():
    x = np.arange(12).reshape(6, 2)
    y = x[::-1] + 1
    assert mmd2(x, y) == pytest.approx(mmd2(x.astype(float), y.astype(float)), abs=1e-14)


# ---------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kname", KERNEL_NAMES)
@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
def test_cuda_matches_cpu(kname, estimator):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, dtype=torch.float64, generator=gen)
    y = torch.randn(512, 64, dtype=torch.float64, generator=gen) * 1.2
    cpu = mmd2(x, y, kname, estimator)
    xc = x.cuda().requires_grad_()
    gpu = mmd2(xc, y.cuda(), kname, estimator)
    assert gpu.device.type == "cuda"
    gpu.backward()
    xr = x.clone().requires_grad_()
    mmd2(xr, y, kname, estimator).backward()
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(xc.grad.cpu(), xr.grad, rtol=1e-7, atol=1e-12)
    f32 = mmd2(x.float().cuda(), y.float().cuda(), kname, estimator)
    assert float(f32) == pytest.approx(float(cpu), abs=1e-5)


@pytest.mark.parametrize("scales", [(0.5, 1.0, 2.0), (1.0, 2.0), (0.5, 1.0, 3.0), (0.7,)])
def test_rbf_values_equal_one_exp_per_scale(scales):
    """The repeated-squaring fast path (and the fallback) give exactly the textbook kernel."""
    from sculptserve.stats.mmd import RBFKernel

    d2 = np.random.default_rng(0).random((50, 40)) * 30
    base = 1.7
    expected = sum(np.exp(-d2 / (2 * (base * s) ** 2)) for s in scales)
    got = RBFKernel(scales=scales)(d2, np.float64(base))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-300)
