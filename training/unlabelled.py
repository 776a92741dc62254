"""The track-consistency term: unlabelled samples a UE took in quick succession are close.

A UE moves at most ``v_max * dt`` between two samples ``dt`` apart, so for consecutive
samples a, b of one track (0 < dt <= ``max_gap_s``) the model's positions should be
within ``bound = v_max * dt + slack`` of each other. The term penalises only what
exceeds the bound, in the labelled loss's normalised units (`training.losses`):

    hinge(a, b) = (max(0, |f(a) - f(b)| - bound) / scale)^2

averaged over a batch of pairs, with ``scale`` the mean of the head's ``pos_scale``
(metres per normalised unit), so one weight fits a 10 m room and a 100 m hall.
Nothing here says *where* a sample is, only that two are near: the term keeps the
map smooth along the paths UEs take. `training.fit` adds it to a task's loss when the
task carries `TrackPairs` (docs/results/transfer: 0.86x the ME with emulated tracks).

Fingerprints without a track (samples alone in theirs) are paired by their channels
instead: mutual nearest neighbours of the spatial statistic
(`training.novelty.spatial_statistics`, blind to the common phase and the timing
offset), allowed ``found_bound_m`` apart. On held-out scenes such pairs lay within 1 m
in 49-91 % of cases (a median of 73 %), better than a distance learned on the corpus
(62 %) or the backbone's features (54 %): docs/results/transfer/README.md, "Unlabelled
fingerprints without tracks".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from training.config import TrainConfig
from training.data.unlabelled import UnlabelledTracks
from training.neighbours import k_nearest
from training.novelty import spatial_statistics

__all__ = ["TrackPairs", "found_pairs", "track_hinge", "track_pairs"]

FOUND_MAX_SAMPLES = 20_000
"""Fingerprints without tracks that `TrackPairs.build` pairs at most (a seeded draw beyond):
the search is quadratic (3.6 s measured at this size on 2 busy cores)."""


def track_pairs(
    time: npt.NDArray[np.float64], track: npt.NDArray[np.int32], max_gap_s: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(a, b, dt): consecutive samples of the same track, in time order, 0 < dt <= max_gap_s.

    Rows may come in any order; pairs never cross tracks, and a gap longer than
    ``max_gap_s`` (a dropped stretch) pairs nothing across it.
    """
    if not max_gap_s > 0:
        raise ValueError(f"max_gap_s={max_gap_s}, expected > 0")
    order = np.lexsort((time, track)).astype(np.int64)
    a, b = order[:-1], order[1:]
    dt = time[b] - time[a]
    keep = (track[a] == track[b]) & (dt > 0) & (dt <= max_gap_s)
    return a[keep], b[keep], dt[keep]


def found_pairs(
    csi: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(a, b), a < b: mutual nearest neighbours of the samples' spatial statistics
    (Euclidean), each pair once. Quadratic in time, linear in memory (`training.neighbours`)."""
    n = int(np.shape(csi)[0])
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = spatial_statistics(csi).astype(np.float32)  # float32: half the time of the matmul
    near = k_nearest(x, x, 1, leave_out=True)[1][:, 0].astype(np.int64)
    a = np.flatnonzero((near[near] == np.arange(n)) & (np.arange(n) < near))
    return a.astype(np.int64), near[a]


def track_hinge(
    pos_a: torch.Tensor, pos_b: torch.Tensor, bound: torch.Tensor, scale: torch.Tensor | float
) -> torch.Tensor:
    """Mean over pairs of ``(max(0, |pos_a - pos_b| - bound) / scale)^2`` (metres in)."""
    gap = torch.relu((pos_a - pos_b).norm(dim=1) - bound)
    return (gap / scale).square().mean()


@dataclass(frozen=True)
class TrackPairs:
    """A task's unlabelled CSI and its close pairs, as `training.fit` consumes them.

    ``a``/``b`` index rows of ``csi``; ``bound`` [P] is each pair's allowed distance (m).
    """

    csi: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    bound: torch.Tensor

    found: int = 0
    """How many of the pairs were found by their channels (`found_pairs`), not by tracks."""

    @classmethod
    def build(
        cls,
        tracks: UnlabelledTracks,
        v_max: float,
        max_gap_s: float,
        slack_m: float,
        found_bound_m: float,
    ) -> TrackPairs:
        """Pairs of consecutive samples (`track_pairs`), bound ``v_max * dt + slack_m``,
        and the samples alone in their track paired by `found_pairs` (at most
        `FOUND_MAX_SAMPLES` of them), bound ``found_bound_m``."""
        if not v_max > 0 or slack_m < 0 or not found_bound_m >= 0:
            raise ValueError(
                f"v_max={v_max}, slack_m={slack_m}, found_bound_m={found_bound_m}: "
                "expected > 0, >= 0 and >= 0"
            )
        a, b, dt = track_pairs(tracks.time, tracks.track, max_gap_s)
        alone = np.flatnonzero(tracks.singletons())
        if len(alone) > FOUND_MAX_SAMPLES:
            draw = np.random.default_rng(0).choice(len(alone), FOUND_MAX_SAMPLES, replace=False)
            alone = alone[np.sort(draw)]
        fa, fb = found_pairs(tracks.csi[alone])
        return cls(
            torch.from_numpy(np.ascontiguousarray(tracks.csi, dtype=np.float32)),
            torch.from_numpy(np.concatenate([a, alone[fa]])),
            torch.from_numpy(np.concatenate([b, alone[fb]])),
            torch.from_numpy(
                np.concatenate([v_max * dt + slack_m, np.full(len(fa), found_bound_m)]).astype(
                    np.float32
                )
            ),
            found=len(fa),
        )

    @classmethod
    def for_config(cls, tracks: UnlabelledTracks, config: TrainConfig) -> TrackPairs:
        """`build` with the config's ``track_vmax``, ``track_max_gap_s``, ``track_slack_m``
        and ``found_bound_m``."""
        return cls.build(
            tracks,
            config.track_vmax,
            config.track_max_gap_s,
            config.track_slack_m,
            config.found_bound_m,
        )

    def __len__(self) -> int:
        return len(self.a)

    @property
    def samples(self) -> int:
        """Unlabelled samples in at least one pair."""
        return len(torch.unique(torch.cat([self.a, self.b])))
