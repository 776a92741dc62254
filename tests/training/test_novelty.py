"""Out-of-site detection: the Mahalanobis score, its calibrated threshold, the novelty
file, and what adaptation publishes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.training.fast import FAST
from tests.training.toychannel import toy_fingerprints
from training.checkpoint import load_novelty, load_site_model, save_backbone
from training.nets import Backbone
from training.novelty import (
    CHANNEL_PARTS,
    FILE,
    MIN_VAL,
    SINGLE_HEAD,
    Background,
    Gaussian,
    backbone_features,
    background_bytes,
    channel_statistics,
    combine_scores,
    conformal_bound,
    conformal_threshold,
    evaluate_out_of_site,
    fit_background,
    fit_novelty,
    inflate_sigma,
    ledoit_wolf,
    novelty_bytes,
    out_of_site,
    read_background,
    read_novelty,
)
from training.repository import ModelRepository
from training.transfer import adapt_site

D = 32


def gaussian_features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian features (one fixed mixing matrix); ``shift`` moves every
    feature's mean by that many of its own standard deviations."""
    mix = np.random.default_rng(1234).normal(size=(D, D)) / np.sqrt(D)
    x = np.random.default_rng(seed).normal(size=(n, D)) @ mix
    return x + shift * np.sqrt((mix**2).sum(axis=0))


def test_the_score_separates_a_shifted_distribution() -> None:
    model = fit_novelty(gaussian_features(400, 0), gaussian_features(200, 1))
    own = model.score(gaussian_features(5000, 2))
    shifted = model.score(gaussian_features(5000, 3, shift=1.0))
    assert np.mean(own > 1) <= 0.03
    assert np.mean(shifted > 1) >= 0.95
    assert np.median(shifted) > 2 * np.median(own)


@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_the_threshold_gives_about_the_chosen_false_alarm_rate(alpha: float) -> None:
    model = fit_novelty(gaussian_features(1000, 0), gaussian_features(2000, 1), false_alarm=alpha)
    rate = float(np.mean(model.score(gaussian_features(40_000, 2)) > 1))
    assert alpha * 0.6 <= rate <= alpha * 1.5
    assert model.false_alarm == alpha and model.n_train == 1000 and model.n_val == 2000


def test_conformal_threshold_is_the_right_order_statistic() -> None:
    scores = np.arange(1.0, 201.0)  # 1..200
    assert conformal_threshold(scores, 0.05) == 191.0  # ceil(201 * 0.95) = 191
    assert conformal_threshold(scores[:50], 0.01) == 50.0  # too few points: the largest
    with pytest.raises(ValueError, match="false_alarm"):
        conformal_threshold(scores, 0.0)


def test_a_small_validation_split_says_what_false_alarm_it_can_guarantee() -> None:
    assert conformal_bound(200, 0.05) == pytest.approx(1 - 191 / 201)
    assert conformal_bound(999, 0.01) == pytest.approx(0.01)
    assert conformal_bound(82, 1 / 300) == pytest.approx(1 / 83)  # the largest of 82
    # the bound is what happens: over 30 validation draws of 82 points, a target of
    # 0.2 % flags ~1/83 of new fingerprints
    train = gaussian_features(1000, 0)
    test = gaussian_features(20_000, 2)
    rates = []
    for seed in range(30):
        model = fit_novelty(train, gaussian_features(82, 100 + seed), false_alarm=0.002)
        rates.append(float(np.mean(model.score(test) > 1)))
    assert model.false_alarm_bound == pytest.approx(1 / 83)
    assert model.summary()["false_alarm_bound"] == pytest.approx(1 / 83)
    assert 0.5 / 83 < float(np.mean(rates)) < 1.5 / 83, np.mean(rates)
    big = fit_novelty(train, gaussian_features(2000, 1), false_alarm=0.01)
    assert big.false_alarm_bound <= 0.01


