"""The positioning core: validate CSI, run the site model off the event loop, record metrics.

`/locate` and the KServe V2 `infer` route are thin transports over `Positioner.locate`.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service import metrics
from service.errors import InvalidInput, PayloadTooLarge
from service.store import ModelStore

CSI_SHAPE = (8, 103, 2)


@dataclass(frozen=True)
class Prediction:
    """One batch of positions from one site version (metres, the site's frame)."""

    site: str
    version: str
    loss: str
    position: np.ndarray  # [B, 2]
    sigma: np.ndarray | None  # [B, 2], None for MSE models


def as_csi_batch(values: Any, max_batch: int) -> np.ndarray:
    """A float32 [B,8,103,2] array from one fingerprint [8,103,2] or a batch, validated."""
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "csi must be a numeric array of shape [8,103,2] or [B,8,103,2]",
            {"reason": str(exc).split("\n")[0]},
        ) from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != CSI_SHAPE:
        raise InvalidInput(
            "csi has the wrong shape",
            {"expected": "[8,103,2] or [B,8,103,2]", "got": list(arr.shape)},
        )
    if arr.shape[0] == 0:
        raise InvalidInput("csi batch is empty", {"expected": "at least one fingerprint"})
    if arr.shape[0] > max_batch:
        raise PayloadTooLarge(
            f"batch of {arr.shape[0]} fingerprints exceeds the limit",
            {"max_batch": max_batch, "got": int(arr.shape[0])},
        )
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)).ravel()
        raise InvalidInput(
            "csi contains NaN or infinite values",
            {"fingerprints": bad[:20].tolist(), "expected": "finite numbers"},
        )
    return np.ascontiguousarray(arr)


def ellipse(sigma_x: float, sigma_y: float, confidence: float) -> dict[str, float]:
    """Axis-aligned confidence ellipse (3GPP TS 23.032 'ellipse with confidence' style).

    For a 2-D Gaussian with independent axes, P(inside k-sigma ellipse) = 1 - exp(-k^2/2),
    so k = sqrt(-2 ln(1 - confidence)); the semi-axes are k*sigma per axis. The
    orientation is the angle of the major axis from the x axis (0 or 90 degrees).
    """
    k = math.sqrt(-2.0 * math.log(1.0 - confidence))
    ax, ay = k * sigma_x, k * sigma_y
    return {
        "semi_axis_x": ax,
        "semi_axis_y": ay,
        "semi_major": max(ax, ay),
        "semi_minor": min(ax, ay),
        "orientation_deg": 0.0 if ax >= ay else 90.0,
        "confidence": confidence,
        "k": k,
    }


class Positioner:
    """Runs site models on a bounded thread pool (onnxruntime releases the GIL)."""

    def __init__(self, store: ModelStore, threads: int) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="csipos-infer")

    async def locate(self, site: str, csi: np.ndarray) -> Prediction:
        """Predict positions for a validated [B,8,103,2] batch (one model call)."""
        served = self.store.get(site)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        position, sigma = await loop.run_in_executor(self._pool, served.predict, csi)
        elapsed = time.perf_counter() - start
        label = metrics.site_label(site, self.store.knows)
        metrics.INFERENCE_DURATION.labels(label).observe(elapsed)
        metrics.INFERENCE_BATCH.labels(label).observe(csi.shape[0])
        metrics.PREDICTIONS.labels(label).inc(csi.shape[0])
        if sigma is not None:
            hx = metrics.PREDICTED_SIGMA.labels(label, "x")
            hy = metrics.PREDICTED_SIGMA.labels(label, "y")
            for sx, sy in sigma.tolist():
                hx.observe(sx)
                hy.observe(sy)
        return Prediction(site, served.version, served.loss, position, sigma)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
