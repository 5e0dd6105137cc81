"""Statistics against closed forms, exact small cases and brute-force enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from looper_utils.stats import (ERROR_CATEGORIES, accuracy_ci, error_breakdown, error_category, maj_at_k,
                                majority_vote, mcnemar_exact, paired_bootstrap_diff, paired_comparison, pass_at_k,
                                wilson_ci)


def _shuffled(ones: int, n: int, seed: int = 1) -> np.ndarray:
    x = np.array([1] * ones + [0] * (n - ones))
    np.random.default_rng(seed).shuffle(x)
    return x


# ---- McNemar -------------------------------------------------------------------------------

def test_mcnemar_all_discordant_pairs_one_way():
    a = [0] * 5 + [1] * 10  # a wrong on 5 that b got right; 10 both right
    b = [1] * 15
    assert mcnemar_exact(a, b) == {"b01": 5, "b10": 0, "p_value": 0.0625}
    assert mcnemar_exact(b, a) == {"b01": 0, "b10": 5, "p_value": 0.0625}


@pytest.mark.parametrize("b01,b10", [(3, 10), (0, 1), (4, 4), (7, 2), (0, 12)])
def test_mcnemar_matches_binomial_enumeration(b01, b10):
    a = [0] * b01 + [1] * b10 + [1, 1, 0]
    b = [1] * b01 + [0] * b10 + [1, 1, 0]
    n = b01 + b10
    # Two-sided exact test by definition: sum the probabilities of outcomes no likelier than the observed one.
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    expected = min(1.0, sum(p for p in probs if p <= probs[b01] * (1 + 1e-12)))
    got = mcnemar_exact(a, b)
    assert (got["b01"], got["b10"]) == (b01, b10)
    assert got["p_value"] == pytest.approx(expected, rel=1e-12)


def test_mcnemar_known_value_and_no_discordance():
    assert mcnemar_exact([0] * 3 + [1] * 10, [1] * 3 + [0] * 10)["p_value"] == pytest.approx(
        2 * (1 + 13 + 78 + 286) / 8192)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0


def test_mcnemar_large_counts_do_not_overflow():
    a = np.r_[np.zeros(1200), np.ones(900)]
    b = np.r_[np.ones(1200), np.zeros(900)]
    p = mcnemar_exact(a, b)["p_value"]
    assert 0.0 < p < 1e-9  # 1200 vs 900 discordant is overwhelming evidence, yet a finite float


def test_mcnemar_rejects_bad_input():
    with pytest.raises(ValueError, match="same questions"):
        mcnemar_exact([1, 0], [1])
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5, 1], [1, 1])


# ---- bootstrap and Wilson --------------------------------------------------------------------

def test_wilson_closed_form_values():
    p, lo, hi = wilson_ci(70, 100)
    assert (p, round(lo, 4), round(hi, 4)) == (0.7, 0.6042, 0.7811)
    p, lo, hi = wilson_ci(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_ci(5, 3)


def test_bootstrap_ci_close_to_wilson_on_1000_samples():
    x = _shuffled(700, 1000)
    acc, lo, hi = accuracy_ci(x, n_boot=4000, seed=0)
    _, wlo, whi = wilson_ci(700, 1000)
    assert acc == 0.7
    assert lo == pytest.approx(wlo, abs=0.006) and hi == pytest.approx(whi, abs=0.006)
    assert lo < acc < hi


def test_bootstrap_is_seeded_and_alpha_widens():
    x = _shuffled(40, 100)
    assert accuracy_ci(x, seed=3) == accuracy_ci(x, seed=3)
    from looper_utils.stats import _bootstrap_means

    x_float = x.astype(float)
    assert not np.array_equal(_bootstrap_means(x_float, 50, 3), _bootstrap_means(x_float, 50, 4))
    _, lo95, hi95 = accuracy_ci(x, alpha=0.05)
    _, lo80, hi80 = accuracy_ci(x, alpha=0.20)
    assert lo95 < lo80 < 0.4 < hi80 < hi95


def test_bootstrap_blocks_give_the_same_draws_shape(monkeypatch):
    # Resampling in blocks must not change the interval's statistics (only memory use).
    import looper_utils.stats as stats

    x = _shuffled(300, 500)
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 500 * 7)  # 7 resamples per block
    _, lo, hi = stats.accuracy_ci(x, n_boot=3000)
    _, wlo, whi = wilson_ci(300, 500)
    assert lo == pytest.approx(wlo, abs=0.01) and hi == pytest.approx(whi, abs=0.01)


def test_bootstrap_rejects_empty_and_nan():
    with pytest.raises(ValueError, match="empty"):
        accuracy_ci([])
    with pytest.raises(ValueError, match=r"correct\[1\]"):
        accuracy_ci([1, float("nan")])


def test_paired_bootstrap_matches_normal_approximation_and_beats_unpaired():
    n = 1000
    b = _shuffled(500, n)
    a = b.copy()
    wrong_in_b = np.flatnonzero(b == 0)
    right_in_b = np.flatnonzero(b == 1)
    a[wrong_in_b[:60]] = 1  # a wins 60
    a[right_in_b[:20]] = 0  # a loses 20
    diff, lo, hi = paired_bootstrap_diff(a, b, n_boot=4000, seed=0)
    assert diff == pytest.approx(0.04)
    p10, p01 = 0.06, 0.02
    sd = math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert (hi - lo) / 2 == pytest.approx(1.96 * sd, rel=0.1)
    _, alo, ahi = accuracy_ci(a, n_boot=4000)
    assert hi - lo < 0.6 * (ahi - alo)  # pairing removes the shared question difficulty


def test_paired_comparison_fields():
    a, b = [1, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1]
    r = paired_comparison(a, b, n_boot=500)
    assert set(r) == {"diff", "ci95", "mcnemar_p", "b01", "b10", "n"}
    assert r["diff"] == pytest.approx(1 / 6) and (r["b01"], r["b10"], r["n"]) == (1, 2, 6)
    assert r["mcnemar_p"] == 1.0 and r["ci95"][0] <= r["diff"] <= r["ci95"][1]


# ---- pass@k and maj@k --------------------------------------------------------------------------

def test_pass_at_k_equals_enumeration_of_all_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_and_errors():
    assert pass_at_k(200, 1, 1) == pytest.approx(0.005)
    assert pass_at_k(200, 10, 100) == pytest.approx(1 - math.comb(190, 100) / math.comb(200, 100))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_normalises_and_breaks_ties_by_first_seen():
    assert majority_vote(["$1,000", "1000.0", "999", "999"]) == "1000"  # 2 votes vs 2: first seen wins
    assert majority_vote(["5", "7", "7"]) == "7"
    assert majority_vote([None, "5 or 7", "banana", float("nan")]) is None
    assert majority_vote(pd.Series([None, 7.0, "7", np.nan]).tolist()) == "7"  # NaN from pandas, floats
    assert majority_vote(["0.3333333333", "0.333333333333", "1"]) == "0.3333333333"  # grader tolerance


def test_maj_at_k():
    assert maj_at_k(["18", None, None, "18", "20"], "18")
    assert not maj_at_k(["20", "18", "20", "18"], "18")
    assert maj_at_k(["20", "18", "18", "20"], "18", k=3)
    assert not maj_at_k([None, None], "18")
    with pytest.raises(ValueError, match="k=5"):
        maj_at_k(["1"], "1", k=5)


# ---- error categories ----------------------------------------------------------------------------

@pytest.mark.parametrize("extracted,correct,reason,fmt,expected", [
    ("18", True, "length", False, "correct"),
    ("18", False, "length", True, "truncated"),
    (None, False, "max_new_tokens", None, "truncated"),
    (None, False, "stop", False, "no_answer"),
    (None, False, None, None, "no_answer"),
    ("20", False, "eos", False, "format"),
    ("20", False, "stop", True, "wrong"),
    ("20", False, "stop", None, "wrong"),
])
def test_error_category_precedence(extracted, correct, reason, fmt, expected):
    assert error_category(extracted, correct, reason, fmt) == expected


def test_error_breakdown_by_group_with_missing_values():
    df = pd.DataFrame({
        "model": ["sft", "sft", "sft", "ppo", "ppo", "ppo"],
        "extracted": ["1", np.nan, "2", "3", None, "4"],
        "correct": [True, False, False, True, False, False],
        "finish_reason": ["stop", "stop", "stop", None, "length", "stop"],
        "format_ok": [True, False, False, True, np.nan, True],
    })
    t = error_breakdown(df, by="model")
    assert list(t.columns) == ["n", *ERROR_CATEGORIES]
    assert t.loc["sft"].to_dict() == {"n": 3, "correct": 1, "truncated": 0, "no_answer": 1, "format": 1, "wrong": 0}
    assert t.loc["ppo"].to_dict() == {"n": 3, "correct": 1, "truncated": 1, "no_answer": 0, "format": 0, "wrong": 1}
    shares = error_breakdown(df, normalize=True)
    assert shares.loc["all", "correct"] == pytest.approx(2 / 6)
    assert shares.loc["all", ERROR_CATEGORIES].sum() == pytest.approx(1.0)


def test_error_breakdown_uses_category_column_and_rejects_unknown():
    df = pd.DataFrame({"category": ["wrong", "wrong", "correct"]})
    assert error_breakdown(df).loc["all", "wrong"] == 2
    with pytest.raises(ValueError, match="unknown error categories"):
        error_breakdown(pd.DataFrame({"category": ["oops"]}))
    with pytest.raises(ValueError, match="needs columns"):
        error_breakdown(pd.DataFrame({"x": [1]}))
