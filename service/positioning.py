"""The positioning core: validate CSI, run the site model off the event loop, record metrics.

`/locate`, KServe V2 over HTTP and over gRPC are thin transports over `Positioner.locate`,
which, with dynamic batching on (`batching_max_batch` > 0), coalesces concurrent requests
for a site into one model call (service/batching.py).

A multi-BS site answers `Positioner.locate_bs`: CSI per base station for the same UEs
(any non-empty subset of the site's BSs), one model call per BS present, and the
estimates fused by the method the site version names (`training.fusion`: product of
Gaussians, or its robust Student-t variant) into one position with a full 2x2
covariance. Those requests bypass the batcher: they already batch per BS.
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
from service.batching import Batcher
from service.errors import InvalidInput, PayloadTooLarge
from service.store import ModelStore, ServedSite
from training import fusion
from training.novelty import inflate_cov, out_of_site

CSI_SHAPE = (8, 103, 2)


@dataclass(frozen=True)
class Prediction:
    """One batch of positions from one site version (metres, the site's frame)."""

    site: str
    version: str
    loss: str
    position: np.ndarray  # [B, 2]
    sigma: np.ndarray | None  # [B, 2], None for MSE models
    novelty: np.ndarray | None = None
    """[B] out-of-site score (above 1: not from this site); None without a novelty model."""

    @property
    def in_site(self) -> np.ndarray | None:
        """[B] bool, False where the fingerprint does not look like the site; None if unknown."""
        return None if self.novelty is None else ~out_of_site(self.novelty)

    def rows(self, start: int, stop: int) -> Prediction:
        """Rows `start:stop` of this batch (one caller's share of a batched call)."""
        sigma = None if self.sigma is None else self.sigma[start:stop]
        novelty = None if self.novelty is None else self.novelty[start:stop]
        return Prediction(
            self.site, self.version, self.loss, self.position[start:stop], sigma, novelty
        )


@dataclass(frozen=True)
class FusedPrediction:
    """One batch of UEs of a multi-BS site: per-BS estimates and their fusion (metres).

    `cov` is the fused 2x2 covariance per UE, inflation included and, for a UE out of
    site, widened to at least the site's spread per axis; `sigma_source` says
    where the per-BS sigmas came from (`predicted`, or `validation_rmse` for MSE models).
    """

    site: str
    version: str
    loss: str
    per_bs: dict[str, Prediction]
    position: np.ndarray  # [B, 2]
    cov: np.ndarray  # [B, 2, 2]
    sigma_source: str
    inflation: float
    method: str = fusion.PRODUCT
    """The fusion method (`training.fusion.METHODS`) the site version names."""
    novelty: np.ndarray | None = None
    """[B] the UE's out-of-site score (`ServedSite.ue_novelty`: the median of the present
    BSs' scores, or the cross-BS consistency score where larger; above 1 is out of site);
    None without per-BS detectors."""
    joint: bool = False
    """Whether the site's joint head (`training.multibs`) was fused in: every BS heard, or
    two or more for a subset head (`ServedSite.joint_subsets`)."""

    @property
    def in_site(self) -> np.ndarray | None:
        """[B] bool: at least half of the BSs that heard the UE say it is in the site, and
        their views are consistent with one place of it (`training.consistency`)."""
        return None if self.novelty is None else ~out_of_site(self.novelty)

    @property
    def sigma(self) -> np.ndarray:
        """The fused marginal 1-sigma per axis, [B, 2]."""
        sigma: np.ndarray = np.sqrt(np.diagonal(self.cov, axis1=1, axis2=2))
        return sigma


def as_csi_per_bs(values: Any, max_batch: int) -> dict[str, np.ndarray]:
    """{bs id: float32 [B,8,103,2]} from a JSON object of per-BS CSI, validated: at least
    one BS, the same B for every BS present."""
    if not isinstance(values, dict) or not values:
        raise InvalidInput(
            "csi per base station must be a non-empty object {bs id: [8][103][2] or "
            "[B][8][103][2]}",
            {"got": type(values).__name__ if values != {} else "{}"},
        )
    out: dict[str, np.ndarray] = {}
    for bs, raw in values.items():
        try:
            out[bs] = as_csi_batch(raw, max_batch)
        except InvalidInput as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
            raise InvalidInput(
                f"base station {bs!r}: {exc.message}", {"bs": bs, **detail}
            ) from None
    sizes = {bs: int(arr.shape[0]) for bs, arr in out.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInput(
            "every base station needs the same number of fingerprints (one per UE)",
            {"batch_sizes": sizes},
        )
    return out


def check_base_stations(served: ServedSite, csi: dict[str, np.ndarray]) -> None:
    """422 unless the site has several BSs and knows every BS id of the request."""
    if not served.multi_bs:
        raise InvalidInput(
            f"site {served.site!r} has one base station; send csi as one array",
            {"expected": "[8][103][2] or [B][8][103][2]"},
        )
    unknown = sorted(set(csi) - set(served.base_stations))
    if unknown:
        raise InvalidInput(
            f"unknown base station(s) {unknown} for site {served.site!r}",
            {"unknown": unknown, "base_stations": list(served.base_stations)},
        )


def as_csi_batch(values: Any, max_batch: int) -> np.ndarray:
    """A float32 [B,8,103,2] array from one fingerprint [8,103,2] or a batch, validated."""
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (ValueError, TypeError, RecursionError) as exc:
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
    silent = np.flatnonzero(~arr.reshape(arr.shape[0], -1).any(axis=1))
    if len(silent):  # no channel measured: a model's answer to it would be meaningless
        raise InvalidInput(
            "csi fingerprint is all zeros (no channel measured)",
            {
                "fingerprints": silent[:20].tolist(),
                "expected": "a measured channel; at a multi-BS site, leave out a base "
                "station that did not hear the UE",
            },
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
    """Runs site models on a bounded thread pool (onnxruntime releases the GIL).

    With `max_batch` > 0, requests smaller than `max_batch` fingerprints go through a
    `Batcher` (up to `threads` model calls in flight per site); larger ones run alone.
    Without batching, a request of at most `INLINE_ROWS` fingerprints runs on the event
    loop itself: the model takes ~0.2 ms for one, and the hop to a pool thread and back
    costs a third of that again (bench/protocols.md).
    """

    INLINE_ROWS = 2

    def __init__(
        self, store: ModelStore, threads: int, *, max_batch: int = 0, max_delay_us: int = 0
    ) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="csipos-infer")
        self._batcher: Batcher | None = None
        if max_batch > 0:
            self._batcher = Batcher(
                self._infer,
                max_batch=max_batch,
                max_delay_s=max_delay_us / 1e6,
                workers=threads,
                site_label=lambda site: metrics.site_label(site, store.knows),
            )

    async def locate(self, site: str, csi: np.ndarray) -> Prediction:
        """Predict positions for a validated [B,8,103,2] batch."""
        served = self.store.get(site)  # unknown site: 404 now, not after queueing
        if served.multi_bs:
            raise InvalidInput(
                f"site {site!r} has {len(served.base_stations)} base stations; send csi per "
                'base station, e.g. {"csi": {"' + served.base_stations[0] + '": [...]}}',
                {"base_stations": list(served.base_stations)},
            )
        batcher = self._batcher
        if batcher is None:
            return await self._infer(site, csi, inline=csi.shape[0] <= self.INLINE_ROWS)
        if csi.shape[0] >= batcher.max_batch:
            return await self._infer(site, csi)
        return await batcher.submit(site, csi)

    async def _infer(self, site: str, csi: np.ndarray, *, inline: bool = False) -> Prediction:
        """One model call on the site's served version, with its metrics."""
        served = self.store.get(site)
        start = time.perf_counter()
        if inline:
            position, sigma, novelty = served.predict_scored(csi)
        else:
            loop = asyncio.get_running_loop()
            run = served.predict_scored
            position, sigma, novelty = await loop.run_in_executor(self._pool, run, csi)
        elapsed = time.perf_counter() - start
        label = metrics.site_label(site, self.store.knows)
        metrics.INFERENCE_DURATION.labels(label).observe(elapsed)
        metrics.INFERENCE_BATCH.labels(label).observe(csi.shape[0])
        metrics.PREDICTIONS.labels(label).inc(csi.shape[0])
        if novelty is not None:
            metrics.OUT_OF_SITE.labels(label).inc(int(out_of_site(novelty).sum()))
        if sigma is not None:
            hx = metrics.PREDICTED_SIGMA.labels(label, "x")
            hy = metrics.PREDICTED_SIGMA.labels(label, "y")
            for sx, sy in sigma.tolist():
                hx.observe(sx)
                hy.observe(sy)
        return Prediction(site, served.version, served.loss, position, sigma, novelty)

    async def locate_bs(self, site: str, csi: dict[str, np.ndarray]) -> FusedPrediction:
        """Fused positions for CSI per base station (validated by `as_csi_per_bs`)."""
        served = self.store.get(site)
        check_base_stations(served, csi)
        start = time.perf_counter()
        rows = next(iter(csi.values())).shape[0]
        order = [bs for bs in served.base_stations if bs in csi]
        run = served.predict_bs_scored
        if rows * len(order) <= self.INLINE_ROWS:
            results = [run(bs, csi[bs]) for bs in order]
            joint = served.predict_joint(csi)
        else:  # the joint head (None where it does not answer) beside the BSs' models
            loop = asyncio.get_running_loop()
            futures = [loop.run_in_executor(self._pool, run, bs, csi[bs]) for bs in order]
            joint_future = loop.run_in_executor(self._pool, served.predict_joint, csi)
            results = list(await asyncio.gather(*futures))
            joint = await joint_future
        per_bs: dict[str, Prediction] = {}
        means = np.zeros((len(order), rows, 2))
        covs = np.zeros((len(order), rows, 2, 2))
        scores = [r.score for r in results if r.score is not None]
        for k, (bs, (position, sigma, score, _)) in enumerate(zip(order, results, strict=True)):
            per_bs[bs] = Prediction(site, served.version, served.loss, position, sigma, score)
            means[k] = position
            sig = sigma if sigma is not None else np.tile(served.bs_rmse[bs], (rows, 1))
            covs[k] = fusion.diag_cov(sig)
        if joint is not None:  # the joint head answers: it joins as one more Gaussian
            means = np.concatenate([means, joint[0][None].astype(np.float64)])
            covs = np.concatenate([covs, fusion.diag_cov(joint[1])[None]])
        mean, cov = fusion.fuse_by(served.fusion_method, means, covs)
        inflation = served.inflation_for(order)
        cov = cov * inflation
        novelty = None
        if len(scores) == len(order):
            # the cross-BS check's input, computed with the BS's score
            spatial = {
                bs: r.spatial for bs, r in zip(order, results, strict=True) if r.spatial is not None
            }
            novelty = served.ue_novelty(np.stack(scores), spatial)
        spread = served.site_spread
        if novelty is not None and spread is not None:
            cov = inflate_cov(cov, novelty, spread)
        fused = FusedPrediction(
            site,
            served.version,
            served.loss,
            per_bs,
            mean.astype(np.float32),
            cov,
            "predicted" if served.has_sigma else "validation_rmse",
            inflation,
            served.fusion_method,
            novelty,
            joint is not None,
        )
        elapsed = time.perf_counter() - start
        label = metrics.site_label(site, self.store.knows)
        metrics.INFERENCE_DURATION.labels(label).observe(elapsed)
        metrics.INFERENCE_BATCH.labels(label).observe(rows)
        metrics.PREDICTIONS.labels(label).inc(rows)
        if fused.novelty is not None:
            metrics.OUT_OF_SITE.labels(label).inc(int(out_of_site(fused.novelty).sum()))
        hx = metrics.PREDICTED_SIGMA.labels(label, "x")
        hy = metrics.PREDICTED_SIGMA.labels(label, "y")
        for sx, sy in fused.sigma.tolist():
            hx.observe(sx)
            hy.observe(sy)
        return fused

    async def aclose(self) -> None:
        """Stop batching (queued callers are cancelled) and the inference pool."""
        if self._batcher is not None:
            await self._batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
