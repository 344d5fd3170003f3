"""Inference of issue 24, checked by simulation and against independent references (scipy distributions).

Simulated studies: S seeds of N paired test frames; every seed s has its own true effect ``δ + u_s`` with
``u_s ~ N(0, σ_seed²)`` (training runs differ), frames add smaller noise. The estimand is ``δ``, the effect
expected of a new training run. Baseline errors are symmetric about 1 and candidates are baseline + effect +
symmetric noise, so the population Δ of medians of seed s is exactly ``δ + u_s``.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from aprbench.harness.errors import BenchError
from aprbench.harness.results.stats import Delta, holm, paired_delta, parse_margin, seed_level, tost
from aprbench.harness.results.tables import render_machine

STUDIES, SEEDS, FRAMES = 600, 3, 200


def _studies(rng: np.random.Generator, delta: float, sigma_seed: float, studies: int = STUDIES, seeds: int = SEEDS,
             frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """``(candidate, baseline)`` errors ``(studies, seeds, frames)``, vectorised."""
    base = 1.0 + 0.3 * rng.standard_normal((studies, seeds, frames))
    u = sigma_seed * rng.standard_normal((studies, seeds, 1))
    cand = base + delta + u + 0.05 * rng.standard_normal((studies, seeds, frames))
    return cand, base


def _run(cand: np.ndarray, base: np.ndarray) -> list[Delta]:
    groups = np.repeat(np.arange(cand.shape[1]), cand.shape[2])
    return [paired_delta(c.ravel(), b.ravel(), groups) for c, b in zip(cand, base)]


def _two_stage_percentile(per_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The old interval's outer stage, exactly: the percentile interval of the mean over every draw of seeds with
    replacement (3 seeds: 27 equally likely draws); its inner frame resampling only widened it a little."""
    draws = np.array(list(itertools.product(range(per_seed.shape[1]), repeat=per_seed.shape[1])))
    means = per_seed[:, draws].mean(axis=2)
    return np.quantile(means, 0.025, axis=1), np.quantile(means, 0.975, axis=1)


