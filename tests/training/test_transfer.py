"""Target training modes, gradual-unfreezing phase order, and `adapt_site`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.toychannel import toy_fingerprints
from training.checkpoint import load_site_model, save_backbone
from training.fit import Task, fit
from training.meml import TrainConfig, split_train_val
from training.nets import Backbone, Head
from training.repository import InvalidName, ModelRepository, NotFound
from training.transfer import adapt_site, check_mode, target_phases, train_target

TARGET = toy_fingerprints(160, (5.0, -2.0), seed=7, size=(8.0, 6.0))
CFG = TrainConfig(loss="nll", epochs=3, patience=2, batch_size=32, lr=2e-3, val_fraction=0.25)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_modes_are_phase_lists() -> None:
    cfg = TrainConfig(lr=1e-3, unfreeze_lr_factor=0.1)
    gradual = target_phases("gradual", cfg)
    assert [(p.name, p.train) for p in gradual] == [("head", "head"), ("unfrozen", "all")]
    assert gradual[1].lr == pytest.approx(1e-4)
    assert [p.train for p in target_phases("finetune", cfg)] == ["all"]
    assert [p.train for p in target_phases("head", cfg)] == ["head"]
    with pytest.raises(ValueError, match="expected one of finetune, gradual, head"):
        check_mode("freeze")


def test_gradual_head_steps_leave_backbone_bit_identical_then_unfreeze() -> None:
    backbone = Backbone(seed=0)
    original = state(backbone)
    train, val = split_train_val(TARGET, 0.25, 0)
    head = Head(loss="nll", seed=1)
    head.fit_position_normalisation(train.pos)
    seen: list[tuple[str, bool]] = []

    def check(p: dict[str, Any]) -> None:
        now = state(backbone)
        seen.append((p["phase"], all(torch.equal(now[k], original[k]) for k in now)))

    fit(
        backbone,
        [Task.from_fingerprints("t", head, train, val)],
        target_phases("gradual", TrainConfig(epochs=3, patience=3, lr=2e-3)),
        loss="nll",
        batch_size=32,
        progress=check,
        quiet=True,
    )
    assert seen == [("head", True)] * 3 + [("unfrozen", False)] * 3


def test_head_mode_keeps_the_backbone_and_does_not_touch_the_callers() -> None:
    backbone = Backbone(seed=0)
    original = state(backbone)
    train, val = split_train_val(TARGET, 0.25, 0)
    head_only = train_target(backbone, train, val, CFG, mode="head", quiet=True)
    assert all(
        torch.equal(v, original[k]) for k, v in head_only.model.backbone.state_dict().items()
    )
    finetuned = train_target(backbone, train, val, CFG, mode="finetune", quiet=True)
    tuned = finetuned.model.backbone.state_dict()
    assert any(not torch.equal(v, original[k]) for k, v in tuned.items())
    assert all(torch.equal(v, original[k]) for k, v in backbone.state_dict().items())
    assert set(finetuned.report.epochs) == {"finetune"}
    assert {"me", "crps", "within_1sigma"} <= set(finetuned.metrics)


@pytest.fixture()
def repo(tmp_path: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    return repo


def test_adapt_site_publishes_activates_and_reports(repo: ModelRepository) -> None:
    progress: list[dict[str, Any]] = []
    result = adapt_site(
        repo,
        "lab",
        TARGET,
        mode="gradual",
        loss="nll",
        val_fraction=0.25,
        seed=1,
        progress=progress.append,
        config=CFG,
    )
    assert result.version == "v1" and repo.active_version("site", "lab") == "v1"
    assert result.parent == ("meml", "v1")
    assert list(result.epochs) == ["head", "unfrozen"]
    assert result.samples == len(TARGET) and result.wall_s > 0
    assert {"me", "median", "p90", "crps", "within_1sigma", "within_2sigma"} <= set(result.metrics)
    assert {p["phase"] for p in progress} == {"head", "unfrozen"}
    assert set(progress[0]) == {"phase", "epoch", "val_me", "best_val_me"}
    manifest = repo.manifest("site", "lab", "v1")
    assert manifest["parent"] == {"backbone": "meml", "version": "v1"}
    assert manifest["config"]["mode"] == "gradual" and manifest["loss"] == "nll"
    assert manifest["metrics"]["me"] == pytest.approx(result.metrics["me"])
    model = load_site_model(repo, "lab")
    _, sigma = model(torch.from_numpy(TARGET.csi[:2]))
    assert sigma is not None and bool((sigma > 0).all())

    again = adapt_site(repo, "lab", TARGET, mode="head", loss="mse", activate=False, config=CFG)
    assert again.version == "v2" and repo.active_version("site", "lab") == "v1"


def test_adapt_site_is_deterministic(repo: ModelRepository) -> None:
    a = adapt_site(repo, "a", TARGET, mode="finetune", seed=5, config=CFG)
    b = adapt_site(repo, "b", TARGET, mode="finetune", seed=5, config=CFG)
    assert a.metrics == b.metrics
    ha, hb = (load_site_model(repo, s).head.state_dict() for s in ("a", "b"))
    assert all(torch.equal(ha[k], hb[k]) for k in ha)


def test_adapt_site_rejects_bad_input_before_training(repo: ModelRepository) -> None:
    with pytest.raises(InvalidName):
        adapt_site(repo, "../etc", TARGET, config=CFG)
    with pytest.raises(NotFound):
        adapt_site(repo, "lab", TARGET, backbone="nope", config=CFG)
    with pytest.raises(ValueError, match=r"unknown loss 'l2'"):
        adapt_site(repo, "lab", TARGET, loss="l2", config=CFG)  # type: ignore[arg-type]
    bad = toy_fingerprints(10, (0.0, 0.0), seed=0)
    bad.pos = bad.pos.astype(np.float64)
    with pytest.raises(ValueError, match="pos"):
        adapt_site(repo, "lab", bad, config=CFG)
    assert repo.list_sites() == []
