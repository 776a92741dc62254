"""ONNX export of site models (what the service serves), backbones and heads.

Contract (docs/architecture.md, "ONNX site model"): input ``csi`` float32
[batch, 8, 103, 2], outputs ``position`` [batch, 2] metres and, for nll models,
``sigma`` [batch, 2] metres, then (published site versions) ``features``
[batch, 128]; a dynamic batch axis; ``csipos.*`` metadata props
that the service reads instead of guessing.

We use torch's TorchScript-based exporter (``dynamo=False``): the torch.export
based one needs ``onnxscript``, which is not a dependency. Files are written
atomically (temp file beside the target, fsync, ``os.replace``).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch
from torch import nn

from training.nets import Backbone, Head, SiteModel
from training.repository import atomic_write_bytes, check_name, check_version, csipos_version

OPSET = 17
"""ONNX opset: supported by onnxruntime >= 1.14 and by torch's TorchScript exporter."""

META_PREFIX = "csipos."


class _SiteGraph(nn.Module):
    """SiteModel with tensor-only outputs (ONNX has no None); with ``features``, the
    backbone's output as a last output too (what out-of-site scoring needs)."""

    def __init__(self, model: SiteModel, features: bool = False) -> None:
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, csi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.model.backbone(csi)
        position, sigma = self.model.head(feats)
        out = (position,) if sigma is None else (position, sigma)
        return (*out, feats) if self.features else out


class _HeadGraph(nn.Module):
    def __init__(self, head: Head) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        position, sigma = self.head(features)
        return (position,) if sigma is None else (position, sigma)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    input_name: str,
    output_names: tuple[str, ...],
    metadata: Mapping[str, str],
    opset: int,
) -> bytes:
    """Trace ``module`` to an ONNX model with a dynamic batch axis and ``metadata`` props."""
    if not 13 <= opset <= 20:
        raise ValueError(f"opset must be between 13 and 20, got {opset}")
    axes = {name: {0: "batch"} for name in (input_name, *output_names)}
    with (
        _eval_mode(module),
        torch.no_grad(),
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory(prefix="csipos-onnx-") as tmp,
    ):
        # The legacy exporter announces its own deprecation on every call.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            module,
            (example,),
            Path(tmp) / "model.onnx",
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        proto = onnx.load(Path(tmp) / "model.onnx")
    meta = {f"{META_PREFIX}{k}": str(v) for k, v in metadata.items()}
    meta[f"{META_PREFIX}csipos_version"] = csipos_version()
    del proto.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def _csi_example(module: nn.Module, backbone: Backbone) -> torch.Tensor:
    # Batch 2, not 1, so the tracer cannot fold the batch size into a constant.
    generator = torch.Generator().manual_seed(0)
    shape = (2, *backbone.config.input_shape)
    return torch.randn(shape, generator=generator).to(_device(module))


def site_model_onnx(
    model: SiteModel,
    *,
    site: str,
    version: str,
    backbone_ref: str,
    opset: int = OPSET,
    features: bool = False,
) -> bytes:
    """The serialised ONNX site model (backbone + head in one graph) with its metadata.

    ``features=True`` adds a last output ``features`` [batch, 128] (the backbone's
    output, which the service scores for out-of-site detection, `training.novelty`).
    """
    check_name(site, "site name")
    check_version(version)
    outputs = (*model.outputs, "features") if features else model.outputs
    metadata = {
        "kind": "site",
        "site": site,
        "version": version,
        "loss": model.loss,
        "outputs": ",".join(outputs),
        "input_shape": ",".join(map(str, model.backbone.config.input_shape)),
        "backbone": backbone_ref,
    }
    example = _csi_example(model, model.backbone)
    return _to_onnx(_SiteGraph(model, features), example, "csi", outputs, metadata, opset)


def export_site_model(
    model: SiteModel,
    path: str | os.PathLike[str],
    *,
    site: str,
    version: str,
    backbone_ref: str,
    opset: int = OPSET,
    features: bool = False,
) -> Path:
    """Write the site model to ``path`` (atomically); ``backbone_ref`` is "name:version"."""
    data = site_model_onnx(
        model,
        site=site,
        version=version,
        backbone_ref=backbone_ref,
        opset=opset,
        features=features,
    )
    target = Path(path)
    atomic_write_bytes(target, data)
    return target


def export_backbone(
    backbone: Backbone,
    path: str | os.PathLike[str],
    *,
    name: str = "",
    version: str = "",
    opset: int = OPSET,
) -> Path:
    """Write the backbone (``csi`` [batch, 8, 103, 2] -> ``features`` [batch, 128])."""
    metadata = {
        "kind": "backbone",
        "name": name,
        "version": version,
        "outputs": "features",
        "input_shape": ",".join(map(str, backbone.config.input_shape)),
    }
    example = _csi_example(backbone, backbone)
    data = _to_onnx(backbone, example, "csi", ("features",), metadata, opset)
    target = Path(path)
    atomic_write_bytes(target, data)
    return target


def export_head(
    head: Head,
    path: str | os.PathLike[str],
    *,
    site: str = "",
    version: str = "",
    opset: int = OPSET,
) -> Path:
    """Write a head (``features`` [batch, 128] -> ``position`` and, for nll, ``sigma``)."""
    outputs = ("position", "sigma") if head.loss == "nll" else ("position",)
    metadata = {
        "kind": "head",
        "site": site,
        "version": version,
        "loss": head.loss,
        "outputs": ",".join(outputs),
        "input_shape": str(head.config.in_features),
    }
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((2, head.config.in_features), generator=generator).to(_device(head))
    data = _to_onnx(_HeadGraph(head), example, "features", outputs, metadata, opset)
    target = Path(path)
    atomic_write_bytes(target, data)
    return target


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``csipos.*`` metadata of an exported model, keys without the prefix.

    Raises ValueError naming the file when it is not an ONNX model or carries no
    csipos metadata.
    """
    try:
        proto = onnx.load(os.fspath(path), load_external_data=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a readable ONNX model: {exc}") from exc
    meta = {
        p.key[len(META_PREFIX) :]: p.value
        for p in proto.metadata_props
        if p.key.startswith(META_PREFIX)
    }
    if not meta:
        raise ValueError(f"{path}: ONNX model has no csipos.* metadata (not exported by csipos?)")
    return meta