def test_ledoit_wolf_shrinks_and_copes_with_dead_features() -> None:
    x = gaussian_features(60, 0)
    x[:, :4] = 0.0  # ReLU units that never fire on the site
    mean, cov, shrinkage = ledoit_wolf(x)
    assert np.allclose(mean, x.mean(axis=0))
    assert 0.0 < shrinkage < 1.0
    assert np.linalg.eigvalsh(cov).min() > 0
    sample = np.cov(x, rowvar=False, bias=True)
    assert np.allclose(cov, (1 - shrinkage) * sample + shrinkage * np.trace(sample) / D * np.eye(D))
    model = fit_novelty(x, gaussian_features(40, 1) * np.r_[np.zeros(4), np.ones(D - 4)])
    firing = np.zeros((1, D))
    firing[0, 0] = 10.0  # a dead unit fires strongly: that is new
    assert model.score(firing)[0] > 1 and np.isfinite(model.score(x)).all()


def test_the_novelty_file_round_trips_and_refuses_junk() -> None:
    a = fit_novelty(gaussian_features(100, 0), gaussian_features(50, 1), site_sigma=(2.0, 1.5))
    b = fit_novelty(gaussian_features(100, 2), gaussian_features(50, 3))
    back = read_novelty(novelty_bytes({"bs0": a, "bs1": b}))
    assert sorted(back) == ["bs0", "bs1"]
    probe = gaussian_features(10, 4)
    assert np.allclose(back["bs0"].score(probe), a.score(probe))
    assert back["bs0"].inflates and not back["bs1"].inflates
    with pytest.raises(ValueError, match="not a novelty file"):
        read_novelty(b"not a zip")
    with pytest.raises(ValueError, match="head name"):
        novelty_bytes({"a/b": a})


def rays_csi(n: int, seed: int, angles: tuple[float, ...], delays: tuple[int, ...]) -> np.ndarray:
    """CSI [n, 8, 103, 2] of a few plane waves on an 8-element half-wavelength array:
    arrival angles (radians) and delays (taps of a 128-point grid) jittered per sample,
    random gains, a random common phase and a random timing offset per sample."""
    rng = np.random.default_rng(seed)
    ant, sub = np.arange(8)[:, None], np.arange(103)[None, :]
    out = np.zeros((n, 8, 103), dtype=complex)
    for i in range(n):
        for a, d in zip(angles, delays, strict=True):
            theta = a + rng.normal(0, 0.05)
            tau = d + rng.normal(0, 0.3) + rng.integers(0, 20)
            gain = rng.normal() + 1j * rng.normal()
            out[i] += gain * np.exp(1j * np.pi * ant * np.sin(theta) - 2j * np.pi * sub * tau / 128)
        out[i] *= np.exp(2j * np.pi * rng.random())
    out += 0.01 * (rng.normal(size=out.shape) + 1j * rng.normal(size=out.shape))
    return np.stack([out.real, out.imag], axis=-1)


def test_channel_statistics_ignore_common_phase_and_timing_offset() -> None:
    csi = rays_csi(20, 0, (0.3, -0.6), (0, 9))
    x = csi[..., 0] + 1j * csi[..., 1]
    phase = np.exp(2j * np.pi * np.random.default_rng(1).random(20))[:, None, None]
    shift = np.random.default_rng(2).integers(0, 40, 20)[:, None, None]  # whole taps
    y = x * phase * np.exp(-2j * np.pi * np.arange(103)[None, None, :] * shift / 128)
    a, b = channel_statistics(csi), channel_statistics(np.stack([y.real, y.imag], axis=-1))
    assert sorted(a) == sorted(CHANNEL_PARTS)
    assert a["spatial"].shape == (20, 64) and a["delay"].shape == (20, 32)
    for name in CHANNEL_PARTS:
        assert np.allclose(a[name], b[name], atol=1e-9), name


