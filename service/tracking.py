"""UE tracks for `/locate`: one Kalman filter (`training.tracking`) per (site, UE id).

A request with a `ue` id feeds its position estimate and covariance to that UE's track
(`Tracker.update`, the one entry point: the fused estimate of a multi-BS site plugs in the
same way as a single BS's) and the answer carries the filtered state.

Where tracks live:

- in this process (`MemoryTrackStore`): an LRU of at most `track_max_ues` tracks, each
  dropped `track_expiry_s` after its last measurement. Right for one API process; with
  several replicas or uvicorn workers a UE's requests would land on different stores.
- in Redis when `CSIPOS_REDIS_URL` is set (`RedisTrackStore`): one JSON key per track
  (versioned: a record of another `training.tracking.STATE_VERSION` is dropped and the
  track restarts, so a rolling upgrade never crashes) with a TTL of `track_expiry_s`,
  read-modify-written under WATCH/MULTI (retried on a concurrent write), so any
  replica can take any request of any UE. An index (sorted set by expiry) counts the
  tracks and trims the oldest beyond `track_max_ues`.

Time. A request's `timestamp` (seconds, any clock the client keeps monotonic per UE,
e.g. Unix time) orders its measurements; without one the server's receive time
(Unix) is used, nudged past the track's last time so server-stamped measurements never
go backwards. A client-stamped measurement at or before the track's time is *stale*:
not applied, answered with the track as it stands and `stale: true` (a retried request
is not counted twice; an out-of-order one does not rewind the filter).

Measurement noise. NLL models: ``diag(sigma_x^2, sigma_y^2)``. MSE models predict no
sigma: their noise is isotropic with sigma = validation ME x sqrt(2/pi) from the
version's manifest (the ME of a 2-D isotropic Gaussian error is sigma sqrt(pi/2)), else
`track_mse_sigma_m`; the answer's `measurement_noise` says which.

Out of site. The fingerprint's score (the answer's `novelty`) is averaged over the UE's
track (`training.tracking.average_novelty`, time constant `track_novelty_time_s`): the
track's `novelty` and `in_site` judge the UE (with the setting at 0, the default, the
latest fingerprint alone; docs/results/site-trust/ue-average measures 10 s).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson

from service import metrics
from service.config import Settings
from service.errors import InvalidInput, Unavailable
from service.positioning import Prediction
from training.novelty import out_of_site
from training.tracking import Step, TrackerConfig, TrackState, step

log = logging.getLogger("csipos.service.tracking")

UE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
"""UE ids: 1-64 letters, digits, '.', '_', ':' or '-' (IMSI, MAC, UUID all fit)."""
MAX_TIMESTAMP = 1e11
"""Timestamps are seconds; 1e11 s is year 5138 in Unix time (milliseconds would be refused)."""
SERVER_TICK_S = 1e-6
"""How far a server-stamped measurement is moved past the track's last time."""

Transition = Callable[[TrackState | None], Step]


def check_ue(value: Any) -> str:
    """A valid UE id, or 422."""
    if not isinstance(value, str) or not UE_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else value
        raise InvalidInput(
            "invalid ue id",
            {"expected": "1-64 letters, digits, '.', '_', ':' or '-'", "got": shown},
        )
    return value


def check_timestamp(value: Any) -> float:
    """A timestamp in seconds (finite, 0 <= t < 1e11), or 422; strings are parsed (query)."""
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or not 0 <= number < MAX_TIMESTAMP:
        raise InvalidInput(
            "timestamp must be a finite number of seconds, 0 <= timestamp < 1e11",
            {"got": value, "example": 1764620000.25},
        )
    return number


class TrackStore(Protocol):
    """Where track states live; `apply` is an atomic read-modify-write of one track."""

    async def apply(self, key: str, transition: Transition) -> Step: ...

    async def aclose(self) -> None: ...


