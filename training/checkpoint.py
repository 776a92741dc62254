"""Save and load backbones and site models through the model repository.

What a version holds:

- backbone: ``backbone.pt`` (config + state dict).
- site: ``model.onnx`` (backbone + head, what the service serves),
  ``head.pt`` (config + state dict, position normalisation included) and
  ``backbone.pt``. (Separate ``backbone.onnx``/``head.onnx`` were written once and
  never read; ``csipos export`` makes a backbone ONNX file on demand.) The site keeps
  its own copy of the backbone weights because ``gradual`` and ``finetune`` training
  change them; the manifest's ``parent``
  still names the backbone version it started from.

``.pt`` files hold only plain data and tensors, so they load with
``torch.load(weights_only=True)`` (no arbitrary code from a shared volume).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from training.consistency import FILE as CONSISTENCY_FILE
from training.consistency import Consistency, consistency_bytes
from training.export import export_site_model
from training.fusion import JOINT_FILES
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel
from training.novelty import (
    BACKGROUND_FILE,
    Background,
    NoveltyModel,
    background_bytes,
    novelty_bytes,
    read_background,
    read_novelty,
)
from training.novelty import FILE as NOVELTY_FILE
from training.repository import (
    ModelRepository,
    RepositoryError,
    check_name,
    check_version,
)

T = TypeVar("T")
FORMAT = 1
"""Version of the ``.pt`` layout below; loaders refuse other values."""


def _checkpoint(config: Any, module: torch.nn.Module) -> dict[str, Any]:
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return {"format": FORMAT, "config": dataclasses.asdict(config), "state_dict": state}


def _save_pt(obj: dict[str, Any], path: Path) -> None:
    with path.open("wb") as fh:
        torch.save(obj, fh)


def _load_pt(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.is_file():
        raise RepositoryError(f"{path} is missing: the version is incomplete or not a csipos one")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RepositoryError(f"{path}: unreadable checkpoint: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise RepositoryError(f"{path}: unknown checkpoint format (expected format {FORMAT})")
    return obj


def _restore(module: torch.nn.Module, obj: Mapping[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(obj["state_dict"])
    except (KeyError, RuntimeError) as exc:
        raise RepositoryError(f"{path}: weights do not fit the stored config: {exc}") from exc


def _parent_ref(parent: tuple[str, str] | None) -> str:
    if parent is None:
        return ""
    name, version = parent
    return f"{check_name(name, 'parent backbone name')}:{check_version(version)}"


def save_backbone(
    repo: ModelRepository,
    name: str,
    backbone: Backbone,
    *,
    loss: str,
    config: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    parent: tuple[str, str] | None = None,
    activate: bool = True,
    background: Background | None = None,
) -> str:
    """Publish ``backbone`` as a new version of backbone ``name``; returns the version.

    ``loss`` is the source-training loss; ``config`` the training configuration;
    ``background`` (its corpus's channel statistics, `training.novelty`) goes into
    ``background.npz`` for the out-of-site detectors of the sites adapted from it.
    """
    ckpt = _checkpoint(backbone.config, backbone)
    background_data = None if background is None else background_bytes(background)

    def write(directory: Path, version: str) -> None:
        _save_pt(ckpt, directory / "backbone.pt")
        if background_data is not None:
            (directory / BACKGROUND_FILE).write_bytes(background_data)

    return repo.publish_backbone(
        name,
        write,
        loss=loss,
        config=config,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
        parent=parent,
        activate=activate,
    )


def load_backbone(
    repo: ModelRepository,
    name: str,
    version: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> Backbone:
    """The backbone ``name`` at ``version`` (the active one when None)."""
    path = repo.path("backbone", name, version) / "backbone.pt"
    obj = _load_pt(path, map_location)
    try:
        backbone = Backbone(BackboneConfig(**obj["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{path}: bad backbone config: {exc}") from exc
    _restore(backbone, obj, path)
    return backbone


def load_background(
    repo: ModelRepository, name: str, version: str | None = None
) -> Background | None:
    """The corpus background of backbone ``name`` at ``version``; None for a backbone
    published without one (before format 3 detectors, or trained outside `csipos train`)."""
    return _read_optional(repo.path("backbone", name, version) / BACKGROUND_FILE, read_background)


def _read_optional(path: Path, reader: Callable[[bytes, str], T]) -> T | None:
    """An optional file of a version read by ``reader``: None when absent, a
    RepositoryError naming it when broken."""
    if not path.is_file():
        return None
    try:
        return reader(path.read_bytes(), str(path))
    except ValueError as exc:
        raise RepositoryError(str(exc)) from exc


def save_site_model(
    repo: ModelRepository,
    site: str,
    model: SiteModel,
    *,
    parent: tuple[str, str] | None,
    config: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    activate: bool = True,
    novelty: Mapping[str, NoveltyModel] | None = None,
) -> str:
    """Publish ``model`` as a new version of ``site`` (ONNX + weights); returns the version.

    ``parent`` is the (backbone name, version) the model was trained from, or None
    for a model trained from scratch. The loss comes from the model's head. The ONNX
    model also outputs the backbone's ``features``; ``novelty`` (one model per head,
    `training.novelty`) goes into ``novelty.npz``.
    """
    backbone_ref = _parent_ref(parent)
    head_ckpt = _checkpoint(model.head.config, model.head)
    backbone_ckpt = _checkpoint(model.backbone.config, model.backbone)
    novelty_data = novelty_bytes(novelty) if novelty else None

    def write(directory: Path, version: str) -> None:
        export_site_model(
            model,
            directory / "model.onnx",
            site=site,
            version=version,
            backbone_ref=backbone_ref,
            features=True,
        )
        _save_pt(head_ckpt, directory / "head.pt")
        _save_pt(backbone_ckpt, directory / "backbone.pt")
        if novelty_data is not None:
            (directory / NOVELTY_FILE).write_bytes(novelty_data)

    return repo.publish_site(
        site,
        write,
        loss=model.loss,
        parent=parent,
        config=config,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
        activate=activate,
    )


def site_model_files(bs: str | None) -> tuple[str, str, str]:
    """(ONNX, head, backbone) file names of a site version: one set per BS of a multi-BS site."""
    if bs is None:
        return "model.onnx", "head.pt", "backbone.pt"
    return f"model.{bs}.onnx", f"head.{bs}.pt", f"backbone.{bs}.pt"


def save_multi_bs_site_model(
    repo: ModelRepository,
    site: str,
    models: Mapping[str, SiteModel],
    *,
    parent: tuple[str, str] | None,
    config: Mapping[str, Any] | None = None,
    data_fingerprint: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    activate: bool = True,
    novelty: Mapping[str, NoveltyModel] | None = None,
    joint: SiteModel | None = None,
    consistency: Consistency | None = None,
) -> str:
    """Publish one model per base station as one version of ``site`` (files per
    `site_model_files`); the manifest lists the BSs in order. Every model has one loss.
    With ``novelty`` (one model per BS id, `training.novelty`) every ONNX model also
    outputs the backbone's ``features`` and the models go into ``novelty.npz``.
    ``joint``: the joint head's model (`training.fusion.JOINT_FILES`; input every BS's
    CSI stacked on the antenna axis in the manifest's BS order), exported without
    features. ``consistency``: the UE-level cross-BS detector (`training.consistency`),
    into ``consistency.npz``."""
    losses = {m.loss for m in models.values()}
    if len(losses) != 1:
        raise ValueError(f"the base stations' models must share one loss, got {sorted(losses)}")
    backbone_ref = _parent_ref(parent)
    ckpts = {
        bs: (_checkpoint(m.head.config, m.head), _checkpoint(m.backbone.config, m.backbone))
        for bs, m in models.items()
    }

    novelty_data = novelty_bytes(novelty) if novelty else None
    consistency_data = None if consistency is None else consistency_bytes(consistency)

    def write(directory: Path, version: str) -> None:
        for bs, model in models.items():
            onnx_name, head_name, backbone_name = site_model_files(bs)
            export_site_model(
                model,
                directory / onnx_name,
                site=site,
                version=version,
                backbone_ref=backbone_ref,
                features=novelty_data is not None,
            )
            _save_pt(ckpts[bs][0], directory / head_name)
            _save_pt(ckpts[bs][1], directory / backbone_name)
        if novelty_data is not None:
            (directory / NOVELTY_FILE).write_bytes(novelty_data)
        if consistency_data is not None:
            (directory / CONSISTENCY_FILE).write_bytes(consistency_data)
        if joint is not None:
            export_site_model(
                joint,
                directory / JOINT_FILES[0],
                site=site,
                version=version,
                backbone_ref=backbone_ref,
            )
            _save_pt(_checkpoint(joint.head.config, joint.head), directory / JOINT_FILES[1])

    return repo.publish_site(
        site,
        write,
        loss=losses.pop(),
        parent=parent,
        config=config,
        data_fingerprint=data_fingerprint,
        metrics=metrics,
        activate=activate,
        base_stations=list(models),
    )


def load_site_model(
    repo: ModelRepository,
    site: str,
    version: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
    bs: str | None = None,
) -> SiteModel:
    """The site model of ``site`` at ``version`` (the active one when None), in eval mode;
    ``bs`` picks one base station's model of a multi-BS site."""
    vdir = repo.path("site", site, version)
    _, head_name, backbone_name = site_model_files(bs)
    if bs is None and not (vdir / head_name).exists():
        stations = repo.manifest("site", site, version).get("base_stations")
        if stations:
            raise RepositoryError(
                f"site {site} {vdir.name} has one model per base station {stations}; name one"
            )
    head_obj = _load_pt(vdir / head_name, map_location)
    backbone_obj = _load_pt(vdir / backbone_name, map_location)
    try:
        head = Head(HeadConfig(**head_obj["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{vdir / 'head.pt'}: bad head config: {exc}") from exc
    try:
        backbone = Backbone(BackboneConfig(**backbone_obj["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RepositoryError(f"{vdir / 'backbone.pt'}: bad backbone config: {exc}") from exc
    _restore(head, head_obj, vdir / head_name)
    _restore(backbone, backbone_obj, vdir / backbone_name)
    return SiteModel(backbone, head).eval()


def load_novelty(
    repo: ModelRepository, site: str, version: str | None = None
) -> dict[str, NoveltyModel] | None:
    """The novelty models (by head) of ``site`` at ``version``; None for a version
    published without one (before out-of-site detection, or too little validation data)."""
    return _read_optional(repo.path("site", site, version) / NOVELTY_FILE, read_novelty)
