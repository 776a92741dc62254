"""One tiny simulated file shared by all ray-tracing tests (tracing is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.sim.builtin import industrial, lab_los, lab_nlos
from training.sim.generate import generate

SEED = 7
POSITIONS = {"industrial": 40, "lab-los": 60, "lab-nlos": 120}


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sionna.rt")
    path = tmp_path_factory.mktemp("sim") / "tiny.h5"
    for spec in (industrial(), lab_los(), lab_nlos()):
        generate(spec, path, preset="tiny", seed=SEED, positions=POSITIONS[spec.name], quiet=True)
    return path
