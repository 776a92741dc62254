"""Small synthetic fingerprints shared by the data tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from training.data.fingerprints import EnvironmentMeta, Fingerprints

MakeData = Callable[..., Fingerprints]


def make_fingerprints(n: int = 50, seed: int = 0, optional: bool = True) -> Fingerprints:
    rng = np.random.default_rng(seed)
    return Fingerprints(
        csi=rng.normal(size=(n, 8, 103, 2)).astype(np.float32),
        pos=rng.uniform(-5.0, 20.0, size=(n, 2)).astype(np.float32),
        los=(rng.uniform(size=n) < 0.7) if optional else None,
        snr_db=rng.uniform(5.0, 30.0, size=n).astype(np.float32) if optional else None,
    )


@pytest.fixture
def make_data() -> MakeData:
    return make_fingerprints


@pytest.fixture
def meta() -> EnvironmentMeta:
    return EnvironmentMeta(
        bs_position=(1.0, 2.0, 3.5),
        description="test environment",
        source={"generator": "pytest", "version": "1", "params": {"seed": 0, "snr": [5, 30]}},
    )
