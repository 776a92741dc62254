"""Tracking one UE over time: a 2-D constant-velocity Kalman filter fed with snapshot estimates.

Pure numpy, so the service (`service/tracking.py`, one filter step per `/locate` with a
`ue` id) and the offline evaluation (`track`, a whole trajectory at once) run the same
arithmetic.

Model. State ``[x, y, vx, vy]`` (metres, m/s) in the site's frame. Between two
measurements ``dt`` apart the velocity takes a random walk driven by white acceleration
noise of spectral density ``q`` (m^2/s^3, per axis), the "continuous white noise
acceleration" model (Bar-Shalom, Li, Kirubarajan, *Estimation with Applications to
Tracking and Navigation*, 2001, sec. 6.2.2):

    F = [[1, dt], [0, 1]],   Q = q [[dt^3/3, dt^2/2], [dt^2/2, dt]]   (per axis)

The velocity's standard deviation grows by ``sqrt(q dt)`` in ``dt``: with the default
``q = 0.3`` by 0.55 m/s in a second and 1.2 m/s in five, the scale of a person starting,
turning or stopping (1 m/s^2) or a forklift braking from 3 m/s in 2 s (1.5 m/s^2).
`TrackerConfig.accel_psd` documents the measured choice.

Measurement. A position estimate ``z`` [2] with its covariance ``R`` [2, 2]: the fused
covariance of a multi-BS site, ``diag(sigma_x^2, sigma_y^2)`` of a single-BS NLL model
(for MSE models see `service/tracking.py`).

Correlated measurement errors. A fingerprint's error is mostly a function of *where* the
UE is (the multipath it sees there), so along a track successive errors are alike for as
long as the UE stays within a few metres: a filter that takes them as independent
averages nothing out and grows over-confident. The error is split as ``e = b + w``:

- ``w`` white, covariance ``(1 - c) R``;
- ``b`` a first-order Gauss-Markov process in the state (``[x, y, vx, vy, bx, by]``),
  stationary covariance ``c R``, correlated over *distance*: over a step that moves the
  UE ``s dt`` metres, ``b <- rho b + n`` with ``rho = exp(-s dt / L)`` and
  ``cov(n) = (1 - rho^2) c R`` (Gelb, *Applied Optimal Estimation*, 1974, sec. 4.4,
  state augmentation for coloured noise). ``s`` is the expected speed
  ``sqrt(|v|^2 + tr P_vv)`` of the predicted state, so a UE that stands still keeps its
  error (repeating a measurement teaches nothing) and a fast one decorrelates it.

A measurement the site judged out of site (`step(..., foreign=True)`) is white noise
alone: its covariance, widened to the site's spread, neither sets nor feeds ``b``.

``c`` (`TrackerConfig.error_share`) and ``L`` (`error_length_m`) are an exponential
correlogram with a nugget, ``corr(d) = c exp(-d / L)``, the geostatistics model of a
spatial error field (`training.correlogram`). ``L`` scales with the site's label spacing
(`TrackerConfig.for_site`): a model's error persists over a few distances between the
labels it was trained on. ``c = 0`` is the plain filter with white noise.

Gating. The innovation's squared Mahalanobis distance ``d2 = y' S^-1 y`` is chi-square
with 2 degrees of freedom when the model holds; a measurement with ``d2`` above the
`gate_probability` quantile (99 %: 9.21) is *gated*: it does not update the state (the
state is only predicted to its time) but is reported. After `max_gated` consecutive
gated measurements the next one that fails the gate restarts the track from itself, so
a track that lost its UE (or was wrong) cannot lock out the truth forever.

Out of site over the track. A fingerprint's out-of-site score (`training.novelty`: above
1 is out of site) is noisy one request at a time: a site's own UE crossing an unusual spot
fires, a UE from a similar room passes now and then. The state also keeps the scores'
geometric mean with exponential weights over time, ``log n <- a log n + (1 - a) log s``
with ``a = exp(-dt / T)`` (`TrackerConfig.novelty_time_s`), so the track says whether the
*UE* is out of site. Geometric, because a site's own UE sees runs of moderately high
scores (an unusual spot, an antenna held high) that an arithmetic mean turns into
longer alarms; in the log the runs count for less than a room that is steadily foreign
(docs/results/site-trust/ue-average measures both). Off by default (T = 0: the latest
score alone, so the track judges as the snapshot does): with T = 10 s the false alarms
fell on each of the 19 held-out site-seeds that had any (of 21), but mean detection fell
on one of the six the pre-registered check used, so it is a setting, not yet the
default.

Adaptive noise scale. A site's covariance is calibrated on labelled positions, but along
trajectories the fused errors ran 1.08-1.25x larger at the same predicted covariance
(docs/results/site-trust/calibration), and the track inherited the under-coverage. With
`TrackerConfig.noise_time_s` T > 0 the state keeps a scale ``lambda`` (>= 1, at most
`noise_scale_max`) that multiplies every measurement covariance, learnt from the
track's own innovations: with the scale right, ``d2`` averages 2 (chi-square, 2
degrees of freedom), and each measurement's ``lambda d2 / 2`` estimates it, so
``lambda <- a lambda + (1 - a) lambda min(d2, gate) / 2`` with ``a = exp(-dt / T)``
(covariance matching, Mehra 1972, as an exponentially weighted average over time). It
only inflates: the validation calibration is the floor. A new track starts at 1. Off by
default: on three held-out sites it took the hall (errors of metres) from 36 / 78 % to
45 / 85 % inside 1 / 2 sigma at 0.98x the error and left the other two as they were
(their innovations match their covariance), but the hall's 1 sigma ended 0.6 points
over the band its pre-registered rule allowed (docs/results/site-trust/noise-scale).

Time. A measurement at or before the track's time (a repeat or out of order) is
*stale*: it is not applied and the state is returned unchanged. A measurement more than
`expiry_s` after the track's time restarts the track (the old velocity means nothing).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
Reset = Literal["new", "expired", "gated"]

STATE_VERSION = 2
"""Version of `TrackState.to_dict` records: 2 adds the error state (6-D). Records of
another version are refused by `from_dict` (a store drops them: the track restarts)."""

_DIM = 6
_H = np.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
"""A measurement sees the position plus the correlated error."""


def chi2_2dof_quantile(probability: float) -> float:
    """The chi-square quantile with 2 degrees of freedom: ``-2 ln(1 - p)`` (exact)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability: expected strictly between 0 and 1, got {probability}")
    return -2.0 * math.log1p(-probability)


