"""Fixtures shared across the test tree."""

from __future__ import annotations

from pathlib import Path

import pytest

# Small enough to ray-trace in well under a minute on 2 cores, large enough that a
# trained model beats predicting the mean position.
TINY_POSITIONS = {"industrial": 150, "lab-los": 200, "lab-nlos": 200}


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated file with every built-in environment (industrial/bs0..bs3, lab-los, lab-nlos).

    Made once per test session with the real ray tracer, so the training and
    service tests run on the same kind of data as users do.
    """
    pytest.importorskip("sionna.rt")
    from training.sim.builtin import industrial, lab_los, lab_nlos
    from training.sim.generate import generate

    path = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    for spec in (industrial(), lab_los(), lab_nlos()):
        generate(spec, path, preset="tiny", seed=0, positions=TINY_POSITIONS[spec.name], quiet=True)
    return path
