"""Claim checks and fold statistics on hand-made result tables: the verdicts follow the numbers."""

from __future__ import annotations

import math

import pytest

from training.experiments.aggregate import DTL_BEST, DTL_MEAN, Stat, summarize
from training.experiments.claims import (
    data_needed,
    evaluate_claims,
    finetune_variants,
    gradual_beats_finetune,
    meml_beats_baselines,
    meml_gradual_cuts_error,
    meml_needs_third_of_data,
)
from training.experiments.grid import Run
from training.experiments.store import RunResult

FRACTIONS = (0.2, 0.6, 1.0)
POOL = 1000


def result(strategy: str, mode: str, frac: float, fold: int, me: float, crps: float = math.nan,
           loss: str = "nll") -> RunResult:  # fmt: skip
    metrics = {"me": me, "median": me, "p90": 2 * me}
    if not math.isnan(crps):
        metrics["crps"] = crps
    run = Run("lab-los", loss, strategy, mode, frac, fold)
    return RunResult(run, round(frac * POOL), 100, 200, metrics, (3, 4), me, 1.0, 0)


def table(me: dict[tuple[str, str], list[float]], crps_factor: float = 0.5) -> list[RunResult]:
    """`me[(strategy, mode)]` = ME per fraction; folds 0/1 at +-0.1 around it."""
    out = []
    for (strategy, mode), values in me.items():
        for frac, v in zip(FRACTIONS, values, strict=True):
            for fold, d in enumerate((-0.1, 0.1)):
                out.append(result(strategy, mode, frac, fold, v + d, crps_factor * (v + d)))
    return out


GOOD = {
    ("scratch", "finetune"): [4.0, 3.0, 2.0],
    ("dtl-bs0", "finetune"): [3.8, 2.9, 1.95],
    ("dtl-bs0", "gradual"): [3.6, 2.8, 1.9],
    ("dtl-bs1", "finetune"): [3.9, 2.95, 1.98],
    ("dtl-bs1", "gradual"): [3.7, 2.9, 1.97],
    ("meml-nll", "finetune"): [3.0, 2.0, 1.5],
    ("meml-nll", "gradual"): [2.0, 1.6, 1.4],
}


def test_stat_mean_and_sample_std() -> None:
    s = Stat.of([1.0, 2.0, 3.0, math.nan])
    assert (s.mean, s.n) == (2.0, 3)
    assert s.std == pytest.approx(1.0)
    assert Stat.of([5.0]).std == 0.0
    assert Stat.of([]).n == 0


def test_summary_dtl_mean_and_best() -> None:
    s = summarize(table(GOOD))
    # dtl mean at 20 %, gradual: mean of 3.6 and 3.7 per fold
    assert s.mean("lab-los", "nll", DTL_MEAN, "gradual", 0.2) == pytest.approx(3.65)
    assert s.mean("lab-los", "nll", DTL_BEST, "gradual", 0.2) == pytest.approx(3.6)
    assert s.dtl_best_source[("lab-los", "nll", "gradual", 0.2)] == "dtl-bs0"
    # scratch is found under either mode
    assert s.mean("lab-los", "nll", "scratch", "gradual", 1.0) == pytest.approx(2.0)
    scratch = s.get("lab-los", "nll", "scratch", "gradual", 1.0)
    assert scratch is not None and scratch["me"].std == pytest.approx(math.sqrt(0.02))


def test_dtl_mean_ignores_folds_missing_a_source() -> None:
    rows = [r for r in table(GOOD) if not (r.run.strategy == "dtl-bs1" and r.run.fold == 1)]
    s = summarize(rows)
    stats = s.get("lab-los", "nll", DTL_MEAN, "gradual", 0.2)
    assert stats is not None and stats["me"].n == 1
    assert stats["me"].mean == pytest.approx((3.5 + 3.6) / 2)


def test_all_claims_hold_on_a_table_built_to_hold() -> None:
    claims = evaluate_claims(summarize(table(GOOD)))
    assert [c.verdict for c in claims] == ["reproduced"] * 4
    assert claims[0].total == 2 * 3  # 2 modes x 3 fractions x 1 MEML variant


