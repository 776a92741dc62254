"""Sigma calibration: the closed-form factor, the head buffer, training and ONNX export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.training.toychannel import toy_fingerprints
from training.calibration import (
    REF_MIN_VAL,
    calibrate_sigma,
    fit_blend,
    fit_distance_weight,
    fit_sigma_scale,
)
from training.checkpoint import load_site_model, save_site_model
from training.config import TrainConfig
from training.data.fingerprints import Fingerprints
from training.data.splits import split_train_val
from training.fusion import COVERAGE_MIN
from training.metrics import evaluate, evaluate_model
from training.nets import (
    REF_NEIGHBOURS,
    Backbone,
    Head,
    SiteModel,
    log_reference_distance,
    neighbour_position,
    reference_neighbours,
)
from training.repository import ModelRepository
from training.transfer import train_target

TARGET = toy_fingerprints(160, (5.0, -2.0), seed=7, size=(8.0, 6.0))


def _constant_head(sigma_raw: float, pos: np.ndarray) -> Head:
    """An nll head that predicts the centre of ``pos`` with one sigma everywhere."""
    head = Head(loss="nll", seed=0)
    head.fit_position_normalisation(pos)
    last = head.mlp[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, sigma_raw, sigma_raw]))
    return head.eval()


def test_fit_sigma_scale_recovers_the_factor_per_axis() -> None:
    rng = np.random.default_rng(0)
    sigma = rng.uniform(0.5, 2.0, (20000, 2))
    err = rng.standard_normal((20000, 2)) * sigma * np.array([3.0, 0.5])
    np.testing.assert_allclose(fit_sigma_scale(err, sigma), [3.0, 0.5], rtol=0.02)
    assert fit_sigma_scale(np.zeros((3, 2)), np.ones((3, 2))).min() > 0  # never sigma 0


@pytest.mark.parametrize(
    ("err", "sigma", "match"),
    [
        (np.zeros((3, 2)), np.ones((3, 3)), r"\[N >= 1, 2\]"),
        (np.zeros((0, 2)), np.ones((0, 2)), r"\[N >= 1, 2\]"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "positive"),
        (np.full((3, 2), np.nan), np.ones((3, 2)), "finite"),
    ],
)
def test_fit_sigma_scale_refuses_bad_input(err: np.ndarray, sigma: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_sigma_scale(err, sigma)


def test_calibration_lowers_the_validation_nll_and_keeps_positions() -> None:
    backbone = Backbone(seed=0).eval()
    head = _constant_head(-3.0, TARGET.pos)  # sigma far too small: over-confident
    val = Fingerprints(csi=TARGET.csi[:120], pos=TARGET.pos[:120])  # < COVERAGE_MIN: NLL
    csi = torch.from_numpy(val.csi)
    with torch.no_grad():
        pos_before, sigma_before = head(backbone(csi))
    before = evaluate_model(backbone, head, val)
    scale = calibrate_sigma(backbone, head, val)
    after = evaluate_model(backbone, head, val)
    assert scale is not None and min(scale) > 1.0
    with torch.no_grad():
        pos_after, sigma_after = head(backbone(csi))
    assert sigma_before is not None and sigma_after is not None
    torch.testing.assert_close(pos_after, pos_before)
    torch.testing.assert_close(sigma_after, sigma_before * torch.tensor(scale))
    assert after["nll"] < before["nll"]
    assert before["within_1sigma"] < 0.2 < after["within_1sigma"]
    # The NLL-optimal factor: scaling sigma by 0.9 or 1.1 more can only be worse.
    pos, sig = pos_after.numpy(), sigma_after.numpy()
    best = evaluate(pos, sig, val.pos)["nll"]
    assert best < evaluate(pos, sig * 0.9, val.pos)["nll"]
    assert best < evaluate(pos, sig * 1.1, val.pos)["nll"]


def test_enough_points_scale_both_axes_to_the_coverage() -> None:
    rng = np.random.default_rng(3)
    n = COVERAGE_MIN + 850
    sigma = rng.uniform(0.5, 2.0, (n, 2))
    t = rng.standard_normal((n, 2)) / np.sqrt(rng.chisquare(8, (n, 1)) / 8)  # heavy tails
    err = t * sigma * np.array([3.0, 0.5])
    nll_scale = np.sqrt(np.mean(np.square(err / sigma), axis=0))
    scale = fit_sigma_scale(err, sigma)
    assert scale[0] / scale[1] == pytest.approx(nll_scale[0] / nll_scale[1])  # axes' ratio kept
    d2 = np.sum(np.square(err / (sigma * scale)), axis=1)
    assert abs(np.mean(d2 <= 1.0) - 0.393) < 0.05 and abs(np.mean(d2 <= 4.0) - 0.865) < 0.05
    nll_d2 = np.sum(np.square(err / (sigma * nll_scale)), axis=1)
    assert np.mean(nll_d2 <= 1.0) > 0.393 + 0.05  # the NLL factor alone: 1 sigma too wide
    few = fit_sigma_scale(err[: COVERAGE_MIN - 1], sigma[: COVERAGE_MIN - 1])
    expected = np.sqrt(np.mean(np.square(err / sigma)[: COVERAGE_MIN - 1], axis=0))
    np.testing.assert_allclose(few, expected)  # fewer points: the NLL factor per axis


def test_calibration_skips_mse_heads_and_small_validation_sets() -> None:
    backbone = Backbone(seed=0)
    mse = Head(loss="mse", seed=0)
    assert calibrate_sigma(backbone, mse, TARGET) is None
    head = _constant_head(-3.0, TARGET.pos)
    head.sigma_scale.fill_(2.0)  # a stale factor is reset, not kept
    few = Fingerprints(csi=TARGET.csi[:5], pos=TARGET.pos[:5])
    assert calibrate_sigma(backbone, head, few) is None
    assert head.sigma_scale.tolist() == [1.0, 1.0]


def test_train_target_calibrates_by_default_and_reports_the_factors() -> None:
    cfg = TrainConfig(loss="nll", epochs=3, min_steps=0, patience=2, batch_size=32, lr=2e-3)
    train, val = split_train_val(TARGET, 0.25, 0)
    backbone = Backbone(seed=0)
    on = train_target(backbone, train, val, cfg, mode="head", quiet=True)
    off_cfg = dataclasses.replace(cfg, calibrate_sigma=False)
    off = train_target(backbone, train, val, off_cfg, mode="head", quiet=True)
    scale = on.model.head.sigma_scale.tolist()
    assert on.metrics["sigma_scale_x"] == pytest.approx(scale[0])
    assert on.metrics["sigma_scale_y"] == pytest.approx(scale[1])
    assert "sigma_scale_x" not in off.metrics and off.model.head.sigma_scale.tolist() == [1, 1]
    assert on.metrics["me"] == pytest.approx(off.metrics["me"])  # same positions
    assert on.metrics["nll"] <= off.metrics["nll"] + 1e-6


def test_the_factor_is_saved_exported_and_old_heads_load_uncalibrated(tmp_path: Path) -> None:
    backbone = Backbone(seed=0).eval()
    head = _constant_head(-3.0, TARGET.pos)
    scale = calibrate_sigma(backbone, head, TARGET)
    assert scale is not None
    model = SiteModel(backbone, head).eval()
    repo = ModelRepository(tmp_path / "models")
    save_site_model(repo, "lab", model, parent=None, config={}, metrics={})
    loaded = load_site_model(repo, "lab")
    np.testing.assert_allclose(loaded.head.sigma_scale.numpy(), scale, rtol=1e-6)
    # The ONNX model the service runs gives the calibrated sigma.
    onnx_path = repo.path("site", "lab") / "model.onnx"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outputs = dict(zip(names, sess.run(None, {"csi": TARGET.csi[:4]}), strict=True))
    with torch.no_grad():
        _, sigma = model(torch.from_numpy(TARGET.csi[:4]))
    assert sigma is not None
    np.testing.assert_allclose(outputs["sigma"], sigma.numpy(), rtol=1e-4)
    # A head saved before calibration existed (no sigma_scale in its state) loads as ones.
    state = {k: v for k, v in head.state_dict().items() if k != "sigma_scale"}
    old = Head(loss="nll", seed=1)
    old.load_state_dict(state)
    assert old.sigma_scale.tolist() == [1.0, 1.0]


def test_the_distance_weight_is_found_where_errors_grow_with_distance() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    sigma = rng.uniform(0.5, 2.0, (n, 2))
    log_d = rng.normal(1.0, 0.5, n)
    grow = np.exp(0.8 * (log_d - 1.0))[:, None]
    weight, centre = fit_distance_weight(rng.standard_normal((n, 2)) * sigma * grow, sigma, log_d)
    assert weight == pytest.approx(0.8, abs=0.1) and centre == pytest.approx(1.0, abs=0.05)
    weight, _ = fit_distance_weight(rng.standard_normal((n, 2)) * sigma, sigma, log_d)
    assert weight <= 0.1  # errors that do not depend on the distance: (almost) off


def test_the_neighbour_terms_blend_positions_and_widen_sigma(tmp_path: Path) -> None:
    backbone = Backbone(seed=0).eval()
    head = _constant_head(-1.0, TARGET.pos)
    csi = torch.from_numpy(TARGET.csi)
    truth = torch.from_numpy(TARGET.pos)
    with torch.no_grad():
        feats = backbone(csi)
        plain_pos, plain = head(feats)
        head.set_reference(feats[:40], truth[:40], blend=0.5, weight=0.7, centre=0.0)
        pos, widened = head(feats)
    assert plain is not None and widened is not None
    distance, index = reference_neighbours(feats, feats[:40])
    nearby = neighbour_position(distance, index, truth[:40])
    torch.testing.assert_close(pos, plain_pos + 0.5 * (nearby - plain_pos))
    # A reference fingerprint's own position dominates its neighbours' estimate.
    own, plain_err = ((p[:40] - truth[:40]).norm(dim=1).mean() for p in (pos, plain_pos))
    assert own < 0.7 * plain_err
    factor = torch.exp(0.7 * log_reference_distance(feats, feats[:40])).unsqueeze(1)
    torch.testing.assert_close(widened, plain * factor)
    assert widened[100:].mean() > widened[:40].mean()  # the reference's own points: closest
    with pytest.raises(ValueError, match=r"\[M, 128\]"):
        head.set_reference(feats[:, :5], truth, weight=1.0)
    with pytest.raises(ValueError, match=r"positions must be \[40, 2\]"):
        head.set_reference(feats[:40], truth[:39], weight=1.0)
    # Saved, loaded (a fresh head has no rows) and exported: the same answers.
    model = SiteModel(backbone, head).eval()
    repo = ModelRepository(tmp_path / "models")
    save_site_model(repo, "lab", model, parent=None, config={}, metrics={})
    loaded = load_site_model(repo, "lab")
    assert loaded.head.ref_features.shape == (40, 128)
    assert loaded.head.ref_positions.shape == (40, 2)
    with torch.no_grad():
        got_pos, got_sigma = loaded(csi)
    torch.testing.assert_close(got_pos, pos)
    torch.testing.assert_close(got_sigma, widened)
    sess = ort.InferenceSession(
        str(repo.path("site", "lab") / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in sess.get_outputs()]
    # Fingerprints off the reference (an exact match's distance is float32 noise).
    outputs = dict(zip(names, sess.run(None, {"csi": TARGET.csi[100:108]}), strict=True))
    np.testing.assert_allclose(outputs["sigma"], widened[100:108].numpy(), rtol=1e-4)
    np.testing.assert_allclose(outputs["position"], pos[100:108].numpy(), atol=1e-4)
    # A head saved before the terms existed loads with them off; reset turns them off.
    state = {k: v for k, v in head.state_dict().items() if not k.startswith("ref_")}
    old = Head(loss="nll", seed=1)
    old.load_state_dict(state)
    with torch.no_grad():
        old_pos, old_sigma = old(feats)
    torch.testing.assert_close(old_pos, plain_pos)
    torch.testing.assert_close(old_sigma, plain)
    head.reset_calibration()
    with torch.no_grad():
        torch.testing.assert_close(head(feats)[1], plain)
    assert head.ref_features.shape == (0, 128) and head.ref_positions.shape == (0, 2)


def test_calibration_with_a_reference_never_raises_the_validation_error() -> None:
    cfg = TrainConfig(loss="nll", epochs=3, min_steps=0, patience=2, batch_size=32, lr=2e-3)
    train, val = split_train_val(TARGET, 0.4, 0)
    assert len(val) >= REF_MIN_VAL and len(train) >= REF_NEIGHBOURS
    model = train_target(Backbone(seed=0), train, val, cfg, mode="head", quiet=True).model
    calibrate_sigma(model.backbone, model.head, val)
    without = evaluate_model(model.backbone, model.head, val)
    calibrate_sigma(model.backbone, model.head, val, reference=train)
    with_ref = evaluate_model(model.backbone, model.head, val)
    assert with_ref["me"] <= without["me"] + 1e-6  # blend 0 is among the ones tried
    rows = model.head.ref_features.shape[0]
    on = model.head.ref_weight.item() > 0 or model.head.ref_blend.item() > 0
    assert rows in (0, len(train)) and (rows > 0) == on
    few = Fingerprints(csi=val.csi[: REF_MIN_VAL - 1], pos=val.pos[: REF_MIN_VAL - 1])
    calibrate_sigma(model.backbone, model.head, few, reference=train)
    assert model.head.ref_features.shape[0] == 0  # too few validation points: term off


def test_a_heads_metrics_report_its_neighbour_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest tells an operator what the head does: its terms when on, else none."""
    import training.calibration as calibration

    cfg = TrainConfig(loss="nll", epochs=3, min_steps=0, patience=2, batch_size=32, lr=2e-3)
    train, val = split_train_val(TARGET, 0.4, 0)
    monkeypatch.setattr(calibration, "REF_BLENDS", (0.5,))  # on, whether or not it pays here
    on = train_target(Backbone(seed=0), train, val, cfg, mode="head", quiet=True)
    assert on.metrics["neighbour_blend"] == 0.5 and on.metrics["neighbour_rows"] == len(train)
    assert on.metrics["neighbour_weight"] == on.model.head.ref_weight.item()
    monkeypatch.setattr(calibration, "REF_MIN_VAL", len(val) + 1)
    off = train_target(Backbone(seed=0), train, val, cfg, mode="head", quiet=True)
    assert not any(k.startswith("neighbour_") for k in off.metrics)


def test_the_blend_is_the_share_with_the_lowest_error() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(0, 10, (500, 2))
    head = truth + rng.normal(0, 1.0, (500, 2))
    nearby = truth + rng.normal(0, 1.0, (500, 2))  # as good, independent: halfway is best
    assert fit_blend(head, nearby, truth) == pytest.approx(0.5)
    assert fit_blend(head, truth + rng.normal(0, 5.0, (500, 2)), truth) == 0.0
