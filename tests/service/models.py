"""Tiny site models for the service tests, built directly as ONNX graphs.

A linear model (position = flatten(csi) @ W + b, sigma = softplus(flatten(csi) @ V) + 0.5)
honours the ONNX site-model contract and lets tests compute the expected answer with numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.data.fingerprints import Fingerprints
from training.fusion import JOINT, JOINT_FILES
from training.repository import ModelRepository


def weights(seed: int, antennas: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = antennas * 103 * 2
    w = (rng.standard_normal((features, 2)) * 0.01).astype(np.float32)
    v = (rng.standard_normal((features, 2)) * 0.01).astype(np.float32)
    return w, v


def expected(
    csi: np.ndarray, seed: int, bias: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """What the linear model answers, in numpy (float64 then float32); ``csi`` [B, A, 103,
    2] with A = 8 antennas, or a joint model's K BSs stacked (A = 8K)."""
    w, v = weights(seed, csi.shape[1])
    flat = csi.reshape(csi.shape[0], -1).astype(np.float64)
    pos = flat @ w + np.asarray(bias)
    sigma = np.log1p(np.exp(flat @ v)) + 0.5
    return pos.astype(np.float32), sigma.astype(np.float32)


def linear_site_onnx(
    site: str,
    version: str,
    loss: str,
    *,
    seed: int = 0,
    bias: tuple[float, float] = (0.0, 0.0),
    antennas: int = 8,
) -> bytes:
    """The linear model's graph; ``antennas`` > 8: a joint head's stacked input."""
    w, v = weights(seed, antennas)
    features = antennas * 103 * 2
    nodes = [
        helper.make_node("Reshape", ["csi", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["position"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "b"),
    ]
    outputs = [helper.make_tensor_value_info("position", TensorProto.FLOAT, ["batch", 2])]
    if loss == "nll":
        nodes += [
            helper.make_node("MatMul", ["flat", "V"], ["xv"]),
            helper.make_node("Softplus", ["xv"], ["sp"]),
            helper.make_node("Add", ["sp", "floor"], ["sigma"]),
        ]
        inits += [
            numpy_helper.from_array(v, "V"),
            numpy_helper.from_array(np.array([0.5, 0.5], dtype=np.float32), "floor"),
        ]
        outputs.append(helper.make_tensor_value_info("sigma", TensorProto.FLOAT, ["batch", 2]))
    graph = helper.make_graph(
        nodes,
        "site",
        [helper.make_tensor_value_info("csi", TensorProto.FLOAT, ["batch", antennas, 103, 2])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {
        "csipos.site": site,
        "csipos.version": version,
        "csipos.loss": loss,
        "csipos.outputs": ",".join(o.name for o in outputs),
        "csipos.input_shape": f"{antennas},103,2",
        "csipos.backbone": "test:v1",
    }
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def publish_linear(
    repo: ModelRepository,
    site: str,
    loss: str,
    *,
    seed: int = 0,
    bias: tuple[float, float] = (0.0, 0.0),
    activate: bool = True,
    metrics: dict[str, float] | None = None,
) -> str:
    """Publish a linear site model through the real repository; returns its version."""

    def write(directory: Path, version: str) -> None:
        onnx_bytes = linear_site_onnx(site, version, loss, seed=seed, bias=bias)
        (directory / "model.onnx").write_bytes(onnx_bytes)

    return repo.publish_site(
        site,
        write,
        loss=loss,
        parent=("test", "v1"),
        config={"seed": seed, "bias": list(bias)},
        metrics=metrics or {"val_me": 1.0},
        activate=activate,
    )


def publish_novelty_site(repo: ModelRepository, site: str) -> Fingerprints:
    """Publish a real (untrained) NLL site model with its out-of-site detector, fitted on
    toy fingerprints of one room; returns 100 more fingerprints of that room (in site)."""
    import torch

    from tests.training.toychannel import toy_fingerprints
    from training.checkpoint import save_site_model
    from training.nets import Backbone, Head, SiteModel
    from training.novelty import SINGLE_HEAD, fit_site_novelty

    data = toy_fingerprints(400, (5.0, -2.0), seed=7, size=(8.0, 6.0))
    train, val = data.subset(np.arange(200)), data.subset(np.arange(200, 300))
    torch.manual_seed(0)
    head = Head(loss="nll", seed=1)
    head.fit_position_normalisation(train.pos)
    model = SiteModel(Backbone(seed=0), head).eval()
    novelty = fit_site_novelty(model.backbone, train, val)
    assert novelty is not None
    save_site_model(repo, site, model, parent=None, novelty={SINGLE_HEAD: novelty})
    return data.subset(np.arange(300, 400))


def publish_linear_multi_bs(
    repo: ModelRepository,
    site: str,
    loss: str,
    stations: dict[str, tuple[int, tuple[float, float]]],
    *,
    rmse: tuple[float, float] = (1.0, 2.0),
    inflation: float = 1.0,
    inflation_by_set: dict[str, Any] | None = None,
    activate: bool = True,
    method: str | None = None,
    joint: tuple[int, tuple[float, float]] | None = None,
    joint_file: bool = True,
    joint_subsets: bool = False,
    label_spacing_m: float | None = None,
) -> str:
    """A multi-BS site of linear models: {bs id: (seed, bias)}; MSE ones fuse with `rmse`;
    `method` names the fusion method in the manifest (None: none, the product). ``joint``
    (seed, bias): a linear joint head on the BSs' stacked CSI, named in the manifest and
    written unless ``joint_file`` is False (a broken version); ``joint_subsets``: the
    manifest says it answers for any 2+ BSs (`training.fusion.JOINT_MIN_HEARD`);
    ``inflation_by_set``: the manifest's factor per set of BSs heard; ``label_spacing_m``:
    the manifest's label spacing (the tracker's error length)."""

    def write(directory: Path, version: str) -> None:
        for bs, (seed, bias) in stations.items():
            onnx_bytes = linear_site_onnx(site, version, loss, seed=seed, bias=bias)
            (directory / f"model.{bs}.onnx").write_bytes(onnx_bytes)
        if joint is not None and joint_file:
            stacked = linear_site_onnx(
                site, version, loss, seed=joint[0], bias=joint[1], antennas=8 * len(stations)
            )
            (directory / JOINT_FILES[0]).write_bytes(stacked)

    per_bs = {bs: {"me": 1.0, "rmse_x": rmse[0], "rmse_y": rmse[1]} for bs in stations}
    return repo.publish_site(
        site,
        write,
        loss=loss,
        parent=("test", "v1"),
        config={"base_stations": list(stations)},
        metrics={
            "me": 0.5,
            "bs": per_bs,
            **({"label_spacing_m": label_spacing_m} if label_spacing_m is not None else {}),
            "fusion": {
                "inflation": inflation,
                **({"inflation_by_set": inflation_by_set} if inflation_by_set else {}),
                **({"method": method} if method else {}),
                **(
                    {
                        JOINT: {
                            "me": 0.4,
                            "base_stations": list(stations),
                            **({"subsets": True} if joint_subsets else {}),
                        }
                    }
                    if joint
                    else {}
                ),
            },
        },
        activate=activate,
        base_stations=list(stations),
    )