def test_channel_parts_catch_what_invariant_features_miss() -> None:
    """Features that look the same everywhere (what an invariant backbone gives) pass a
    foreign site's fingerprints; the raw CSI's spatial and delay statistics do not."""
    own = {s: rays_csi(n, s, (0.3, -0.6), (0, 9)) for s, n in ((0, 300), (1, 150), (2, 400))}
    foreign = rays_csi(400, 3, (-0.1, 0.9), (0, 30))  # other directions, longer echoes
    feats = {s: gaussian_features(len(c), 10 + s) for s, c in own.items()}
    plain = fit_novelty(feats[0], feats[1])
    model = fit_novelty(feats[0], feats[1], train_csi=own[0], val_csi=own[1])
    assert [p.name for p in model.parts] == list(CHANNEL_PARTS)
    foreign_feats = gaussian_features(400, 20)
    assert np.mean(plain.score(foreign_feats) > 1) < 0.05
    assert np.mean(model.score(foreign_feats, foreign) > 1) > 0.95
    assert np.mean(model.score(feats[2], own[2]) > 1) < 0.05
    # each part's threshold is at false_alarm / 3 (the union keeps the target)
    big = fit_novelty(
        gaussian_features(400, 0),
        gaussian_features(4000, 1),
        train_csi=own[0],
        val_csi=rays_csi(4000, 5, (0.3, -0.6), (0, 9)),
    )
    val_d = big.distance(gaussian_features(4000, 1))
    assert big.threshold == conformal_threshold(val_d, 0.01 / 3)
    with pytest.raises(ValueError, match="pass csi"):
        model.score(foreign_feats)


def test_format_1_and_2_novelty_files_still_read() -> None:
    """Versions published before the channel parts score the features alone, and those
    published before the backgrounds score the plain distance."""
    old = fit_novelty(gaussian_features(100, 0), gaussian_features(50, 1))
    data = dict(np.load(io.BytesIO(novelty_bytes({"site": old}))))
    data["format"] = np.array(1)
    buf = io.BytesIO()
    np.savez(buf, **data)
    back = read_novelty(buf.getvalue())["site"]
    assert back.parts == ()
    probe = gaussian_features(10, 4)
    assert np.allclose(back.score(probe), old.score(probe))
    own = rays_csi(200, 0, (0.3,), (0,))
    new = fit_novelty(
        gaussian_features(200, 0), gaussian_features(60, 1), train_csi=own, val_csi=own[:60]
    )
    again = read_novelty(novelty_bytes({"bs0": new}))["bs0"]
    assert [p.name for p in again.parts] == list(CHANNEL_PARTS)
    assert np.allclose(again.score(probe, own[:10]), new.score(probe, own[:10]))
    # the statistics computed once elsewhere (the service's cross-BS check) score the same
    stats = channel_statistics(own[:10])
    assert np.array_equal(new.score(probe, stats=stats), new.score(probe, own[:10]))
    # format 2 (channel parts, no backgrounds: the demo sites before) reads as plain parts
    data = dict(np.load(io.BytesIO(novelty_bytes({"bs0": new}))))
    data["format"] = np.array(2)
    buf = io.BytesIO()
    np.savez(buf, **data)
    two = read_novelty(buf.getvalue())["bs0"]
    assert all(p.background is None for p in two.parts)
    assert np.allclose(two.score(probe, own[:10]), new.score(probe, own[:10]))


def corpus_rooms(rooms: int = 20) -> list[np.ndarray]:
    """A toy pre-training corpus: rooms of two rays from random directions and echoes."""
    rng = np.random.default_rng(0)
    return [
        rays_csi(120, 100 + k, tuple(rng.uniform(-1.2, 1.2, 2)), (0, int(rng.integers(3, 30))))
        for k in range(rooms)
    ]


