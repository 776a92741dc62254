"""Target training: a pre-trained backbone plus a fresh head on a new site (paper eq. 6).

The three modes are three phase lists for the one loop in `training.fit`:

- ``finetune``: every parameter from the start, at ``lr``;
- ``gradual``: head only (backbone frozen) until the validation loss stops
  improving, then everything at ``lr * unfreeze_lr_factor`` until it stops again;
- ``head``: head only throughout.

`adapt_site` is what the service runs in a worker process: split, train,
evaluate, publish to the model repository, activate.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from training.checkpoint import load_backbone, save_site_model
from training.data.fingerprints import Fingerprints, data_fingerprint
from training.fit import FitReport, Phase, ProgressFn, Task, fit
from training.losses import LossName, check_loss_name
from training.meml import TrainConfig, finish_head, split_train_val
from training.nets import Backbone, Head, HeadConfig, SiteModel
from training.repository import ModelRepository, check_name, parse_ref

log = logging.getLogger(__name__)

TargetMode = Literal["finetune", "gradual", "head"]
MODES: tuple[TargetMode, ...] = ("finetune", "gradual", "head")


def check_mode(mode: str) -> TargetMode:
    """Return ``mode`` as a `TargetMode`, or raise a ValueError listing the choices."""
    for m in MODES:
        if mode == m:
            return m
    raise ValueError(f"unknown target training mode {mode!r}: expected one of {', '.join(MODES)}")


def target_phases(mode: TargetMode, config: TrainConfig) -> list[Phase]:
    """The phase list of a target-training mode (see the module docstring)."""
    mode = check_mode(mode)
    e, p = config.epochs, config.patience
    if mode == "finetune":
        return [Phase("finetune", "all", config.lr, e, p)]
    if mode == "head":
        return [Phase("head", "head", config.lr, e, p)]
    return [
        Phase("head", "head", config.lr, e, p),
        Phase("unfrozen", "all", config.lr * config.unfreeze_lr_factor, e, p),
    ]


@dataclass
class TargetResult:
    """A trained site model with its fit report and validation metrics (metres)."""

    model: SiteModel
    report: FitReport
    metrics: dict[str, float]
    mode: TargetMode
    config: TrainConfig


def train_target(
    backbone: Backbone,
    train: Fingerprints,
    val: Fingerprints,
    config: TrainConfig,
    *,
    mode: TargetMode = "gradual",
    head_config: HeadConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    device: torch.device | str = "cpu",
) -> TargetResult:
    """Train a fresh head (and, by mode, the backbone) on the target's train split.

    ``backbone`` is copied, never changed, so one loaded backbone can serve many runs.
    """
    mode = check_mode(mode)
    backbone = copy.deepcopy(backbone)
    head = Head(head_config, loss=config.loss, seed=config.seed + 1)
    head.fit_position_normalisation(train.pos)
    task = Task.from_fingerprints("target", head, train, val)
    report = fit(
        backbone,
        [task],
        target_phases(mode, config),
        loss=config.loss,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        quiet=quiet,
        progress=progress,
        device=device,
    )
    backbone.cpu()
    head.cpu()
    metrics = finish_head(backbone, head, val, config)
    return TargetResult(SiteModel(backbone, head).eval(), report, metrics, mode, config)


@dataclass
class AdaptResult:
    """What `adapt_site` made: the site version, validation metrics, epochs per phase."""

    site: str
    version: str
    parent: tuple[str, str]
    metrics: dict[str, float]
    epochs: dict[str, int]
    samples: int
    wall_s: float


def adapt_site(
    repo: ModelRepository,
    site: str,
    data: Fingerprints,
    *,
    backbone: str | None = None,
    mode: TargetMode = "gradual",
    loss: LossName = "nll",
    val_fraction: float = 0.2,
    seed: int = 0,
    activate: bool = True,
    progress: ProgressFn | None = None,
    config: TrainConfig | None = None,
    quiet: bool = True,
) -> AdaptResult:
    """Train, publish and (unless ``activate=False``) activate a new version of ``site``.

    ``backbone`` is ``"name"`` (its active version) or ``"name:vN"``; None takes
    the repository's default backbone. ``val_fraction`` of ``data`` (split by
    ``seed``) is held out for early stopping and the reported metrics.
    ``config`` sets the other hyper-parameters; its loss, seed and
    val_fraction are replaced by the arguments here.
    """
    t0 = time.perf_counter()
    check_name(site, "site id")
    mode = check_mode(mode)
    loss = check_loss_name(loss)
    data.validate(group=site)
    name, version = parse_ref(backbone) if backbone is not None else (repo.default_backbone(), None)
    version = repo.resolve("backbone", name, version)
    base = config or TrainConfig()
    cfg = dataclasses.replace(base, loss=loss, seed=seed, val_fraction=val_fraction)
    train, val = split_train_val(data, cfg.val_fraction, cfg.seed)

    result = train_target(
        load_backbone(repo, name, version),
        train,
        val,
        cfg,
        mode=mode,
        quiet=quiet,
        progress=progress,
    )
    training: dict[str, Any] = {
        **cfg.to_dict(),
        "mode": mode,
        "backbone": f"{name}:{version}",
        "train_samples": len(train),
        "val_samples": len(val),
        "epochs_run": result.report.epochs,
    }
    site_version = save_site_model(
        repo,
        site,
        result.model,
        parent=(name, version),
        config=training,
        data_fingerprint=data_fingerprint(data),
        metrics=result.metrics,
        activate=activate,
    )
    wall = time.perf_counter() - t0
    log.info("site %s %s: val ME %.3f m in %.1f s", site, site_version, result.metrics["me"], wall)
    return AdaptResult(
        site=site,
        version=site_version,
        parent=(name, version),
        metrics=result.metrics,
        epochs=result.report.epochs,
        samples=len(data),
        wall_s=wall,
    )
