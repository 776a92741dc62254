"""Seeded UE trajectories through a scene's UE area: walking and forklift-like motion.

Pure geometry (no ray tracing): `generate(..., trajectories=TrajectoryConfig(...))`
traces the positions afterwards, so the fingerprints carry `time` and `track`.

A trajectory is a chain of straight *legs* between waypoints. Each leg has a cruise
speed drawn from its motion profile (walking 0.5-1.6 m/s, forklift 1-3 m/s); the UE
accelerates and brakes with the profile's acceleration, and at the end of a leg
either stops for a while (then may turn any way) or goes on at speed into a gentle
turn (at most `corner_deg`). Every leg is checked every 10 cm against the scene's
`ue_allowed` (UE area polygons, walls and obstacles with the clearance), so the UE
never leaves the area or cuts through an obstacle. Positions are sampled at
`rate_hz` (10 Hz); all tracks start at time 0 (several UEs moving at once).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.sim.positions import sample_ue_positions
from training.sim.scene import SceneSpec

CHECK_STEP_M = 0.1
"""Spacing of the points probed when looking for how far a leg can go."""
FINE_STEP_M = 0.02
"""Spacing of the points a chosen leg is then checked at (a corner of an obstacle or of
the area can poke between two points 10 cm apart)."""


@dataclass(frozen=True)
class MotionProfile:
    """How one kind of UE moves."""

    name: str
    speed: tuple[float, float]
    """Cruise speed range of a leg (m/s)."""
    accel: float
    """Acceleration and braking (m/s^2)."""
    leg: tuple[float, float]
    """Leg length range (m); shorter where the area ends."""
    stop_probability: float
    """Chance that a leg ends in a stop."""
    stop_s: tuple[float, float]
    """How long a stop lasts (s)."""
    corner_deg: float
    """Largest turn taken without stopping (degrees)."""


MOTIONS: dict[str, MotionProfile] = {
    "walk": MotionProfile("walk", (0.5, 1.6), 1.0, (2.0, 10.0), 0.3, (1.0, 4.0), 60.0),
    "forklift": MotionProfile("forklift", (1.0, 3.0), 1.5, (3.0, 20.0), 0.25, (2.0, 6.0), 45.0),
}


@dataclass(frozen=True)
class TrajectoryConfig:
    """What `generate` samples instead of independent positions."""

    count: int
    """Trajectories (tracks)."""
    duration_s: float
    """Length of each trajectory (s)."""
    rate_hz: float = 10.0
    motion: str = "mixed"
    """`walk`, `forklift`, or `mixed` (each track draws one)."""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"trajectories: expected at least 1, got {self.count}")
        if not math.isfinite(self.duration_s) or self.duration_s <= 0:
            raise ValueError(
                f"duration: expected a positive number of seconds, got {self.duration_s}"
            )
        if not math.isfinite(self.rate_hz) or not 0 < self.rate_hz <= 1000:
            raise ValueError(f"rate: expected 0 < rate_hz <= 1000, got {self.rate_hz}")
        if self.motion != "mixed" and self.motion not in MOTIONS:
            raise ValueError(
                f"motion: expected mixed or one of {', '.join(MOTIONS)}, got {self.motion!r}"
            )

    @property
    def samples_per_track(self) -> int:
        return round(self.duration_s * self.rate_hz)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Trajectories:
    """Samples of all tracks, track after track, in time order within each."""

    pos: npt.NDArray[np.float64]
    """[M, 3] UE positions (m)."""
    time: npt.NDArray[np.float64]
    """[M] seconds since the start (every track starts at 0)."""
    track: npt.NDArray[np.int32]
    """[M] track id, 0..count-1."""
    motion: list[str]
    """Motion profile of each track."""

    def __len__(self) -> int:
        return int(self.time.shape[0])


def segment_free(
    spec: SceneSpec, a: npt.ArrayLike, b: npt.ArrayLike, z: float, step_m: float = FINE_STEP_M
) -> bool:
    """Whether every point of the segment a-b (checked every `step_m`) is an allowed UE spot."""
    pa, pb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    steps = max(1, math.ceil(float(np.linalg.norm(pb - pa)) / step_m))
    return all(
        spec.ue_allowed(float(x), float(y), z)
        for x, y in pa + np.linspace(0.0, 1.0, steps + 1)[:, None] * (pb - pa)
    )


def _free_length(
    spec: SceneSpec, p: npt.NDArray[np.float64], heading: float, length: float, z: float
) -> float:
    """How far (up to `length`, in 10 cm steps) the UE can go from `p` along `heading`."""
    d = np.array([math.cos(heading), math.sin(heading)])
    free = 0.0
    for k in range(1, int(length / CHECK_STEP_M) + 1):
        q = p + d * (k * CHECK_STEP_M)
        if not spec.ue_allowed(float(q[0]), float(q[1]), z):
            break
        free = k * CHECK_STEP_M
    return max(0.0, free - CHECK_STEP_M)  # keep one step away from what blocked


def _next_leg(
    spec: SceneSpec,
    p: npt.NDArray[np.float64],
    heading: float | None,
    max_turn_deg: float,
    profile: MotionProfile,
    z: float,
    rng: np.random.Generator,
    tries: int = 64,
) -> tuple[npt.NDArray[np.float64], float] | None:
    """The next waypoint and heading, turning at most `max_turn_deg` (any way after
    32 misses); None if no leg was found in `tries`."""
    shortest = min(1.0, profile.leg[0])
    for attempt in range(tries):
        if heading is None or attempt >= 32:
            h = float(rng.uniform(-math.pi, math.pi))
        else:
            h = heading + math.radians(float(rng.uniform(-max_turn_deg, max_turn_deg)))
        want = float(rng.uniform(*profile.leg))
        length = _free_length(spec, p, h, want, z)
        d = np.array([math.cos(h), math.sin(h)])
        while length >= shortest and not segment_free(spec, p, p + length * d, z):
            length -= 5 * CHECK_STEP_M
        if length >= shortest:
            return p + length * d, h
    return None


def _one_track(
    spec: SceneSpec,
    start: npt.NDArray[np.float64],
    z: float,
    n: int,
    dt: float,
    profile: MotionProfile,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """`n` positions [n, 2], `dt` apart, of one UE moving from `start`.

    Each leg is planned with the one after it: a leg whose end offers no gentle turn
    onwards ends in a stop, so the UE brakes in time instead of turning sharply at speed.
    """
    out = np.empty((n, 2))
    p = start.copy()
    v = 0.0
    dwell = float(rng.uniform(0.0, profile.stop_s[1]))  # tracks start at staggered moments
    leg: tuple[npt.NDArray[np.float64], float] | None = None
    following: tuple[npt.NDArray[np.float64], float] | None = None
    cruise, stop_at_end = 0.0, True

    def begin(new: tuple[npt.NDArray[np.float64], float] | None) -> None:
        nonlocal leg, following, cruise, stop_at_end
        leg, following = new, None
        cruise = float(rng.uniform(*profile.speed))
        stop_at_end = bool(rng.random() < profile.stop_probability)
        if new is not None and not stop_at_end:
            following = _next_leg(spec, new[0], new[1], profile.corner_deg, profile, z, rng, 32)
            stop_at_end = following is None

    begin(_next_leg(spec, p, None, 180.0, profile, z, rng))
    for k in range(n):
        out[k] = p
        if leg is None:  # boxed in (a pocket smaller than a leg): stand still
            continue
        if dwell > 0:
            dwell -= dt
            continue
        remaining = float(np.linalg.norm(leg[0] - p))
        target = cruise
        if stop_at_end:  # fastest speed that can still brake to a stop at the waypoint
            a = profile.accel
            target = min(target, a * (math.sqrt(dt * dt / 4 + 2 * remaining / a) - dt / 2))
        if target >= v:
            v = min(v + profile.accel * dt, target)
        else:
            v = max(target, v - profile.accel * dt)
        travel = v * dt
        while travel > 0 and leg is not None:
            w, heading = leg
            remaining = float(np.linalg.norm(w - p))
            if travel < remaining:
                p = p + (w - p) * (travel / remaining)
                break
            p, travel = w.copy(), travel - remaining
            if stop_at_end:
                v, travel = 0.0, 0.0
                dwell = float(rng.uniform(*profile.stop_s))
                begin(_next_leg(spec, p, heading, 180.0, profile, z, rng))
            else:
                begin(following)
    return out


def sample_trajectories(
    spec: SceneSpec,
    config: TrajectoryConfig,
    rng: np.random.Generator,
    *,
    height_jitter_std_m: float = 0.0,
) -> Trajectories:
    """`config.count` seeded trajectories through `spec`'s UE area (see the module doc).

    Each track keeps one antenna height, drawn like `sample_ue_positions` draws it.
    """
    n = config.samples_per_track
    if n < 1:
        raise ValueError(f"duration x rate gives {n} samples per track; expected at least 1")
    dt = 1.0 / config.rate_hz
    names = sorted(MOTIONS)
    pos, motions = [], []
    for _ in range(config.count):
        name = names[int(rng.integers(len(names)))] if config.motion == "mixed" else config.motion
        start = sample_ue_positions(spec, 1, rng, height_jitter_std_m=height_jitter_std_m)[0]
        xy = _one_track(spec, start[:2].copy(), float(start[2]), n, dt, MOTIONS[name], rng)
        pos.append(np.column_stack([xy, np.full(n, start[2])]))
        motions.append(name)
    return Trajectories(
        pos=np.concatenate(pos),
        time=np.tile(np.arange(n) * dt, config.count),
        track=np.repeat(np.arange(config.count, dtype=np.int32), n),
        motion=motions,
    )
