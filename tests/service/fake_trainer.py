"""A stand-in for `training.transfer.adapt_site` that is fast and controllable.

Used through the `adapt_entrypoint` setting, so the job machinery (process pool, RQ,
records, kill safety) is tested without minutes of training. Behaviour by seed:
seed 13 fails; otherwise it reports `FAKE_EPOCHS` epochs of `FAKE_EPOCH_S` seconds
(environment variables) and publishes a linear model whose bias is the data's mean
position. With `FAKE_PUBLISH_MARKER` set it creates that file in the middle of the
publish (files written, under the repository lock, before the commit) and then waits
`FAKE_PUBLISH_S` seconds there, so tests can kill things mid-publish. The `TrainConfig`
it was given comes back in its metrics (`config_*`), so
tests can see what the service passed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import training.repository as repository
from tests.service.models import publish_linear
from training.config import TrainConfig
from training.repository import ModelRepository

FAIL_SEED = 13


def _pause_mid_publish(marker: Path, pause_s: float) -> None:
    write = repository._write_file_synced

    def wrapped(path: Path, data: bytes) -> None:
        write(path, data)
        if path.name == repository.MANIFEST and path.parent.name.startswith(
            repository._TEMP_PREFIX
        ):
            marker.touch()
            time.sleep(pause_s)

    repository._write_file_synced = wrapped  # type: ignore[assignment]


@dataclass
class FakeResult:
    version: str
    metrics: dict[str, Any]
    epochs: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    wall_s: float = 0.0


def adapt_site(
    repo: ModelRepository,
    site: str,
    data: Any,
    *,
    backbone: str | None,
    mode: str,
    loss: str,
    val_fraction: float,
    seed: int,
    activate: bool,
    progress: Callable[[dict[str, Any]], None] | None,
    config: TrainConfig | None = None,
) -> FakeResult:
    start = time.time()
    epochs = int(os.environ.get("FAKE_EPOCHS", "3"))
    pause = float(os.environ.get("FAKE_EPOCH_S", "0.05"))
    best = float("inf")
    for epoch in range(1, epochs + 1):
        time.sleep(pause)
        val_me = 10.0 / epoch
        best = min(best, val_me)
        if progress is not None:
            progress({"phase": "head", "epoch": epoch, "val_me": val_me, "best_val_me": best})
    if seed == FAIL_SEED:
        raise RuntimeError("fake trainer failed on purpose")
    marker = os.environ.get("FAKE_PUBLISH_MARKER")
    if marker:
        _pause_mid_publish(Path(marker), float(os.environ.get("FAKE_PUBLISH_S", "5")))
    centre = np.asarray(data.pos, dtype=np.float64).mean(axis=0)
    version = publish_linear(
        repo, site, loss, seed=seed, bias=(float(centre[0]), float(centre[1])), activate=activate
    )
    metrics: dict[str, Any] = {"val_me": best, "backbone_ref": backbone, "mode": mode}
    if config is not None:
        metrics.update({f"config_{k}": v for k, v in config.to_dict().items() if k != "loss"})
    return FakeResult(version, metrics, {"head": epochs}, len(data), time.time() - start)