@dataclass(frozen=True)
class TrackerConfig:
    """Settings of the filter (the service maps `CSIPOS_TRACK_*` onto them)."""

    accel_psd: float = 0.3
    """Acceleration noise spectral density q (m^2/s^3, per axis). 0.3 gave the lowest
    error and calibrated 1/2-sigma coverage on simulated walking and forklift
    trajectories with 0.3-2 m measurement noise (bench/tracking.md has the sweep)."""
    gate_probability: float = 0.99
    """Measurements outside this probability mass of the predicted distribution are gated."""
    max_gated: int = 3
    """Consecutive gated measurements tolerated; the next gated one restarts the track."""
    expiry_s: float = 10.0
    """A measurement this long after the track's last one restarts the track."""
    init_speed_sigma: float = 1.5
    """Prior standard deviation (m/s, per axis) of the velocity of a new track."""
    noise_scale: float = 1.0
    """Multiplies every measurement covariance (1: the estimate's own covariance)."""
    error_share: float = 0.9
    """c: share of the measurement error variance that is spatially correlated (in [0, 1);
    0 is the plain white-noise filter). Fused errors along held-out trajectories of six
    simulated sites correlate with c 0.71-0.99 (0.99 at the three calibration sites); 0.9
    tracked slightly more accurately than 0.95 there and kept the tracked coverage at
    the fused estimate's (docs/results/site-trust/error-length). Labelled positions give
    lower values (0.39-0.91), likely because each draws its own antenna height while a
    track keeps one: the default before, 0.55, came from them and left the tracker
    over-confident."""
    error_length_m: float = 1.8
    """L: distance (m) over which the correlated error decays by 1/e, for a site whose
    label spacing is unknown (versions adapted before it was stored). The mean of two
    held-out sites' correlograms on labelled positions (2.47 m and 1.19 m)."""
    error_length_spacings: float = 3.0
    """L in units of the site's label spacing (`for_site`; 0: always `error_length_m`).
    A model interpolates between its labels, so its error persists over a few label
    spacings (2.5-4.4 at four of six sites, `training.correlogram`); 3 tracked more
    accurately than a fixed 1.8 m or an L fitted on the validation split."""

    noise_time_s: float = 0.0
    """T: time constant (s) of the adaptive noise scale (module docstring; 0: off, the
    measurement covariances as given)."""
    noise_scale_max: float = 4.0
    """Largest adaptive noise scale (variance; 4 doubles sigma)."""
    novelty_time_s: float = 0.0
    """T: time constant (s) of the UE's averaged out-of-site score (module docstring; 0:
    the latest fingerprint's score alone, the default). 10 s is the measured choice
    (docs/results/site-trust/ue-average)."""

    def for_site(self, label_spacing_m: float | None) -> TrackerConfig:
        """These settings at a site whose training labels lie ``label_spacing_m`` apart
        (`training.correlogram.label_spacing`, the manifest's ``metrics.label_spacing_m``):
        ``L = error_length_spacings x spacing``; unchanged without a spacing."""
        if label_spacing_m is None or self.error_length_spacings == 0:
            return self
        if not math.isfinite(label_spacing_m) or label_spacing_m <= 0:
            raise ValueError(f"label spacing: expected a positive number, got {label_spacing_m}")
        length = self.error_length_spacings * label_spacing_m
        return dataclasses.replace(self, error_length_m=length)

    def __post_init__(self) -> None:
        for name in ("accel_psd", "expiry_s", "init_speed_sigma", "noise_scale", "error_length_m"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}: expected a positive number, got {value}")
        for name in ("error_length_spacings", "novelty_time_s", "noise_time_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value}")
        if not (math.isfinite(self.noise_scale_max) and self.noise_scale_max >= 1.0):
            raise ValueError(f"noise_scale_max: expected a number >= 1, got {self.noise_scale_max}")
        if not 0.0 <= self.error_share < 1.0:
            raise ValueError(f"error_share: expected in [0, 1), got {self.error_share}")
        chi2_2dof_quantile(self.gate_probability)
        if self.max_gated < 0:
            raise ValueError(f"max_gated: expected >= 0, got {self.max_gated}")

    @property
    def gate(self) -> float:
        """The gate on the squared Mahalanobis distance."""
        return chi2_2dof_quantile(self.gate_probability)


