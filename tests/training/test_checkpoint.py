"""Checkpoints through the repository: round trips, ONNX inside versions, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.checkpoint import (
    load_backbone,
    load_background,
    load_site_model,
    save_backbone,
    save_site_model,
)
from training.export import read_model_metadata
from training.nets import Backbone, BackboneConfig, Head, SiteModel
from training.repository import ModelRepository, NotFound, RepositoryError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _site_model(loss: str, seed: int) -> SiteModel:
    head = Head(loss=loss, seed=seed)  # type: ignore[arg-type]
    head.fit_position_normalisation(np.random.default_rng(seed).uniform(0, 20, size=(50, 2)))
    return SiteModel(Backbone(seed=seed), head)


def test_backbone_round_trip(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    backbone = Backbone(seed=1)
    version = save_backbone(
        repo, "meml", backbone, loss="nll", config={"envs": ["a", "b"]}, metrics={"val_me": 2.0}
    )
    assert version == "v1"
    assert _same_weights(load_backbone(repo, "meml"), backbone)
    manifest = repo.manifest("backbone", "meml", "v1")
    assert set(manifest["files"]) == {"backbone.pt"}
    assert manifest["config"] == {"envs": ["a", "b"]} and manifest["loss"] == "nll"
    # A non-default size survives the round trip through the stored config.
    small = Backbone(BackboneConfig(block_channels=((4, 4), (4, 4)), features=16), seed=2)
    assert save_backbone(repo, "meml", small, loss="mse", activate=False) == "v2"
    loaded = load_backbone(repo, "meml", "v2")
    assert loaded.config == small.config and _same_weights(loaded, small)
    assert _same_weights(load_backbone(repo, "meml"), backbone)  # v1 still active


@pytest.mark.parametrize("loss", ["mse", "nll"])
def test_site_model_round_trip_and_served_onnx(tmp_path: Path, loss: str) -> None:
    repo = ModelRepository(tmp_path)
    save_backbone(repo, "meml", Backbone(seed=0), loss="nll")
    model = _site_model(loss, seed=3)
    v1 = save_site_model(repo, "lab", model, parent=("meml", "v1"), data_fingerprint="0" * 64)
    v2 = save_site_model(repo, "lab", _site_model(loss, seed=4), parent=("meml", "v1"))
    assert (v1, v2) == ("v1", "v2")
    loaded = load_site_model(repo, "lab", "v1")
    assert _same_weights(loaded, model) and loaded.loss == loss and not loaded.training
    assert not _same_weights(load_site_model(repo, "lab"), model)  # active is v2
    manifest = repo.manifest("site", "lab", "v1")
    assert set(manifest["files"]) == {"model.onnx", "head.pt", "backbone.pt"}
    assert manifest["parent"] == {"backbone": "meml", "version": "v1"}
    assert manifest["loss"] == loss and manifest["data_fingerprint"] == "0" * 64

    onnx_path = repo.path("site", "lab", "v1") / "model.onnx"
    meta = read_model_metadata(onnx_path)
    assert (meta["site"], meta["version"], meta["backbone"], meta["loss"]) == (
        "lab",
        "v1",
        "meml:v1",
        loss,
    )
    csi = np.random.default_rng(0).normal(size=(7, 8, 103, 2)).astype(np.float32)
    got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"csi": csi}
    )
    with torch.no_grad():
        position, sigma = loaded(torch.from_numpy(csi))
    np.testing.assert_allclose(got[0], position.numpy(), rtol=0, atol=1e-4)
    if loss == "nll":
        assert sigma is not None
        np.testing.assert_allclose(got[1], sigma.numpy(), rtol=0, atol=1e-4)


def test_missing_and_broken_versions(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(NotFound, match="site 'nope' does not exist"):
        load_site_model(repo, "nope")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    with pytest.raises(NotFound, match="no version 'v9'"):
        load_backbone(repo, "meml", "v9")
    repo.publish_site("bare", {"model.onnx": b"x"}, loss="mse", parent=None)
    with pytest.raises(RepositoryError, match=r"head\.pt is missing"):
        load_site_model(repo, "bare")
    repo.publish_site("junk", {"head.pt": b"junk", "backbone.pt": b"junk"}, loss="mse", parent=None)
    with pytest.raises(RepositoryError, match="unreadable checkpoint"):
        load_site_model(repo, "junk")
    # a broken corpus background fails with its path, not a stack trace
    assert load_background(repo, "meml") is None  # published without one
    (repo.path("backbone", "meml") / "background.npz").write_bytes(b"junk")
    with pytest.raises(RepositoryError, match=r"background\.npz: not a background file"):
        load_background(repo, "meml")


def test_scratch_model_without_parent(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    version = save_site_model(repo, "lab", _site_model("mse", 0), parent=None)
    assert repo.manifest("site", "lab", version)["parent"] is None
    assert read_model_metadata(repo.path("site", "lab") / "model.onnx")["backbone"] == ""