def test_meml_worse_than_dtl_somewhere_is_partly() -> None:
    bad = dict(GOOD)
    bad[("meml-nll", "finetune")] = [3.0, 2.0, 1.99]  # worse than DTL best 1.95 at 100 %
    claim = meml_beats_baselines(summarize(table(bad)))
    assert claim.verdict == "partly (5/6)"
    assert [r[-1] for r in claim.rows].index("**no**") == 2  # finetune at 100 %


def test_gradual_gain_not_largest_at_smallest_fraction_fails() -> None:
    flat = dict(GOOD)
    flat[("meml-nll", "finetune")] = [2.1, 2.0, 1.5]  # gain 5 % at 20 %, 20 % at 60 %
    claim = gradual_beats_finetune(summarize(table(flat)))
    by_strategy = {r[2]: r[-1] for r in claim.rows}
    assert by_strategy["meml-nll"] == "**no**"
    assert by_strategy[DTL_MEAN] == "yes"


def test_error_cut_thresholds() -> None:
    # ME cut 1 - 2.0/4.0 = 50 %; CRPS is proportional, so 50 % too: holds.
    assert meml_gradual_cuts_error(summarize(table(GOOD))).verdict == "reproduced"
    small = dict(GOOD)
    small[("meml-nll", "gradual")] = [3.2, 1.6, 1.4]  # 20 % cut < 25 %
    claim = meml_gradual_cuts_error(summarize(table(small)))
    assert claim.verdict == "not reproduced"
    assert claim.rows[0][5] == "20 %"


def test_crps_cut_checked_only_for_nll_targets() -> None:
    rows = [
        result(r.run.strategy, r.run.mode, r.run.fraction, r.run.fold, r.metrics["me"], loss="mse")
        for r in table(GOOD)
    ]
    claim = meml_gradual_cuts_error(summarize(rows))
    assert claim.verdict == "reproduced"
    assert claim.rows[0][6] == "—"


def test_data_needed_interpolates() -> None:
    curve = [(200.0, 4.0), (600.0, 2.0), (1000.0, 1.0)]
    n, exact = data_needed(curve, 3.0)
    assert n == pytest.approx(400.0) and exact
    assert data_needed(curve, 5.0) == (200.0, False)
    assert data_needed(curve, 0.5) == (math.inf, True)


def test_third_of_data_claim() -> None:
    # scratch at 100 % (1000 samples): ME 2.0; MEML gradual reaches 2.0 at 200 already.
    claim = meml_needs_third_of_data(summarize(table(GOOD)))
    assert claim.verdict == "reproduced"
    assert claim.rows[0][5] == "≤ 200"
    slow = dict(GOOD)
    slow[("meml-nll", "gradual")] = [3.0, 2.5, 1.9]  # reaches 2.0 at ~933 samples
    claim = meml_needs_third_of_data(summarize(table(slow)))
    assert claim.verdict == "not reproduced"
    assert float(claim.rows[0][6]) == pytest.approx(0.93, abs=0.01)


def test_finetune_variants_read_the_finetune_runs() -> None:
    """Claims 3 and 4 checked on the fine-tuning runs, not the gradual ones."""
    ft_good = dict(GOOD)
    ft_good[("meml-nll", "finetune")] = [2.0, 1.5, 1.4]  # 50 % cuts at 20 %; 2.0 reached at 20 %
    ft_good[("meml-nll", "gradual")] = [3.5, 2.5, 2.1]  # gradual: 12.5 % cut, never reaches 2.0
    cuts, data = finetune_variants(summarize(table(ft_good)))
    assert "MEML + finetune" in cuts.title and "MEML + finetune" in data.title
    assert cuts.rows[0][4] == "2.000" and cuts.rows[0][5] == "50 %"
    assert cuts.verdict == "reproduced"
    assert data.rows[0][5] == "≤ 200" and data.verdict == "reproduced"
    # The paper's own claims 3 and 4 (gradual) fail on the same table.
    assert meml_gradual_cuts_error(summarize(table(ft_good))).verdict == "not reproduced"
    assert meml_needs_third_of_data(summarize(table(ft_good))).verdict == "not reproduced"


def test_no_finetune_variants_without_finetune_runs() -> None:
    gradual_only = {k: v for k, v in GOOD.items() if k[1] == "gradual"}
    assert finetune_variants(summarize(table(gradual_only))) == []