def test_a_corpus_background_catches_near_rooms_the_plain_distance_misses() -> None:
    """The relative distance discounts what varies in every room, so a room whose rays
    come from nearly the site's directions stands out (Ren et al. 2021)."""
    background = fit_background(corpus_rooms(), seed=0)
    assert (background.n, background.environments) == (2400, 20)
    own = {s: rays_csi(n, s, (0.3, -0.6), (0, 9)) for s, n in ((0, 300), (1, 150), (2, 400))}
    feats = {s: gaussian_features(len(c), 10 + s) for s, c in own.items()}
    args = (feats[0], feats[1])
    plain = fit_novelty(*args, train_csi=own[0], val_csi=own[1])
    relative = fit_novelty(*args, train_csi=own[0], val_csi=own[1], background=background)
    assert all(p.background is not None for p in relative.parts)
    assert all(p.background is None for p in plain.parts)
    near, near_feats = rays_csi(400, 3, (0.3, -0.45), (0, 9)), gaussian_features(400, 20)
    caught_plain = np.mean(plain.score(near_feats, near) > 1)
    caught = np.mean(relative.score(near_feats, near) > 1)
    assert caught > caught_plain + 0.2, (caught, caught_plain)
    assert np.mean(relative.score(feats[2], own[2]) > 1) < 0.05  # false alarms kept


def test_relative_parts_score_as_documented_and_round_trip() -> None:
    background = fit_background(corpus_rooms(6), per_env=50, seed=1)
    own, val = rays_csi(200, 0, (0.3,), (0,)), rays_csi(80, 1, (0.3,), (0,))
    feats = gaussian_features(200, 0), gaussian_features(80, 1)
    model = fit_novelty(*feats, train_csi=own, val_csi=val, background=background)
    stats, probe = channel_statistics(val), rays_csi(10, 2, (0.5,), (3,))
    for part in model.parts:
        assert part.background is background.parts[part.name]
        raw = part.raw_score(stats[part.name])
        assert part.center == pytest.approx(np.median(raw))
        assert part.threshold == conformal_threshold(raw, 0.01 / 3)
        x = channel_statistics(probe)[part.name]
        expected = np.maximum(part.raw_score(x) - part.center, 0.0) / (part.threshold - part.center)
        assert np.allclose(part.score(x), expected)
    back = read_novelty(novelty_bytes({"bs0": model}))["bs0"]
    assert [p.background is not None for p in back.parts] == [True, True]
    probe_feats = gaussian_features(10, 3)
    assert np.allclose(back.score(probe_feats, probe), model.score(probe_feats, probe))
    # a background of another array shape is not used: that part keeps the plain distance
    other = Background({"spatial": Gaussian(np.zeros(4), np.eye(4))}, 10, 1)
    mixed = fit_novelty(*feats, train_csi=own, val_csi=val, background=other)
    assert [p.background for p in mixed.parts] == [None, None]