@dataclass(frozen=True)
class TrackState:
    """One UE's filter state at `time` (seconds on the caller's clock)."""

    mean: Array
    """[6]: x, y (m), vx, vy (m/s), bx, by (m: the correlated measurement error)."""
    cov: Array
    """[6, 6] covariance of `mean`."""
    time: float
    started: float
    """Time of the measurement that (re)started the track."""
    gated_run: int = 0
    """Consecutive gated measurements up to `time`."""
    updates: int = 1
    """Measurements applied since the track (re)started."""
    novelty: float | None = None
    """The UE's out-of-site score averaged over time (module docstring); None when its
    measurements carry no score (a site without detectors)."""
    scale: float = 1.0
    """The adaptive noise scale ``lambda`` (module docstring; 1 when it is off)."""

    @property
    def age_s(self) -> float:
        """Seconds since the track (re)started."""
        return self.time - self.started

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (the service keeps states in Redis as JSON)."""
        return {
            "version": STATE_VERSION,
            "mean": self.mean.tolist(),
            "cov": self.cov.tolist(),
            "time": self.time,
            "started": self.started,
            "gated_run": self.gated_run,
            "updates": self.updates,
            "novelty": self.novelty,
            "scale": self.scale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrackState:
        """The inverse of `to_dict`; raises ValueError on a malformed record or another
        version's (e.g. a 4-D state of the filter before the error state)."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            got = data.get("version") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"track state version {got!r}, expected {STATE_VERSION}")
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            cov = np.asarray(data["cov"], dtype=np.float64)
            state = cls(
                mean=mean,
                cov=cov,
                time=float(data["time"]),
                started=float(data["started"]),
                gated_run=int(data["gated_run"]),
                updates=int(data["updates"]),
                novelty=_optional_score(data.get("novelty")),
                scale=float(data.get("scale", 1.0)),  # records before the scale: 1
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed track state: {exc}") from exc
        if mean.shape != (_DIM,) or cov.shape != (_DIM, _DIM):
            raise ValueError(f"malformed track state: shapes {mean.shape} and {cov.shape}")
        if not (math.isfinite(state.scale) and state.scale >= 1.0):
            raise ValueError(f"malformed track state: scale {state.scale}, expected >= 1")
        return state


def _optional_score(value: Any) -> float | None:
    """An out-of-site score as a float: None stays None (no detector; records written
    before the average existed), else a finite number >= 0 or ValueError."""
    if value is None:
        return None
    score = float(value)
    if not math.isfinite(score) or score < 0:
        raise ValueError(f"novelty: expected a finite number >= 0, got {value!r}")
    return score


NOVELTY_FLOOR = 1e-3
"""Scores below count as this in the geometric average (a 0 would pin it at 0)."""


def average_novelty(
    prior: float | None, dt: float, score: float | None, time_s: float
) -> float | None:
    """The UE's averaged out-of-site score after a measurement scored ``score``, ``dt``
    seconds after the one that left ``prior``: ``exp(a log prior + (1 - a) log score)``
    with ``a = exp(-dt / time_s)`` (both floored at `NOVELTY_FLOOR` inside the log);
    ``score`` alone when there is no prior (or ``time_s`` is 0), None without a score."""
    score = _optional_score(score)
    if score is None:
        return None
    if prior is None or time_s == 0:
        return score
    a = math.exp(-max(dt, 0.0) / time_s)
    log_prior = math.log(max(prior, NOVELTY_FLOOR))
    log_score = math.log(max(score, NOVELTY_FLOOR))
    return math.exp(a * log_prior + (1.0 - a) * log_score)


@dataclass(frozen=True)
class Step:
    """What one measurement did to a track."""

    state: TrackState
    gated: bool = False
    """The measurement failed the gate and was not applied."""
    stale: bool = False
    """The measurement was at or before the track's time and was not applied."""
    reset: Reset | None = None
    """Why the track (re)started at this measurement, if it did."""
    distance2: float | None = None
    """Squared Mahalanobis distance of the innovation (None when the track started)."""
    predicted: TrackState | None = None
    """The state predicted to this measurement's time before it was applied, and"""
    transition: Array | None = None
    """the transition used: what a smoother needs (None when the track (re)started or
    the measurement was stale)."""


def check_measurement(z: npt.ArrayLike, r: npt.ArrayLike) -> tuple[Array, Array]:
    """`z` as a finite [2] and `r` as a symmetric positive definite [2, 2] (float64)."""
    zz = np.asarray(z, dtype=np.float64)
    rr = np.asarray(r, dtype=np.float64)
    if zz.shape != (2,) or not np.isfinite(zz).all():
        raise ValueError(f"measurement: expected 2 finite numbers, got shape {zz.shape}")
    if rr.shape != (2, 2) or not np.isfinite(rr).all():
        raise ValueError(f"measurement covariance: expected a finite [2, 2], got {rr.shape}")
    rr = 0.5 * (rr + rr.T)
    if rr[0, 0] <= 0 or np.linalg.det(rr) <= 0:
        raise ValueError("measurement covariance: expected positive definite")
    return zz, rr


def transition(dt: float, rho: float = 0.0) -> Array:
    """The state transition over `dt` seconds: constant velocity, error decays by `rho`."""
    f = np.eye(_DIM)
    f[0, 2] = f[1, 3] = dt
    f[4, 4] = f[5, 5] = rho
    return f


def process_noise(dt: float, accel_psd: float) -> Array:
    """Q over `dt` for white acceleration noise of density `accel_psd` on each axis."""
    a, b, c = dt**3 / 3.0, dt**2 / 2.0, dt
    q = np.zeros((_DIM, _DIM))
    for i in (0, 1):
        q[i, i], q[i, i + 2], q[i + 2, i], q[i + 2, i + 2] = a, b, b, c
    return accel_psd * q


def error_decay(state: TrackState, dt: float, config: TrackerConfig) -> float:
    """rho: the correlated error's correlation over the distance the UE is expected to
    move in `dt` at the state's expected speed ``sqrt(|v|^2 + tr P_vv)``."""
    v = state.mean[2:4]
    speed = math.sqrt(float(v @ v) + float(state.cov[2, 2] + state.cov[3, 3]))
    return math.exp(-speed * dt / config.error_length_m)


def start(
    time: float, z: Array, r: Array, config: TrackerConfig, foreign: bool = False
) -> TrackState:
    """A new track at measurement `z` (covariance `r`), velocity unknown around zero.

    The position is ``z - b - w``: covariance `r`, and the error ``b`` (prior ``c r``)
    anti-correlated with it by ``-c r``: the first measurement fixes their sum only. A
    `foreign` measurement (see `step`) says nothing of the error field: ``b`` starts at 0,
    its covariance to be built up by the measurements that follow.
    """
    c = 0.0 if foreign else config.error_share
    cov = np.zeros((_DIM, _DIM))
    cov[:2, :2] = r
    cov[2, 2] = cov[3, 3] = config.init_speed_sigma**2
    cov[4:, 4:] = c * r
    cov[:2, 4:] = cov[4:, :2] = -c * r
    return TrackState(np.array([z[0], z[1], 0.0, 0.0, 0.0, 0.0]), cov, time, time)


def predict(
    state: TrackState, time: float, config: TrackerConfig, r: Array | None = None
) -> TrackState:
    """The state moved forward to `time` (>= state.time) without a measurement.

    `r` (the coming measurement's covariance) sets the correlated error's stationary
    covariance ``c r``; without one the error only decays.
    """
    return _predict(state, time, config, r)[0]


def _predict(
    state: TrackState, time: float, config: TrackerConfig, r: Array | None
) -> tuple[TrackState, Array]:
    """`predict` and the transition matrix it used (the smoother runs it backwards)."""
    dt = time - state.time
    rho = error_decay(state, dt, config)
    f = transition(dt, rho)
    q = process_noise(dt, config.accel_psd)
    if r is not None:
        q[4:, 4:] = (1.0 - rho * rho) * config.error_share * r
    cov = f @ state.cov @ f.T + q
    predicted = TrackState(
        f @ state.mean,
        0.5 * (cov + cov.T),
        time,
        state.started,
        state.gated_run,
        state.updates,
        scale=state.scale,
    )
    return predicted, f


def innovation(state: TrackState, z: Array, r: Array) -> tuple[Array, Array, float]:
    """(y, S, d2): residual, its covariance and its squared Mahalanobis distance; `r` is
    the white part of the measurement noise."""
    y = z - _H @ state.mean
    s = _H @ state.cov @ _H.T + r
    d2 = float(y @ np.linalg.solve(s, y))
    return y, s, d2


def update(state: TrackState, z: Array, r: Array) -> TrackState:
    """The Kalman update with measurement `z` (white noise covariance `r`), Joseph form
    (stays PSD)."""
    y, s, _ = innovation(state, z, r)
    k = np.linalg.solve(s, _H @ state.cov).T  # P H' S^-1 (S, P symmetric)
    a = np.eye(_DIM) - k @ _H
    cov = a @ state.cov @ a.T + k @ r @ k.T
    return TrackState(
        state.mean + k @ y,
        0.5 * (cov + cov.T),
        state.time,
        state.started,
        0,
        state.updates + 1,
        scale=state.scale,
    )


def step(
    state: TrackState | None,
    time: float,
    z: npt.ArrayLike,
    r: npt.ArrayLike,
    config: TrackerConfig,
    foreign: bool = False,
    novelty: float | None = None,
) -> Step:
    """One measurement `z` with covariance `r` at `time` applied to `state` (None: no track),
    and its out-of-site score `novelty` (None: none) to the UE's average (`average_novelty`;
    a stale measurement changes neither).

    `foreign`: the site judged the fingerprint out of site and widened `r` to its spread
    (`training.novelty`). Such a measurement is taken as white noise alone: its ``r``
    neither sets the correlated error's covariance (``c r``) nor is split into it. With
    the widened ``r`` in the error state, that state stayed wide for metres of walking
    after one false alarm and the next good measurements moved the error, not the UE:
    on the held-out lab the track fell behind the snapshots it filters (1.00x their ME
    at the median of 5 seeds, 0.94x as foreign; docs/results/site-trust, "Tracking
    through a false alarm").
    """
    result = _filter_step(state, time, z, r, config, foreign)
    if result.stale:
        return result
    prior, dt = (None, 0.0) if state is None else (state.novelty, time - state.time)
    average = average_novelty(prior, dt, novelty, config.novelty_time_s)
    return dataclasses.replace(result, state=dataclasses.replace(result.state, novelty=average))


def _filter_step(
    state: TrackState | None,
    time: float,
    z: npt.ArrayLike,
    r: npt.ArrayLike,
    config: TrackerConfig,
    foreign: bool,
) -> Step:
    """`step` without the out-of-site average (the filter alone)."""
    if not math.isfinite(time):
        raise ValueError(f"time: expected a finite number, got {time}")
    zz, rr = check_measurement(z, r)
    rr = rr * config.noise_scale
    if state is None:
        return Step(start(time, zz, rr, config, foreign), reset="new")
    if time <= state.time:
        return Step(state, stale=True)
    if time - state.time > config.expiry_s:
        return Step(start(time, zz, rr, config, foreign), reset="expired")
    served = rr  # what a restart starts from: a new track's scale is 1
    rr = rr * state.scale
    predicted, f = _predict(state, time, config, None if foreign else rr)
    white = rr if foreign else (1.0 - config.error_share) * rr
    _, _, d2 = innovation(predicted, zz, white)
    scale = state.scale if foreign else adapt_scale(state.scale, time - state.time, d2, config)
    if d2 > config.gate:
        if predicted.gated_run >= config.max_gated:
            restart = start(time, zz, served, config, foreign)
            return Step(restart, gated=True, reset="gated", distance2=d2)
        held = TrackState(
            predicted.mean,
            predicted.cov,
            time,
            predicted.started,
            predicted.gated_run + 1,
            predicted.updates,
            scale=scale,
        )
        return Step(held, gated=True, distance2=d2, predicted=predicted, transition=f)
    updated = dataclasses.replace(update(predicted, zz, white), scale=scale)
    return Step(updated, distance2=d2, predicted=predicted, transition=f)


def adapt_scale(scale: float, dt: float, d2: float, config: TrackerConfig) -> float:
    """The adaptive noise scale after an innovation of squared Mahalanobis distance ``d2``
    (capped at the gate) ``dt`` seconds after the last (module docstring); ``scale``
    unchanged when the scale is off."""
    if config.noise_time_s == 0:
        return scale
    a = math.exp(-max(dt, 0.0) / config.noise_time_s)
    estimate = scale * min(d2, config.gate) / 2.0
    return min(max(a * scale + (1.0 - a) * estimate, 1.0), config.noise_scale_max)


@dataclass
class TrackResult:
    """A whole trajectory filtered (`track`), one row per measurement."""

    position: Array  # [N, 2]
    cov: Array  # [N, 2, 2]
    velocity: Array  # [N, 2]
    gated: npt.NDArray[np.bool_]  # [N]
    stale: npt.NDArray[np.bool_]  # [N]
    reset: list[Reset | None] = field(default_factory=list)
    novelty: Array | None = None
    """[N] the UE's averaged out-of-site score after each measurement (`step`); None
    without scores."""
    scale: Array | None = None
    """[N] the adaptive noise scale after each measurement (all 1 when it is off)."""


def _run(
    times: npt.ArrayLike,
    means: npt.ArrayLike,
    covs: npt.ArrayLike,
    config: TrackerConfig,
    foreign: npt.ArrayLike | None = None,
    novelty: npt.ArrayLike | None = None,
) -> tuple[Array, list[Step]]:
    """The times and every `step` of one UE's measurements, in the given order."""
    t = np.asarray(times, dtype=np.float64)
    m = np.asarray(means, dtype=np.float64)
    c = np.asarray(covs, dtype=np.float64)
    n = t.shape[0] if t.ndim == 1 else -1
    if n < 0 or m.shape != (n, 2) or c.shape != (n, 2, 2):
        raise ValueError(
            f"expected times [N], means [N, 2], covs [N, 2, 2]; got {t.shape}, {m.shape}, {c.shape}"
        )
    far = np.zeros(n, dtype=bool) if foreign is None else np.asarray(foreign)
    if far.shape != (n,) or far.dtype != np.bool_:
        raise ValueError(f"foreign: expected [N] booleans, N = {n}; got {far.dtype} {far.shape}")
    scores = None if novelty is None else np.asarray(novelty, dtype=np.float64)
    if scores is not None and scores.shape != (n,):
        raise ValueError(f"novelty: expected [N] scores, N = {n}; got shape {scores.shape}")
    steps: list[Step] = []
    state: TrackState | None = None
    for i in range(n):
        score = None if scores is None else float(scores[i])
        result = step(state, float(t[i]), m[i], c[i], config, bool(far[i]), score)
        state = result.state
        steps.append(result)
    return t, steps


def _result(steps: list[Step], states: list[tuple[Array, Array]]) -> TrackResult:
    """Rows of (mean [6], cov [6, 6]) states with the steps' flags."""
    n = len(steps)
    out = TrackResult(
        position=np.empty((n, 2)),
        cov=np.empty((n, 2, 2)),
        velocity=np.empty((n, 2)),
        gated=np.array([s.gated for s in steps], dtype=bool),
        stale=np.array([s.stale for s in steps], dtype=bool),
        reset=[s.reset for s in steps],
        scale=np.array([s.state.scale for s in steps], dtype=np.float64),
    )
    averages = [s.state.novelty for s in steps]
    if all(a is not None for a in averages):
        out.novelty = np.array(averages, dtype=np.float64)
    for i, (mean, cov) in enumerate(states):
        out.position[i] = mean[:2]
        out.velocity[i] = mean[2:4]
        out.cov[i] = cov[:2, :2]
    return out


def track(
    times: npt.ArrayLike,
    means: npt.ArrayLike,
    covs: npt.ArrayLike,
    config: TrackerConfig | None = None,
    foreign: npt.ArrayLike | None = None,
    novelty: npt.ArrayLike | None = None,
) -> TrackResult:
    """Filter one UE's measurements in the given order (times [N], means [N, 2], covs
    [N, 2, 2], `foreign` [N] bool and `novelty` [N] scores as in `step`): row i is the
    track after measurement i, as the service would answer."""
    _, steps = _run(times, means, covs, config or TrackerConfig(), foreign, novelty)
    return _result(steps, [(s.state.mean, s.state.cov) for s in steps])


def smooth(
    times: npt.ArrayLike,
    means: npt.ArrayLike,
    covs: npt.ArrayLike,
    lag_s: float,
    config: TrackerConfig | None = None,
    foreign: npt.ArrayLike | None = None,
) -> TrackResult:
    """Fixed-lag smoothing of one UE's track: row i estimated from the measurements up
    to ``times[i] + lag_s`` (``math.inf``: the whole track), for clients that can wait.

    The filter of `track` runs forward, then the Rauch-Tung-Striebel recursion
    (Bar-Shalom et al. 2001, sec. 8.6) runs back from the last measurement within the
    lag, never across a restart of the track: ``C = P_k F' P_{k+1|k}^-1``,
    ``x_k <- x_k + C (x_{k+1} - x_{k+1|k})``, ``P_k <- P_k + C (P_{k+1} - P_{k+1|k}) C'``.
    A filter cannot average a persistent fingerprint error over samples it has not seen
    yet; a smoother sees both sides of each sample (docs/results/site-trust). Lag 0 is
    `track`. A stale measurement's row repeats the row it left unchanged.
    """
    if not (lag_s >= 0):  # also refuses NaN
        raise ValueError(f"lag_s: expected >= 0 seconds, got {lag_s}")
    t, steps = _run(times, means, covs, config or TrackerConfig(), foreign)
    applied = [i for i, s in enumerate(steps) if not s.stale]
    states: list[tuple[Array, Array]] = [(s.state.mean, s.state.cov) for s in steps]
    # the applied row after which the track restarts (or ends): smoothing stops there
    seg_end: dict[int, int] = {}
    first = 0
    for a, i in enumerate(applied):
        if steps[i].reset is not None:
            first = a
        last = a + 1 < len(applied) and steps[applied[a + 1]].reset is not None
        if a + 1 == len(applied) or last:
            for b in range(first, a + 1):
                seg_end[b] = a
    cache: dict[int, dict[int, tuple[Array, Array]]] = {}
    for a, i in enumerate(applied):
        hi = a
        while hi < seg_end[a] and t[applied[hi + 1]] <= t[i] + lag_s:
            hi += 1
        if hi == a:
            continue
        done = cache.setdefault(hi, {})
        if a not in done:
            k = min(done, default=hi)
            x, p = done.get(k) or (steps[applied[hi]].state.mean, steps[applied[hi]].state.cov)
            while k > a:
                nxt, cur = steps[applied[k]], steps[applied[k - 1]].state
                assert nxt.predicted is not None and nxt.transition is not None
                pp = nxt.predicted.cov
                gain = cur.cov @ nxt.transition.T @ np.linalg.pinv(pp, hermitian=True)
                x = cur.mean + gain @ (x - nxt.predicted.mean)
                p = cur.cov + gain @ (p - pp) @ gain.T
                p = 0.5 * (p + p.T)
                k -= 1
                done[k] = (x, p)
        states[i] = done[a]
        cache = {hi: done}  # rows come in order: older horizons are never needed again
    for i, s in enumerate(steps):
        if s.stale and i > 0:
            states[i] = states[i - 1]
    return _result(steps, states)