def test_seed_level_interval_covers_when_seed_variation_dominates():
    rng = np.random.default_rng(24)
    delta = -0.05
    cand, base = _studies(rng, delta, sigma_seed=0.1)
    results = _run(cand, base)
    assert {d.basis for d in results} == {"seeds"} and {d.n_seeds for d in results} == {3}
    coverage = np.mean([d.ci_low <= delta <= d.ci_high for d in results])
    assert 0.92 <= coverage <= 0.98, coverage  # 600 studies: ±3.4 standard errors around 0.95
    # the point estimate is the mean of the per-seed Δ medians, and the vectorised form agrees with the loop
    per_seed = np.median(cand, axis=2) - np.median(base, axis=2)
    mean, low, high, p = seed_level(per_seed)
    np.testing.assert_allclose([d.delta for d in results], mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose([d.ci_low for d in results], low, rtol=1e-12)
    np.testing.assert_allclose([d.p_value for d in results], p, rtol=1e-10)
    # the same tolerance rejects the old three-seed two-stage percentile bootstrap (issue 24: 81.5 %)
    old_low, old_high = _two_stage_percentile(per_seed)
    old = np.mean((old_low <= delta) & (delta <= old_high))
    assert old < 0.88, old


def test_seed_level_p_keeps_its_false_positive_rate_under_no_effect():
    rng = np.random.default_rng(25)
    cand, base = _studies(rng, 0.0, sigma_seed=0.1)
    fpr = np.mean([d.p_value < 0.05 for d in _run(cand, base)])
    assert 0.02 <= fpr <= 0.085, fpr
    # the old p-value, Wilcoxon over the pooled frames of all seeds, rejects most of these null studies
    pooled = sst.wilcoxon((cand - base).reshape(STUDIES, -1), axis=-1).pvalue
    assert np.mean(pooled < 0.05) > 0.5


def test_frames_only_p_and_interval_for_one_trained_model():
    """One seed: the bootstrap p tests the Δ of medians at (or below) its level, the interval covers the Δ."""
    rng = np.random.default_rng(26)
    studies, n = 150, 80
    difficulty = rng.lognormal(0, 0.5, (studies, n))  # frames differ in difficulty, shared by both methods
    c = difficulty * rng.lognormal(0, 0.2, (studies, n))
    b = difficulty * rng.lognormal(0, 0.2, (studies, n))  # exchangeable within a frame: no effect
    res = [paired_delta(ci, bi, n_resamples=400, seed=i) for i, (ci, bi) in enumerate(zip(c, b))]
    assert {d.basis for d in res} == {"frames"}
    fpr = np.mean([d.p_value < 0.05 for d in res])
    assert fpr <= 0.10, fpr
    hits = np.mean([d.ci_low <= 0 <= d.ci_high for d in res])  # the population Δ of medians is 0 here
    assert hits >= 0.88, hits
    # a real shift is found
    shifted = paired_delta(c[0] * 0.8, b[0], n_resamples=400)
    assert shifted.p_value < 0.01 and shifted.ci_high < 0


def test_paired_delta_details():
    rng = np.random.default_rng(3)
    c, b = rng.lognormal(0, 0.5, 50), rng.lognormal(0, 0.5, 50)
    d = paired_delta(c, b, n_resamples=300)
    assert d.delta == pytest.approx(np.median(c) - np.median(b)) and d.per_seed == (d.delta,)
    ref = sst.bootstrap((c, b), lambda x, y, axis: np.median(x, axis=axis) - np.median(y, axis=axis), paired=True,
                        vectorized=True, n_resamples=300, method="percentile", rng=np.random.default_rng(0))
    dist = ref.bootstrap_distribution
    assert (d.ci_low, d.ci_high) == (ref.confidence_interval.low, ref.confidence_interval.high)
    assert d.p_value == min(1.0, 2 * (min(np.sum(dist <= 0), np.sum(dist >= 0)) + 1) / 301)
    assert (d.p_value < 0.05) == (d.ci_low > 0 or d.ci_high < 0)
    same = paired_delta(c, c)
    assert (same.delta, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    # two seeds: the t-test of the two per-seed Δs
    g = np.repeat([0, 1], 25)
    two = paired_delta(c, b, g)
    per = [np.median(c[g == s]) - np.median(b[g == s]) for s in (0, 1)]
    assert two.per_seed == pytest.approx(per) and two.p_value == pytest.approx(sst.ttest_1samp(per, 0).pvalue)
    with pytest.raises(BenchError, match="same frames"):
        paired_delta(c, b[1:])


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept monotone: 0.06)
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN is not a member of the family; adjusted values are capped at 1
    np.testing.assert_allclose(holm([0.01, np.nan, 0.02]), [0.02, np.nan, 0.02])
    np.testing.assert_allclose(holm([0.6, 0.3]), [0.6, 0.6])
    np.testing.assert_allclose(holm([0.7, 0.9, 0.8]), [1.0, 1.0, 1.0])


def _seed_delta(per_seed: list[float]) -> Delta:
    x = np.asarray(per_seed)
    return Delta(float(x.mean()), 0, 0, 1, "seeds", tuple(per_seed), 0.2, 0, 0, 100, len(x), 0.95)


def test_tost_against_scipy_reference_numbers():
    d = [0.004, -0.002, 0.006, 0.001, 0.003]
    x, margin = np.asarray(d), 0.01
    se, df = x.std(ddof=1) / np.sqrt(len(x)), len(x) - 1
    p_lower = sst.t.sf((x.mean() + margin) / se, df)  # H0: Δ <= −margin
    p_upper = sst.t.cdf((x.mean() - margin) / se, df)  # H0: Δ >= +margin
    assert tost(_seed_delta(d), margin) == pytest.approx(max(p_lower, p_upper), rel=1e-10)
    assert tost(_seed_delta(d), margin) < 0.05
    # equivalent at α exactly when the 1 − 2α t-interval lies inside the margin
    ci = sst.ttest_1samp(x, 0).confidence_interval(0.90)
    for m in (0.004, 0.006, 0.008, 0.01):
        assert (tost(_seed_delta(d), m) < 0.05) == (-m < ci.low and ci.high < m), m
    # frames basis: the fraction of bootstrap Δs beyond each bound
    boot = Delta(0.0, 0, 0, 1, "frames", (0.0,), 0.2, 0, 0, 100, 1, 0.95, boot=np.linspace(-0.02, 0.02, 401))
    assert tost(boot, 0.01005) == pytest.approx(100 / 401)  # 100 of the 401 Δs on each side lie beyond


def test_margin_parsing():
    rel = parse_margin("5%")
    assert rel.relative == 0.05 and rel.value("position", 0.2) == pytest.approx(0.01)
    absolute = parse_margin("0.01m,0.1deg")
    assert (absolute.value("position", 9.0), absolute.value("orientation", 9.0)) == (0.01, 0.1)
    assert parse_margin(None) is None and parse_margin("") is None
    for bad in ("5", "0.01m", "-5%", "0%", "0.01m,0.1rad", "abc"):
        with pytest.raises(BenchError, match="--margin"):
            parse_margin(bad)


def test_json_numbers_round_trip_exactly():
    values = [4.86e-11, 0.1 + 0.2, 1 / 3, 123456.78901234567, 5e-324]
    frame = pd.DataFrame({"p": values + [np.nan], "n": np.arange(6), "name": list("abcdef")})
    back = json.loads(render_machine(frame, "json"))
    assert [r["p"] for r in back] == values + [None]
    assert [r["n"] for r in back] == list(range(6)) and back[0]["name"] == "a"
