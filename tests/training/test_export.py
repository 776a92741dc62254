"""ONNX export: onnxruntime vs torch parity, dynamic batch, metadata, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.export import (
    export_backbone,
    export_head,
    export_site_model,
    read_model_metadata,
    site_model_onnx,
)
from training.nets import Backbone, Head, SiteModel

TOL = 1e-4


def realistic_csi(batch: int, seed: int) -> np.ndarray:
    """Complex CSI with a LOS-like phase ramp over antennas and subcarriers plus weak
    multipath and noise, at a path-loss-like amplitude (~1e-4)."""
    rng = np.random.default_rng(seed)
    ant = np.arange(8)[None, :, None]
    sub = np.arange(103)[None, None, :]
    delay = rng.uniform(0.0, 0.5, size=(batch, 1, 1))  # phase turns per subcarrier step
    angle = rng.uniform(-np.pi / 2, np.pi / 2, size=(batch, 1, 1))
    h = np.exp(-2j * np.pi * (delay * sub + 0.5 * np.sin(angle) * ant))
    for _ in range(3):
        d = rng.uniform(0, 0.5, size=(batch, 1, 1))
        a = rng.uniform(-np.pi / 2, np.pi / 2, size=(batch, 1, 1))
        h = h + 0.3 * rng.random((batch, 1, 1)) * np.exp(
            -2j * np.pi * (d * sub + 0.5 * np.sin(a) * ant)
        )
    h = h + 0.05 * (rng.normal(size=h.shape) + 1j * rng.normal(size=h.shape))
    h *= 1e-4 * rng.uniform(0.2, 5.0, size=(batch, 1, 1))
    return np.stack([h.real, h.imag], axis=-1).astype(np.float32)


def _model(loss: str, seed: int = 0) -> SiteModel:
    head = Head(loss=loss, seed=seed + 1)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    head.fit_position_normalisation(rng.normal([30.0, -12.0], 8.0, size=(200, 2)))
    return SiteModel(Backbone(seed=seed), head).eval()


@pytest.fixture(scope="module", params=["mse", "nll"])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SiteModel, Path]:
    model = _model(request.param)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_site_model(model, path, site="lab-los", version="v3", backbone_ref="meml:v2")
    return model, path


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("kind", ["random", "realistic"])
def test_site_model_parity(exported: tuple[SiteModel, Path], batch: int, kind: str) -> None:
    model, path = exported
    csi = (
        np.random.default_rng(batch).normal(size=(batch, 8, 103, 2)).astype(np.float32)
        if kind == "random"
        else realistic_csi(batch, seed=batch)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(model.outputs)
    got = session.run(None, {"csi": csi})
    with torch.no_grad():
        position, sigma = model(torch.from_numpy(csi))
    assert got[0].shape == (batch, 2) and got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], position.numpy(), rtol=0, atol=TOL)
    if model.loss == "nll":
        assert sigma is not None and len(got) == 2
        np.testing.assert_allclose(got[1], sigma.numpy(), rtol=0, atol=TOL)
        assert (got[1] > 0).all()
    else:
        assert sigma is None and len(got) == 1


def test_site_model_metadata_and_graph(exported: tuple[SiteModel, Path]) -> None:
    model, path = exported
    meta = read_model_metadata(path)
    assert meta["site"] == "lab-los" and meta["version"] == "v3"
    assert meta["loss"] == model.loss and meta["backbone"] == "meml:v2"
    assert meta["outputs"] == ",".join(model.outputs) and meta["input_shape"] == "8,103,2"
    proto = onnx.load(str(path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "csi"
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [8, 103, 2]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]


def test_backbone_and_head_compose(tmp_path: Path) -> None:
    model = _model("nll", seed=3)
    export_backbone(model.backbone, tmp_path / "backbone.onnx", name="meml", version="v1")
    export_head(model.head, tmp_path / "head.onnx", site="lab", version="v1")
    assert read_model_metadata(tmp_path / "backbone.onnx")["kind"] == "backbone"
    assert read_model_metadata(tmp_path / "head.onnx")["input_shape"] == "128"
    csi = realistic_csi(5, seed=1)
    bb = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
    hd = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    (features,) = bb.run(None, {"csi": csi})
    position, sigma = hd.run(None, {"features": features})
    with torch.no_grad():
        ref_pos, ref_sigma = model(torch.from_numpy(csi))
    assert ref_sigma is not None and features.shape == (5, 128)
    np.testing.assert_allclose(position, ref_pos.numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(sigma, ref_sigma.numpy(), rtol=0, atol=TOL)


def test_export_is_deterministic_and_keeps_training_mode() -> None:
    model = _model("mse").train()
    a = site_model_onnx(model, site="lab", version="v1", backbone_ref="meml:v1")
    b = site_model_onnx(model, site="lab", version="v1", backbone_ref="meml:v1")
    assert a == b and model.training


def test_bad_arguments(tmp_path: Path) -> None:
    model = _model("mse")
    with pytest.raises(ValueError, match="invalid site name"):
        export_site_model(model, tmp_path / "m.onnx", site="../x", version="v1", backbone_ref="b")
    with pytest.raises(ValueError, match="invalid version"):
        export_site_model(model, tmp_path / "m.onnx", site="x", version="1", backbone_ref="b")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match=r"junk\.onnx: not a readable ONNX model"):
        read_model_metadata(tmp_path / "junk.onnx")
    assert not (tmp_path / "m.onnx").exists()