def test_heads_of_one_site_store_their_background_once() -> None:
    """Format 4: a multi-BS site's heads share the backbone's background, stored once;
    format 3 files (a copy per head) still read the same."""
    background = fit_background(corpus_rooms(6), per_env=50, seed=1)
    own, val = rays_csi(200, 0, (0.3,), (0,)), rays_csi(80, 1, (0.3,), (0,))
    models = {
        bs: fit_novelty(
            gaussian_features(200, k),
            gaussian_features(80, 10 + k),
            train_csi=own,
            val_csi=val,
            background=background,
        )
        for k, bs in enumerate(("bs0", "bs1", "bs2", "bs3"))
    }
    data = novelty_bytes(models)
    arrays = dict(np.load(io.BytesIO(data)))
    assert sorted(k for k in arrays if k.startswith("_")) == [
        f"_background/{i}/{a}" for i in range(len(CHANNEL_PARTS)) for a in ("mean", "whitener")
    ]
    probe, probe_feats = rays_csi(10, 2, (0.5,), (3,)), gaussian_features(10, 3)
    back = read_novelty(data)
    assert sorted(back) == sorted(models)
    for bs, m in models.items():
        assert np.allclose(back[bs].score(probe_feats, probe), m.score(probe_feats, probe))
    # read back once too: every head holds the same background object per part
    for i, part in enumerate(back["bs0"].parts):
        assert part.background is not None
        assert all(back[bs].parts[i].background is part.background for bs in ("bs1", "bs2", "bs3"))
    # the format-3 layout: each head's own copy of its background
    old = {k: v for k, v in arrays.items() if not k.startswith("_")}
    for key in [k for k in old if k.endswith("/background")]:
        ref = f"_background/{int(old.pop(key))}"
        head_part = key.removesuffix("/background")
        old[f"{head_part}/background_mean"] = arrays[f"{ref}/mean"]
        old[f"{head_part}/background_whitener"] = arrays[f"{ref}/whitener"]
    old["format"] = np.array(3)
    buf = io.BytesIO()
    np.savez(buf, **old)
    shared = sum(v.nbytes for k, v in arrays.items() if k.startswith("_"))
    assert len(buf.getvalue()) - len(data) > 2.9 * shared  # three copies saved of four
    three = read_novelty(buf.getvalue())
    assert np.allclose(
        three["bs2"].score(probe_feats, probe), models["bs2"].score(probe_feats, probe)
    )
    with pytest.raises(ValueError, match="head name"):
        novelty_bytes({"_background": models["bs0"]})
    for junk in (np.array(7), np.array([0, 1])):  # a reference to nothing, or not an index
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, "bs1/delay/background": junk})
        with pytest.raises(ValueError, match="'bs1' is incomplete"):
            read_novelty(buf.getvalue())


def test_the_background_file_round_trips_and_refuses_junk() -> None:
    background = fit_background(corpus_rooms(3), per_env=40, seed=0)
    back = read_background(background_bytes(background))
    assert (back.n, back.environments) == (120, 3) and sorted(back.parts) == ["delay", "spatial"]
    for name, g in background.parts.items():
        assert np.array_equal(back.parts[name].whitener, g.whitener)
    with pytest.raises(ValueError, match="not a background file"):
        read_background(b"junk", "bb/background.npz")
    with pytest.raises(ValueError, match="no source fingerprints"):
        fit_background([np.zeros((0, 8, 103, 2))])
    # the same seed draws the same rows
    again = fit_background(corpus_rooms(3), per_env=40, seed=0)
    assert np.array_equal(again.parts["delay"].mean, background.parts["delay"].mean)


def test_inflate_sigma_raises_only_out_of_site_rows() -> None:
    sigma = np.array([[0.2, 0.3], [0.2, 5.0]], dtype=np.float32)
    out = inflate_sigma(sigma, np.array([0.5, 3.0]), np.array([2.0, 1.0]))
    assert out.tolist() == [[pytest.approx(0.2), pytest.approx(0.3)], [2.0, 5.0]]


def test_out_of_site_is_above_one_or_no_number() -> None:
    # 1 itself is in site (a score is d / threshold); a NaN score is no evidence of the site
    scores = np.array([0.0, 0.99, 1.0, 1.0001, 7.0, np.nan])
    assert out_of_site(scores).tolist() == [False, False, False, True, True, True]
    assert not out_of_site(1.0) and out_of_site(2.0)
    # the sigma the service answers is raised on exactly those rows
    sigma = np.full((len(scores), 2), 0.1)
    raised = inflate_sigma(sigma, scores, np.array([3.0, 3.0]))[:, 0] > 1.0
    assert raised.tolist() == out_of_site(scores).tolist()


TARGET = toy_fingerprints(160, (5.0, -2.0), seed=7, size=(8.0, 6.0))
CFG = FAST.replace(epochs=3, patience=2, head_warmup_steps=4, val_fraction=0.1)


