"""Sigma calibration: the closed-form factor, the head buffer, training and ONNX export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.training.toychannel import toy_fingerprints
from training.calibration import calibrate_sigma, fit_sigma_scale
from training.checkpoint import load_site_model, save_site_model
from training.config import TrainConfig
from training.data.fingerprints import Fingerprints
from training.data.splits import split_train_val
from training.fusion import COVERAGE_MIN
from training.metrics import evaluate, evaluate_model
from training.nets import Backbone, Head, SiteModel
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