class MemoryTrackStore:
    """Tracks of this process: an LRU bounded to `max_tracks`, entries expire after `ttl_s`.

    `apply` runs the transition without awaiting, so on one event loop it is atomic.
    """

    def __init__(
        self, max_tracks: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_tracks = max_tracks
        self.ttl_s = ttl_s
        self._clock = clock
        self._tracks: OrderedDict[str, tuple[TrackState, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tracks)

    async def apply(self, key: str, transition: Transition) -> Step:
        now = self._clock()
        entry = self._tracks.get(key)
        prior = entry[0] if entry is not None and now - entry[1] <= self.ttl_s else None
        result = transition(prior)
        if not result.stale:
            self._tracks[key] = (result.state, now)
            self._tracks.move_to_end(key)
        # Least recently updated first: expired entries, then any beyond the limit.
        while self._tracks:
            _, (_, touched) = next(iter(self._tracks.items()))
            if now - touched <= self.ttl_s and len(self._tracks) <= self.max_tracks:
                break
            self._tracks.popitem(last=False)
        metrics.TRACKED_UES.set(len(self._tracks))
        return result

    async def aclose(self) -> None:
        self._tracks.clear()
        metrics.TRACKED_UES.set(0)


class RedisTrackStore:
    """Tracks in Redis, shared by every replica: JSON per key, TTL, WATCH/MULTI updates."""

    PREFIX = "csipos:track:"
    INDEX = "csipos:tracks"
    """Sorted set of track keys scored by their expiry (Unix time): counts and trims."""
    MAX_ATTEMPTS = 64

    def __init__(self, url: str, max_tracks: int, ttl_s: float) -> None:
        self.url = url
        self.max_tracks = max_tracks
        self.ttl_s = ttl_s
        self._client: Any = None

    def _redis(self) -> Any:
        # Made on first use, inside the serving event loop (redis.asyncio binds to it).
        if self._client is None:
            from redis.asyncio import Redis

            self._client = Redis.from_url(self.url, socket_timeout=2.0, socket_connect_timeout=2.0)
        return self._client

    async def apply(self, key: str, transition: Transition) -> Step:
        from redis.exceptions import RedisError, WatchError

        name = self.PREFIX + key
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                for attempt in range(self.MAX_ATTEMPTS):
                    try:
                        await pipe.watch(name)
                        prior = _decode(await pipe.get(name), name)
                        result = transition(prior)
                        if result.stale:
                            await pipe.unwatch()
                            return result
                        now = time.time()
                        pipe.multi()
                        pipe.set(name, orjson.dumps(result.state.to_dict()), px=self._ttl_ms)
                        pipe.zadd(self.INDEX, {key: now + self.ttl_s})
                        pipe.zremrangebyscore(self.INDEX, "-inf", now)
                        pipe.zcard(self.INDEX)
                        count = int((await pipe.execute())[-1])
                        break
                    except WatchError:
                        # another replica wrote this track since our read: read it again
                        await asyncio.sleep(0.001 * min(attempt, 10))
                else:
                    raise Unavailable(
                        "the UE's track is being updated too often to apply this measurement",
                        {"attempts": self.MAX_ATTEMPTS},
                    )
            if count > self.max_tracks:
                await self._trim(count - self.max_tracks)
                count = self.max_tracks
        except RedisError as exc:
            raise Unavailable(
                "the track store (Redis) is unavailable", {"reason": type(exc).__name__}
            ) from None
        metrics.TRACKED_UES_SHARED.set(count)
        return result

    @property
    def _ttl_ms(self) -> int:
        return max(1, math.ceil(self.ttl_s * 1000))

    async def _trim(self, excess: int) -> None:
        """Drop the `excess` tracks that expire first (least recently updated)."""
        popped = await self._redis().zpopmin(self.INDEX, excess)
        names = [self.PREFIX + (m.decode() if isinstance(m, bytes) else str(m)) for m, _ in popped]
        if names:
            await self._redis().delete(*names)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _decode(raw: bytes | None, name: str) -> TrackState | None:
    """A stored track, or None (the track restarts) for a malformed record or one of
    another `STATE_VERSION` (e.g. written by a replica before an upgrade)."""
    if raw is None:
        return None
    try:
        return TrackState.from_dict(orjson.loads(raw))
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        log.warning("dropping track state %s: %s", name, exc)
        return None


def measurement(
    pred: Prediction, row: int, manifest: dict[str, Any], default_sigma: float
) -> tuple[np.ndarray, np.ndarray, str]:
    """Row `row` of a snapshot prediction as a measurement: (mean [2], cov [2, 2], noise)."""
    mean = pred.position[row].astype(np.float64)
    if pred.sigma is not None:
        return mean, np.diag(pred.sigma[row].astype(np.float64) ** 2), "predicted"
    sigma, noise = mse_sigma(manifest, default_sigma)
    return mean, np.eye(2) * sigma**2, noise


def mse_sigma(manifest: dict[str, Any], default: float) -> tuple[float, str]:
    """Isotropic 1-sigma (m) for a model without sigma, and where it came from."""
    me = (manifest.get("metrics") or {}).get("me")
    if isinstance(me, int | float) and math.isfinite(me) and me > 0:
        return float(me) * math.sqrt(2.0 / math.pi), "validation_me"
    return default, "setting"


class Tracker:
    """The service side of tracking: validates, keys tracks by (site, ue), answers JSON."""

    def __init__(self, store: TrackStore, config: TrackerConfig) -> None:
        self.store = store
        self.config = config

    async def update(
        self,
        site: str,
        site_label: str,
        ue: str,
        timestamp: float | None,
        mean: np.ndarray,
        cov: np.ndarray,
        noise: str,
        label_spacing_m: float | None = None,
        novelty: float | None = None,
    ) -> dict[str, Any]:
        """Apply one measurement (`mean` [2], `cov` [2, 2], metres) to the UE's track.

        `timestamp` None: the server's clock. `noise` names where `cov` came from
        (reported back). `label_spacing_m`: the site version's label spacing, which sets
        the error length (`TrackerConfig.for_site`; None: the setting). `novelty`: the
        fingerprint's out-of-site score (None: the site has no detector), averaged over
        the UE's track into the answer's `novelty` and `in_site`; a fingerprint the score
        puts out of site (`training.novelty.out_of_site`: its `cov` was widened to the
        site's spread) is taken as white noise alone (`training.tracking.step`).
        Returns the `track` object of the /locate answer.
        """
        config = self.config.for_site(label_spacing_m)
        received = time.time()
        foreign = novelty is not None and bool(out_of_site(novelty))
        if novelty is not None and not math.isfinite(novelty):
            novelty = None  # no usable score: the average restarts at the next one

        def transition(prior: TrackState | None) -> Step:
            t = timestamp
            if t is None:
                t = received if prior is None else max(received, prior.time + SERVER_TICK_S)
            try:
                return step(prior, t, mean, cov, config, foreign, novelty)
            except ValueError as exc:
                raise InvalidInput(
                    "the position estimate cannot be tracked", {"reason": str(exc)}
                ) from None

        result = await self.store.apply(f"{site}:{ue}", transition)
        if result.gated:
            metrics.TRACK_GATED.labels(site_label).inc()
        if result.stale:
            metrics.TRACK_STALE.labels(site_label).inc()
        if result.reset is not None:
            metrics.TRACK_RESETS.labels(site_label, result.reset).inc()
        answer = track_json(ue, result, noise)
        if answer["in_site"] is not None and not result.stale:
            metrics.TRACK_SCORED.labels(site_label).inc()
            if not answer["in_site"]:
                metrics.TRACK_OUT_OF_SITE.labels(site_label).inc()
        return answer


def track_json(ue: str, result: Step, noise: str) -> dict[str, Any]:
    """The `track` object of a /locate answer."""
    s = result.state
    x, y, vx, vy = s.mean[:4].tolist()
    return {
        "ue": ue,
        "time": s.time,
        "x": x,
        "y": y,
        "vx": vx,
        "vy": vy,
        "cov": s.cov[:2, :2].tolist(),
        "gated": result.gated,
        "stale": result.stale,
        "reset": result.reset,
        "age_s": s.age_s,
        "updates": s.updates,
        "measurement_noise": noise,
        "novelty": s.novelty,
        "in_site": None if s.novelty is None else not out_of_site(s.novelty),
        "noise_scale": s.scale,
    }


def make_tracker(settings: Settings) -> Tracker:
    """In-process tracks, or Redis-backed ones when `CSIPOS_REDIS_URL` is set."""
    config = TrackerConfig(
        accel_psd=settings.track_accel_psd,
        gate_probability=settings.track_gate_probability,
        max_gated=settings.track_max_gated,
        expiry_s=settings.track_expiry_s,
        noise_scale=settings.track_noise_scale,
        error_share=settings.track_error_share,
        error_length_m=settings.track_error_length_m,
        error_length_spacings=settings.track_error_length_spacings,
        novelty_time_s=settings.track_novelty_time_s,
        noise_time_s=settings.track_noise_time_s,
    )
    store: TrackStore
    if settings.redis_url:
        store = RedisTrackStore(settings.redis_url, settings.track_max_ues, config.expiry_s)
    else:
        store = MemoryTrackStore(settings.track_max_ues, config.expiry_s)
    return Tracker(store, config)
