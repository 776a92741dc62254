"""The track-consistency term: pairs, the hinge, and its place in the one training loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.test_fit import TinyBackbone, make_task, params, phase
from tests.training.toychannel import toy_fingerprints, toy_tracks
from training.config import TrainConfig
from training.data.unlabelled import UnlabelledTracks
from training.fit import fit, predict
from training.novelty import spatial_statistics
from training.transfer import train_target
from training.unlabelled import TrackPairs, found_pairs, track_hinge, track_pairs

BS = (0.0, 0.0)


def test_pairs_are_consecutive_within_a_track_and_the_max_gap() -> None:
    # Rows out of order; track 7 has a 1 s hole between t=0.2 and t=1.2.
    time = np.array([0.1, 0.0, 1.2, 0.2, 0.0, 0.1, 0.3, 1.3])
    track = np.array([7, 7, 7, 7, 3, 3, 3, 7], dtype=np.int32)
    a, b, dt = track_pairs(time, track, max_gap_s=0.5)
    got = sorted(zip(a.tolist(), b.tolist(), np.round(dt, 6).tolist(), strict=True))
    # track 3: t 0.0 (row 4) -> 0.1 (row 5) -> 0.3 (row 6); track 7: 0.0 -> 0.1 -> 0.2, 1.2 -> 1.3
    assert got == sorted([(4, 5, 0.1), (5, 6, 0.2), (1, 0, 0.1), (0, 3, 0.1), (2, 7, 0.1)])
    assert all(track[i] == track[j] for i, j in zip(a, b, strict=True))
    a2, _, _ = track_pairs(time, track, max_gap_s=1.5)
    assert len(a2) == 6  # the hole pairs once the gap allows it
    with pytest.raises(ValueError, match="max_gap_s"):
        track_pairs(time, track, max_gap_s=0.0)


def test_bound_is_vmax_times_dt_plus_slack() -> None:
    tracks = UnlabelledTracks(
        np.zeros((3, 8, 103, 2), np.float32),
        np.array([0.0, 0.1, 0.3]),
        np.zeros(3, np.int32),
    )
    pairs = TrackPairs.build(tracks, v_max=2.0, max_gap_s=0.5, slack_m=0.05, found_bound_m=1.0)
    assert pairs.bound.tolist() == pytest.approx([0.25, 0.45])
    assert len(pairs) == 2 and pairs.samples == 3 and pairs.found == 0


def test_found_pairs_are_mutual_nearest_neighbours_of_the_spatial_statistic() -> None:
    """Toy line-of-sight CSI: the spatial statistic is the angle, so the pairs are mutual
    nearest neighbours in angle; each pair once, never a sample with itself."""
    fp = toy_fingerprints(300, BS, seed=4)
    a, b = found_pairs(fp.csi)
    assert len(a) > 50 and (a < b).all() and len(set(a.tolist()) | set(b.tolist())) == 2 * len(a)
    stat = spatial_statistics(fp.csi)
    d = np.linalg.norm(stat[:, None] - stat[None], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    assert (nearest[a] == b).all() and (nearest[b] == a).all()
    assert len(a) == int((nearest[nearest] == np.arange(300)).sum() // 2)  # all of them
    angle = np.arctan2(fp.pos[:, 1] - BS[1], fp.pos[:, 0] - BS[0])
    random = np.abs(angle[:150] - angle[150:]).mean()
    assert np.abs(angle[a] - angle[b]).mean() < 0.1 * random
    assert [len(v) for v in found_pairs(fp.csi[:1])] == [0, 0]


def test_at_most_found_max_samples_are_searched_and_the_draw_is_seeded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import training.unlabelled

    monkeypatch.setattr(training.unlabelled, "FOUND_MAX_SAMPLES", 60)
    alone = UnlabelledTracks.untracked(toy_fingerprints(200, BS, seed=5).csi)
    first = TrackPairs.for_config(alone, TrainConfig())
    assert first.found > 0 and len(torch.unique(torch.cat([first.a, first.b]))) <= 60
    again = TrackPairs.for_config(alone, TrainConfig())
    assert torch.equal(first.a, again.a) and torch.equal(first.b, again.b)


def test_samples_alone_in_their_track_are_paired_by_their_channels() -> None:
    """Tracks keep their consecutive pairs; fingerprints without tracks get found pairs
    with the found bound; the two never mix."""
    tracks, _ = toy_tracks(2, 10, BS, seed=0)
    alone = UnlabelledTracks.untracked(toy_fingerprints(200, BS, seed=5).csi)
    both = UnlabelledTracks.concat([tracks, alone])
    cfg = TrainConfig()
    only_tracks = TrackPairs.for_config(tracks, cfg)
    pairs = TrackPairs.for_config(both, cfg)
    fa, _ = found_pairs(alone.csi)
    assert pairs.found == len(fa) > 0 and len(pairs) == len(only_tracks) + len(fa)
    assert (pairs.a[-pairs.found :] >= len(tracks)).all()  # found pairs: untracked rows
    assert (pairs.bound[-pairs.found :] == cfg.found_bound_m).all()
    assert torch.equal(pairs.bound[: len(only_tracks)], only_tracks.bound)
    with pytest.raises(ValueError, match="found_bound_m"):
        TrackPairs.build(alone, 3.0, 0.5, 0.05, found_bound_m=-1.0)


def test_hinge_is_zero_within_the_bound_and_the_hand_formula_outside() -> None:
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.3, 0.4], [0.0, 2.0], [4.0, 5.0]])  # distances 0.5, 2, 5
    bound = torch.tensor([0.5, 1.5, 1.0])
    assert float(track_hinge(a[:1], b[:1], bound[:1], 1.0)) == 0.0
    scale = 2.0
    want = ((0.0) ** 2 + (0.5 / scale) ** 2 + (4.0 / scale) ** 2) / 3
    assert float(track_hinge(a, b, bound, scale)) == pytest.approx(want)


def _tracked_task(seed: int = 0):  # type: ignore[no-untyped-def]
    task = make_task("a", 200, seed, out=4)
    tracks, _ = toy_tracks(4, 50, BS, seed=seed + 10)
    task.tracks = TrackPairs.for_config(tracks, TrainConfig())
    return task


def test_weight_zero_trains_exactly_as_without_tracks() -> None:
    runs = []
    for with_tracks in (False, True):
        torch.manual_seed(0)
        backbone = TinyBackbone()
        task = _tracked_task() if with_tracks else make_task("a", 200, 0, out=4)
        report = fit(
            backbone, [task], [phase("p", "all", 3e-3, 30)], loss="nll", seed=3, quiet=True,
            track_weight=0.0,
        )  # fmt: skip
        runs.append((params(backbone) | params(task.head), report.best_val_loss))
    (w0, l0), (w1, l1) = runs
    assert l0 == l1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


def test_the_term_pulls_consecutive_predictions_within_the_bound() -> None:
    """With a large weight, consecutive samples end closer than without the term; the
    labelled batches are the same in both runs (the pairs have their own generator)."""
    tracks, _ = toy_tracks(4, 50, BS, seed=10)
    gaps = []
    for weight in (0.0, 500.0):
        torch.manual_seed(0)
        backbone, task = TinyBackbone(), _tracked_task()
        fit(
            backbone, [task], [phase("p", "all", 3e-3, 60)], loss="nll", seed=3, quiet=True,
            track_weight=weight,
        )  # fmt: skip
        pos, _ = predict(backbone, task.head, torch.from_numpy(tracks.csi))
        assert task.tracks is not None
        d = (pos[task.tracks.a] - pos[task.tracks.b]).norm(dim=1)
        gaps.append(float(torch.relu(d - task.tracks.bound).mean()))
    assert gaps[1] < 0.5 * gaps[0], gaps


def test_head_only_phases_use_the_tracks_on_cached_features() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), _tracked_task()
    before = params(backbone)
    fit(backbone, [task], [phase("h", "head", 3e-3, 20)], loss="nll", quiet=True, track_weight=1.0)
    assert all(torch.equal(before[k], v) for k, v in params(backbone).items())


def test_a_negative_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="track_weight"):
        fit(TinyBackbone(), [_tracked_task()], [phase("p", "all", 1e-3, 5)], loss="nll",
            quiet=True, track_weight=-1.0)  # fmt: skip
    with pytest.raises(ValueError, match="track_vmax"):
        TrainConfig(track_vmax=0.0)


@pytest.mark.parametrize("mode", ["finetune", "auto"])
def test_target_modes_and_scratch_take_tracks(mode: str) -> None:
    """The real nets: a few steps with tracks (auto trains finetune, gradual and head), and
    the weight-0 identity."""
    torch.set_num_threads(1)
    from training.nets import Backbone

    data = toy_fingerprints(120, BS, seed=1)
    train, val = data.subset(slice(0, 90)), data.subset(slice(90, 120))
    tracks, _ = toy_tracks(2, 40, BS, seed=2)
    cfg = TrainConfig(
        loss="nll", min_steps=4, max_steps=6, eval_every=3, head_warmup_steps=3, seed=1,
        retry_degenerate=False, calibrate_sigma=False,
    )  # fmt: skip
    backbone = Backbone(seed=0)
    with_tracks = train_target(backbone, train, val, cfg, mode=mode, quiet=True, unlabelled=tracks)
    assert np.isfinite(with_tracks.metrics["me"])
    if mode == "finetune":
        off = cfg.replace(track_weight=0.0)
        a = train_target(backbone, train, val, off, mode=mode, quiet=True, unlabelled=tracks)
        b = train_target(backbone, train, val, off, mode=mode, quiet=True)
        assert a.metrics["me"] == b.metrics["me"]
        scratch = train_target(None, train, val, cfg, mode=mode, quiet=True, unlabelled=tracks)
        assert np.isfinite(scratch.metrics["me"])
