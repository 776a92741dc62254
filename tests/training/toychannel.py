"""A geometric toy channel for training tests: position is learnable from the CSI.

Each base station sees a UE through a line-of-sight path: the phase ramps over
the subcarriers with the distance (delay) and over the antennas with the angle,
and the amplitude falls with distance. Small and fast; not physics.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.data.fingerprints import EnvironmentMeta, Fingerprints, write_environment
from training.data.schema import N_ANTENNAS, N_SUBCARRIERS, SUBCARRIER_SPACING_HZ

if TYPE_CHECKING:
    from training.data.site import SiteFingerprints
    from training.data.unlabelled import UnlabelledTracks

C = 299_792_458.0


def toy_fingerprints(
    n: int, bs: tuple[float, float], seed: int, size: tuple[float, float] = (20.0, 10.0)
) -> Fingerprints:
    """``n`` fingerprints of UEs uniform in a ``size`` room, seen from a BS at ``bs``."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform((0.0, 0.0), size, (n, 2)).astype(np.float32)
    return _channel(pos, bs, rng)


def _channel(pos: np.ndarray, bs: tuple[float, float], rng: np.random.Generator) -> Fingerprints:
    """The toy line-of-sight CSI of UEs at ``pos`` seen from ``bs``, noise drawn from ``rng``."""
    d = np.hypot(pos[:, 0] - bs[0], pos[:, 1] - bs[1]) + 1.0
    angle = np.arctan2(pos[:, 1] - bs[1], pos[:, 0] - bs[0])
    f = np.arange(N_SUBCARRIERS) * SUBCARRIER_SPACING_HZ
    ant = np.arange(N_ANTENNAS)
    phase = (
        -2 * np.pi * f[None, None, :] * d[:, None, None] / C
        - np.pi * ant[None, :, None] * np.sin(angle)[:, None, None]
    )
    h = np.exp(1j * phase) / d[:, None, None]
    h = h + 0.01 * (rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape)) / d.mean()
    csi = np.stack([h.real, h.imag], axis=-1).astype(np.float32)
    return Fingerprints(csi=csi, pos=pos.astype(np.float32))


TOY_ENVS: dict[str, tuple[float, float]] = {
    "industrial/bs0": (0.0, 0.0),
    "industrial/bs1": (20.0, 0.0),
    "industrial/bs2": (10.0, 10.0),
    "lab-los": (5.0, -2.0),
}


def write_toy_file(path: Path, n: int = 240, sizes: dict[str, int] | None = None) -> Path:
    """Write the `TOY_ENVS` environments (``n`` samples each unless ``sizes`` says) to ``path``."""
    for k, (env, bs) in enumerate(TOY_ENVS.items()):
        m = (sizes or {}).get(env, n)
        meta = EnvironmentMeta(
            bs_position=(bs[0], bs[1], 3.0), description="toy", source={"toy": 1}
        )
        write_environment(path, env, toy_fingerprints(m, bs, seed=k), meta)
    return path


TOY_SITE_BS: dict[str, tuple[float, float]] = {
    "bs0": (0.0, 0.0),
    "bs1": (8.0, 0.0),
    "bs2": (4.0, 6.0),
}


def toy_site(
    n: int,
    seed: int = 0,
    stations: dict[str, tuple[float, float]] | None = None,
    drop: float = 0.1,
    size: tuple[float, float] = (8.0, 6.0),
) -> SiteFingerprints:
    """A multi-BS site: ``n`` shared UE positions, each BS missing about ``drop`` of them."""
    from training.data.site import SiteFingerprints

    rng = np.random.default_rng(seed)
    pos = rng.uniform((0.0, 0.0), size, (n, 2)).astype(np.float32)
    parts: dict[str, Fingerprints] = {}
    metas: dict[str, EnvironmentMeta] = {}
    for k, (bs, where) in enumerate((stations or TOY_SITE_BS).items()):
        heard = np.flatnonzero(rng.random(n) >= drop)
        full = _toy_at(pos, where, seed * 100 + k)  # `toy_fingerprints`' channel, shared pos
        sub = full.subset(heard)
        sub.sample_id = heard.astype(np.int64)
        parts[bs] = sub
        metas[bs] = EnvironmentMeta(
            bs_position=(where[0], where[1], 3.0), description=f"toy {bs}", source={"toy": 1}
        )
    return SiteFingerprints.join(parts, metas)


def _toy_at(pos: np.ndarray, bs: tuple[float, float], seed: int) -> Fingerprints:
    return _channel(pos, bs, np.random.default_rng(seed))


def toy_tracks(
    tracks: int,
    steps: int,
    bs: tuple[float, float],
    seed: int,
    size: tuple[float, float] = (20.0, 10.0),
    speed: float = 1.0,
) -> tuple[UnlabelledTracks, np.ndarray]:
    """Unlabelled tracks in `toy_fingerprints`' room: ``tracks`` UEs walking at ``speed`` m/s
    (bouncing off the walls), sampled at 10 Hz for ``steps`` samples each; also the true
    positions [M, 2] (for checks only: unlabelled data has none)."""
    from training.data.unlabelled import UnlabelledTracks

    rng = np.random.default_rng(seed)
    dt = 0.1
    pos = np.empty((tracks, steps, 2))
    for k in range(tracks):
        p = rng.uniform((0.0, 0.0), size)
        heading = rng.uniform(0, 2 * np.pi)
        for t in range(steps):
            pos[k, t] = p
            heading += rng.normal(0.0, 0.2)
            p = p + speed * dt * np.array([np.cos(heading), np.sin(heading)])
            p = np.abs(p)  # reflect at the walls x=0, y=0 ...
            p = np.asarray(size) - np.abs(np.asarray(size) - p)  # ... and x=W, y=H
    flat = pos.reshape(-1, 2).astype(np.float32)
    fp = _channel(flat, bs, rng)
    time_s = np.tile(np.arange(steps) * dt, tracks).astype(np.float64)
    track = np.repeat(np.arange(tracks), steps).astype(np.int32)
    return UnlabelledTracks(fp.csi, time_s, track), flat


def toy_site_tracks(
    tracks: int,
    steps: int,
    seed: int,
    stations: dict[str, tuple[float, float]] | None = None,
    size: tuple[float, float] = (8.0, 6.0),
) -> dict[str, UnlabelledTracks]:
    """One recording of ``tracks`` UEs walking in `toy_site`'s room (`toy_tracks`), as
    each BS saw it: the same track ids and times at every BS, each BS's own channel."""
    from training.data.unlabelled import UnlabelledTracks

    walks, pos = toy_tracks(tracks, steps, (0.0, 0.0), seed, size)
    out = {}
    for k, (bs, where) in enumerate((stations or TOY_SITE_BS).items()):
        fp = _toy_at(pos, where, seed * 100 + k)
        out[bs] = UnlabelledTracks(fp.csi, walks.time, walks.track)
    return out
