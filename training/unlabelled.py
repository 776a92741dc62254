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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from training.config import TrainConfig
from training.data.unlabelled import UnlabelledTracks

__all__ = ["TrackPairs", "track_hinge", "track_pairs"]


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

    @classmethod
    def build(
        cls, tracks: UnlabelledTracks, v_max: float, max_gap_s: float, slack_m: float
    ) -> TrackPairs:
        """Pairs of consecutive samples (`track_pairs`), bound ``v_max * dt + slack_m``."""
        if not v_max > 0 or slack_m < 0:
            raise ValueError(f"v_max={v_max}, slack_m={slack_m}: expected > 0 and >= 0")
        a, b, dt = track_pairs(tracks.time, tracks.track, max_gap_s)
        return cls(
            torch.from_numpy(np.ascontiguousarray(tracks.csi, dtype=np.float32)),
            torch.from_numpy(a),
            torch.from_numpy(b),
            torch.from_numpy((v_max * dt + slack_m).astype(np.float32)),
        )

    @classmethod
    def for_config(cls, tracks: UnlabelledTracks, config: TrainConfig) -> TrackPairs:
        """`build` with the config's ``track_vmax``, ``track_max_gap_s`` and ``track_slack_m``."""
        return cls.build(tracks, config.track_vmax, config.track_max_gap_s, config.track_slack_m)

    def __len__(self) -> int:
        return len(self.a)

    @property
    def samples(self) -> int:
        """Unlabelled samples in at least one pair."""
        return len(torch.unique(torch.cat([self.a, self.b])))
