"""Fixtures shared by the training tests: a real local Ray cluster (started once per session)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from tests.training.raycluster import LOOPBACK_ENV, RayCluster, ray_cluster


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A one-node, 2-CPU Ray cluster on 127.0.0.1 (skipped without the `cluster` extra).

    This process talks to it as a driver, so it takes the loopback setting too
    (read by Ray when it looks up this machine's address).
    """
    saved = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    pytest.importorskip("ray")
    constants = sys.modules.get("ray._private.ray_constants")
    before = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:  # ray was imported before the variable was set
        constants.ENABLE_RAY_CLUSTER = False
    try:
        with ray_cluster(tmp_path_factory.mktemp("ray") / "t") as cluster:
            yield cluster
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = before
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
