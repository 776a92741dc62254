"""A run's data: only the needed part of a target is read, and it maps back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.fingerprints import read_environment
from training.experiments.grid import Preset, Run
from training.experiments.jobs import load_target


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
