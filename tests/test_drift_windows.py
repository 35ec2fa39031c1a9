"""Drift window statistics and their null calibration: false-alarm rate and power."""

import numpy as np
import pytest

from sculptserve.stats.drift_windows import WindowScorer, calibrate_drift, window_lps_linear
from sculptserve.stats.mmd import RBFKernel


@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(0)
    reference, pool = rng.normal(size=(1024, 4)), rng.normal(size=(2048, 4))
    thresholds = calibrate_drift(
        pool, reference, window=128, false_alarm_rate=0.05, n_resamples=200, reference_rows=256
    )
    return thresholds, WindowScorer(reference[:256])


def test_thresholds_hold_their_false_alarm_rate_on_fresh_null_windows(calibrated):
    thresholds, scorer = calibrated
    rng = np.random.default_rng(1)
    scores = [scorer.score(rng.normal(size=(128, 4))) for _ in range(200)]
    mmd_alarms = np.mean([s.mmd2 > thresholds.mmd2_threshold for s in scores])
    lps_alarms = np.mean([s.lps_linear > thresholds.lps_linear_threshold for s in scores])
    # 200 windows at a nominal 5%: binomial sd 1.5%, and the threshold itself is estimated.
    assert 0.0 <= mmd_alarms <= 0.12
    assert 0.0 <= lps_alarms <= 0.12


def test_shifted_and_correlated_windows_raise_alarms(calibrated):
    thresholds, scorer = calibrated
    rng = np.random.default_rng(2)
    shifted = [scorer.score(rng.normal(size=(128, 4)) + 0.5).mmd2 for _ in range(30)]
    assert np.mean(np.array(shifted) > thresholds.mmd2_threshold) > 0.9
    cov = 0.5 * np.eye(4) + 0.5
    correlated = [
        scorer.score(rng.multivariate_normal(np.zeros(4), cov, size=128)) for _ in range(30)
    ]
    assert np.mean([s.lps_linear > thresholds.lps_linear_threshold for s in correlated]) > 0.9


def test_scorer_freezes_the_reference_bandwidth():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(300, 3))
    scorer = WindowScorer(reference)
    assert isinstance(scorer.kernel, RBFKernel)
    pairs = np.sqrt(((reference[:, None] - reference[None]) ** 2).sum(-1))
    median = np.median(pairs[np.triu_indices(300, 1)])
    assert scorer.kernel.bandwidth == pytest.approx(median, rel=1e-9)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_window_mmd2_equals_the_pooled_estimator(kernel):
    from sculptserve.stats.mmd import mmd2

    rng = np.random.default_rng(6)
    reference, window = rng.normal(size=(300, 5)), rng.normal(size=(64, 5)) + 0.3
    scorer = WindowScorer(reference, kernel)
    expected = mmd2(window, reference, kernel=scorer.kernel, estimator="unbiased")
    assert scorer.window_mmd2(window) == pytest.approx(expected, abs=1e-10)


def test_window_statistics_fields():
    rng = np.random.default_rng(4)
    scorer = WindowScorer(rng.normal(size=(400, 3)))
    stats = scorer.score(rng.normal(size=(100, 3)) * [1, 1, 3] + [2, 0, 0])
    assert stats.mean_shift[0] == pytest.approx(2.0, abs=0.3)
    assert stats.std_ratio[2] == pytest.approx(3.0, rel=0.15)
    assert window_lps_linear(rng.normal(size=(5000, 3))) == pytest.approx(0.0, abs=0.01)


def test_bad_input():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="fewer than one window"):
        calibrate_drift(rng.normal(size=(50, 3)), rng.normal(size=(100, 3)), window=64)
    with pytest.raises(ValueError, match="dimensions"):
        WindowScorer(rng.normal(size=(100, 3))).score(rng.normal(size=(20, 4)))
    with pytest.raises(ValueError, match="NaN"):
        WindowScorer(rng.normal(size=(100, 3))).score(np.full((20, 3), np.nan))