def test_adaptation_publishes_a_novelty_model_and_features(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    result = adapt_site(
        repo, "lab", TARGET, mode="head", val_fraction=0.25, holdout=0.25, config=CFG
    )
    summary = result.metrics["novelty"]
    assert summary["method"] == "mahalanobis-lw" and summary["n_val"] == 30
    assert 0.0 <= summary["test_false_alarm"] <= 1.0
    manifest = repo.manifest("site", "lab", result.version)
    assert FILE in manifest["files"] and manifest["metrics"]["novelty"] == summary
    novelty = load_novelty(repo, "lab")
    assert novelty is not None and novelty[SINGLE_HEAD].threshold == summary["threshold"]

    model = load_site_model(repo, "lab")
    session = ort.InferenceSession(str(repo.path("site", "lab") / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["position", "sigma", "features"]
    features = session.run(["features"], {"csi": TARGET.csi[:5]})[0]
    assert np.allclose(features, backbone_features(model.backbone, TARGET.csi[:5]), atol=1e-4)

    noise = TARGET.subset(np.arange(40))
    noise.csi = np.random.default_rng(0).normal(size=noise.csi.shape).astype(np.float32)
    report = evaluate_out_of_site(model, novelty[SINGLE_HEAD], TARGET, {"noise": noise})
    assert report["foreign"]["noise"]["out_of_site"] == 1.0
    assert report["false_alarm"] < 0.2
    answered = report["foreign"]["noise"]["answered"]
    assert answered["within_2sigma"] >= report["foreign"]["noise"]["model"]["within_2sigma"]


def test_a_version_without_a_novelty_model_reads_as_none(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    tiny = TARGET.subset(np.arange(40))  # 10 validation points: below MIN_VAL
    result = adapt_site(repo, "lab", tiny, mode="head", val_fraction=0.25, config=CFG)
    assert "novelty" not in result.metrics and load_novelty(repo, "lab") is None


def test_several_base_stations_combine_by_the_median_score() -> None:
    scores = np.array([[0.5, 0.5, 3.0, 0.9], [0.7, 2.0, 4.0, 1.5], [3.0, 2.5, 0.2, 1.2]])
    combined = combine_scores(scores)
    # UE 0: two of three in site -> in; UE 1: one of three -> out; UE 3: 2 of 3 out -> out
    assert combined.tolist() == pytest.approx([0.7, 2.0, 3.0, 1.2])
    assert (combined <= 1.0).tolist() == [True, False, False, False]
    present = np.array([[True, True, True, True], [True, False, True, False], [False] * 4])
    # absent BSs do not vote; with two the median is their mean, with one its own score
    assert combine_scores(scores, present).tolist() == pytest.approx([0.6, 0.5, 3.5, 0.9])
    with pytest.raises(ValueError, match="at least one"):
        combine_scores(scores, np.zeros_like(present))
    with pytest.raises(ValueError, match=r"\[K, B\]"):
        combine_scores(scores[0])


def test_a_multi_bs_adaptation_fits_one_detector_per_bs(tmp_path: Path) -> None:
    from tests.training.toychannel import toy_site

    torch.set_num_threads(1)
    repo = ModelRepository(tmp_path / "models")
    background = fit_background(corpus_rooms(4), per_env=40)
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse", background=background)
    site = toy_site(200, seed=4, drop=0.0)
    cfg = FAST.replace(lr=1e-3)
    result = adapt_site(repo, "hall", site, mode="head", config=cfg, holdout=0.2)
    manifest = repo.manifest("site", "hall", result.version)
    models = load_novelty(repo, "hall", result.version)
    assert models is not None and set(models) == {"bs0", "bs1", "bs2"}
    for bs in site.bs_ids:
        summary = manifest["metrics"]["bs"][bs]["novelty"]
        assert summary["n_val"] >= MIN_VAL and 0.0 <= summary["test_false_alarm"] <= 0.2
        assert all(p["relative"] for p in summary["parts"].values())  # the backbone's background
        onnx = ort.InferenceSession(
            str(repo.path("site", "hall", result.version) / f"model.{bs}.onnx")
        )
        assert [o.name for o in onnx.get_outputs()][-1] == "features"
