"""A small fingerprint file with every environment the experiment grid needs, and one
finished `quick` experiment shared by the tests that only read it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.toychannel import toy_fingerprints
from training.data.fingerprints import EnvironmentMeta, write_environment
from training.experiments.grid import QUICK
from training.experiments.runner import Outcome, run_experiment

ENVS: dict[str, tuple[float, float]] = {
    "industrial/bs0": (0.0, 0.0),
    "industrial/bs1": (20.0, 0.0),
    "industrial/bs2": (10.0, 10.0),
    "industrial/bs3": (0.0, 10.0),
    "lab-los": (5.0, -2.0),
    "lab-nlos": (-2.0, 4.0),
}


@pytest.fixture(scope="session")
def fingerprint_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "grid.h5"
    for k, (env, bs) in enumerate(ENVS.items()):
        meta = EnvironmentMeta(bs_position=(bs[0], bs[1], 3.0), description="toy", source={"k": k})
        write_environment(path, env, toy_fingerprints(200, bs, seed=k), meta)
    return path


@pytest.fixture(scope="session")
def quick_run(
    fingerprint_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Outcome]:
    """The quick preset, run once with two worker processes."""
    out = tmp_path_factory.mktemp("quick")
    return out, run_experiment(QUICK, fingerprint_file, out, workers=2, seed=0)
