"""A run's data: only the needed part of a target is read, and it maps back exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from training.data.fingerprints import read_environment
from training.experiments.grid import QUICK, Preset, Run
from training.experiments.jobs import RunSpec, execute_run, load_target


def test_target_rows_map_back_to_the_file(fingerprint_file: Path) -> None:
    preset = Preset(name="t", max_target_pool=50, max_test=20)
    target = load_target(fingerprint_file, "lab-nlos", preset, seed=4)
    assert len(target.data) == 70  # test + pool, not the 200 in the file
    full = read_environment(fingerprint_file, "lab-nlos")
    train, _ = target.split.run_indices(Run("lab-nlos", "mse", "scratch", "finetune", 0.6, 2), 4)
    np.testing.assert_array_equal(target.take(train).csi, full.subset(train).csi)
    np.testing.assert_array_equal(
        target.take(target.split.test).pos, full.subset(target.split.test).pos
    )
    assert load_target(fingerprint_file, "lab-nlos", preset, seed=4) is target  # cached


def test_calibrated_targets_change_sigma_and_nothing_else(fingerprint_file: Path) -> None:
    """`calibrate_targets` scales sigma on the validation split, as the service does: the
    same seed gives the same positions, so ME matches the paper-protocol run."""
    run = Run("lab-los", "nll", "scratch", "finetune", 1.0, 0)
    results = {}
    for calibrated in (False, True):
        preset = dataclasses.replace(QUICK, name="t", calibrate_targets=calibrated)
        spec = RunSpec(run, preset, {"lab-los": fingerprint_file}, Path("unused"), seed=3)
        results[calibrated] = execute_run(spec)
    raw, cal = results[False], results[True]
    assert cal.metrics["me"] == raw.metrics["me"] and cal.metrics["p90"] == raw.metrics["p90"]
    assert "sigma_scale_x" not in raw.extra
    scale = (cal.extra["sigma_scale_x"], cal.extra["sigma_scale_y"])
    assert all(s > 0 for s in scale) and scale != (1.0, 1.0)
    assert cal.metrics["nll"] != raw.metrics["nll"]
    assert QUICK.fingerprint() != dataclasses.replace(QUICK, calibrate_targets=True).fingerprint()
