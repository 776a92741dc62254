from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.store import ServedSite
from tests.training.fast import FAST
from tests.training.toychannel import toy_fingerprints, toy_site, toy_site_tracks, toy_tracks
from training.checkpoint import load_site_model, save_backbone
from training.nets import Backbone
from training.novelty import conformal_threshold
from training.repository import ModelRepository
from training.transfer import adapt_site
from training.walk_alarm import MIN_TRACKS, fit_walk_scale, walk_scale

CFG = FAST


def _walks(tracks: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.2, tracks * per), np.repeat(np.arange(tracks), per)


def test_too_few_walks_give_no_scale() -> None:
    scores, track = _walks(MIN_TRACKS - 1, 200, seed=0)
    assert walk_scale(scores, track) is None
    assert walk_scale(*_walks(MIN_TRACKS, 200, seed=0)) is not None


def test_the_scale_is_a_seeded_quantile_that_follows_the_scores() -> None:
    scores, track = _walks(10, 300, seed=1)
    scale = walk_scale(scores, track, seed=3)
    assert scale == walk_scale(scores, track, seed=3)
    assert walk_scale(2.0 * scores, track, seed=3) == pytest.approx(2.0 * scale)  # type: ignore[operator]
    # independent walks: near the pooled 1 % quantile, hedged upwards
    pooled = conformal_threshold(scores, 0.01)
    assert pooled <= scale <= 1.3 * pooled  # type: ignore[operator]


def test_one_unusual_walk_raises_the_scale_above_the_pooled_quantile() -> None:
    """Instants of one walk are not independent: a walk through a corner the detectors
    find unusual moves the tail, and other walks like it would too."""
    scores, track = _walks(10, 300, seed=2)
    scores[track == 4] += 1.0
    scale = walk_scale(scores, track)
    assert scale is not None and scale > 1.05 * conformal_threshold(scores, 0.01)
    assert np.mean(scores > scale) < 0.01
    assert walk_scale(scores, track, confidence=0.5) < scale  # type: ignore[operator]


def test_a_site_adapted_with_walks_serves_its_ue_score_over_their_scale(
    tmp_path: Path,
) -> None:
    """The walks' scales of the BSs' median and of the cross-BS check are in the manifest,
    and the served UE score of each walk instant alarms as the manifest says."""
    torch.set_num_threads(1)
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    site = toy_site(240, seed=2, drop=0.0)
    walks = toy_site_tracks(6, 30, seed=5)
    result = adapt_site(repo, "hall", site, mode="head", config=CFG, unlabelled=walks)
    metrics = repo.manifest("site", "hall", result.version)["metrics"]
    ue = metrics["ue_novelty"]
    # each part's share of the UE-level 1 %: the median's is what the check leaves
    assert metrics["consistency"]["false_alarm"] == ue["check_false_alarm"] == 0.005
    assert ue["false_alarm"] == pytest.approx(0.005) and ue["check_scale"] > 0
    assert 0 < ue["walk_check_instants"] <= ue["walk_instants"]
    assert ue["walk_tracks"] == 6 and ue["walk_instants"] == 6 * 30
    assert ue["scale"] > 0 and ue["walk_false_alarm"] <= 0.02
    served = ServedSite("hall", result.version, repo.path("site", "hall", result.version)).load()
    assert (served.ue_scale, served.check_scale) == (ue["scale"], ue["check_scale"])
    answers = {bs: served.predict_bs_scored(bs, walks[bs].csi) for bs in served.base_stations}
    scores = np.stack([a.score for a in answers.values()])  # type: ignore[misc]
    spatial = {bs: a.spatial for bs, a in answers.items() if a.spatial is not None}
    novelty = served.ue_novelty(scores, spatial)
    # the scale is one walk's score: float32 scores may land either side of it
    assert np.mean(novelty > 1.0) == pytest.approx(ue["walk_false_alarm"], abs=1.01 / len(novelty))
    # walks one BS saw: no UE the check scores, so no check scale (the median's alone)
    models = {bs: load_site_model(repo, "hall", bs=bs) for bs in site.bs_ids}
    one = fit_walk_scale(
        models, served.bs_novelty, served.consistency, {"bs0": walks["bs0"]}, site.bs_ids
    )
    assert one is not None and one["walk_check_instants"] == 0
    assert one["check_scale"] is None and one["check_false_alarm"] is None


def test_a_single_bs_site_adapted_with_walks_scales_its_heads_score(tmp_path: Path) -> None:
    """One BS: the UE's score is its head's, so the scale applies to that, and the test
    split's false alarms are reported as served."""
    torch.set_num_threads(1)
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    data = toy_fingerprints(240, (0.0, 0.0), seed=3)
    walks, _ = toy_tracks(6, 30, (0.0, 0.0), seed=4)
    result = adapt_site(repo, "room", data, mode="head", config=CFG, unlabelled=walks, holdout=0.2)
    metrics = repo.manifest("site", "room", result.version)["metrics"]
    ue = metrics["ue_novelty"]
    assert ue["walk_tracks"] == 6 and 0.0 <= ue["test_false_alarm"] <= 1.0
    served = ServedSite("room", result.version, repo.path("site", "room", result.version)).load()
    assert served.ue_scale == ue["scale"]
    _, _, novelty = served.predict_scored(walks.csi)
    assert novelty is not None
    # the scale is one walk's score: float32 scores may land either side of it
    assert np.mean(novelty > 1.0) == pytest.approx(ue["walk_false_alarm"], abs=1.01 / len(novelty))
