"""The quick preset end to end: all runs, the report, resume, interruption, refusal to mix."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.experiments import jobs
from training.experiments.grid import QUICK, Run
from training.experiments.runner import ExperimentStateError, Outcome, run_experiment
from training.experiments.store import ResultStore, RunResult


def test_quick_runs_every_cell_and_writes_the_report(quick_run: tuple[Path, Outcome]) -> None:
    out, outcome = quick_run
    planned = QUICK.runs()
    assert outcome.complete and outcome.ran == len(planned) == 144
    assert all(ResultStore(out).done(r) for r in planned)
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(planned)
    assert {"me", "median", "p90", "crps", "within_1sigma", "within_2sigma", "epochs_phase1",
            "epochs_phase2", "steps_phase1", "chosen_mode", "degenerate",
            "wall_s"} <= set(rows[0])  # fmt: skip
    # The fixed budgets: no scratch run ends at the centroid (degenerate), and auto's
    # choice is one of its three candidates.
    assert [r for r in rows if r["strategy"] == "scratch" and r["degenerate"] == "1"] == []
    assert {r["chosen_mode"] for r in rows if r["mode"] == "auto"} <= {
        "finetune",
        "gradual",
        "head",
    }
    nll_rows = [r for r in rows if r["loss"] == "nll"]
    assert all(float(r["crps"]) > 0 for r in nll_rows)
    gradual = [r for r in rows if r["mode"] == "gradual"]
    assert all(int(r["epochs_phase2"]) >= 1 for r in gradual)
    report = (out / "report.md").read_text()
    assert report.count("### Claim") == 4 + 2  # the paper's four, then 3 and 4 with fine-tuning
    assert "## Claims 3 and 4 with fine-tuning instead of gradual unfreezing" in report
    assert "144 of 144 finished" in report and "Incomplete" not in report
    assert "MAML (nll sources)" in report and "TB-MAML (nll sources)" in report
    assert "## Target training modes" in report and "auto / best single" in report
    assert len(list((out / "figures").glob("*.png"))) == 4  # 2 targets x (nll ME, CRPS)
    # per target x fraction: one dtl:best row per mode
    assert (out / "summary.csv").read_text().count("dtl:best") == 2 * 2 * 5


def test_second_run_redoes_nothing(quick_run: tuple[Path, Outcome], fingerprint_file: Path) -> None:
    out, _ = quick_run
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = run_experiment(QUICK, fingerprint_file, out, workers=2, seed=0)
    assert (again.ran, again.skipped, again.failed) == (0, 144, {})
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}


def test_interrupted_experiment_resumes_only_missing_runs(
    quick_run: tuple[Path, Outcome],
    fingerprint_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "exp"
    shutil.copytree(quick_run[0], out)
    store = ResultStore(out)
    lost = [r for r in QUICK.runs() if r.fraction == 1.0 and r.fold == 1][:3]
    before = {r: store.read(r) for r in lost}
    for r in lost:
        store.path(r).unlink()

    executed: list[Run] = []
    real = jobs.execute_run

    def flaky(spec: jobs.RunSpec) -> RunResult:
        executed.append(spec.run)
        if spec.run == lost[1] and executed.count(spec.run) == 1:
            raise RuntimeError("worker killed")
        return real(spec)

    monkeypatch.setattr(jobs, "execute_run", flaky)
    first = run_experiment(QUICK, fingerprint_file, out, workers=1, seed=0)
    assert (first.ran, first.skipped) == (2, 141)
    assert list(first.failed) == [lost[1].id] and "worker killed" in first.failed[lost[1].id]
    assert "Incomplete: 1 runs missing" in (out / "report.md").read_text()

    second = run_experiment(QUICK, fingerprint_file, out, workers=1, seed=0)
    assert (second.ran, second.skipped, second.failed) == (1, 143, {})
    assert sorted(executed) == sorted([*lost, lost[1]])  # nothing else was redone
    # Same seed, same numbers (workers use one thread, this process more: allow rounding).
    for r in lost:
        assert store.read(r).metrics["me"] == pytest.approx(before[r].metrics["me"], rel=1e-3)


def test_out_dir_refuses_another_seed(
    quick_run: tuple[Path, Outcome], fingerprint_file: Path
) -> None:
    with pytest.raises(ExperimentStateError, match="seed=0"):
        run_experiment(QUICK, fingerprint_file, quick_run[0], seed=1)


def test_missing_environment_is_named(tmp_path: Path, fingerprint_file: Path) -> None:
    from training.experiments.grid import Preset

    preset = Preset(name="x", targets=("campus",))
    with pytest.raises(ValueError, match=r"needs environments \['campus'\]"):
        run_experiment(preset, fingerprint_file, tmp_path)


def test_cli_help_and_resume(quick_run: tuple[Path, Outcome], fingerprint_file: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["experiment", "--help"]).output
    for option in ("--preset", "--data", "--out", "--workers", "--seed", "--quiet"):
        assert option in help_text
    res = runner.invoke(
        app,
        ["experiment", "--preset", "quick", "--data", str(fingerprint_file),
         "--out", str(quick_run[0]), "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    bad = runner.invoke(app, ["experiment", "--preset", "huge", "--data", str(fingerprint_file),
                              "--out", str(quick_run[0])])  # fmt: skip
    assert bad.exit_code != 0 and "unknown preset" in bad.output
    report = quick_run[0] / "report.md"
    report.unlink()
    again = runner.invoke(app, ["experiment", "--data", str(fingerprint_file), "--out",
                                str(quick_run[0]), "--report-only"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert "144 of 144 finished" in report.read_text()
