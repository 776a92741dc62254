"""Target training modes, gradual-unfreezing phase order, and `adapt_site`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.fast import FAST
from tests.training.toychannel import toy_fingerprints
from training.checkpoint import load_site_model, save_backbone
from training.config import TrainConfig, check_mode
from training.correlogram import label_spacing
from training.data.splits import split_train_val
from training.fit import Task, fit
from training.nets import Backbone, Head
from training.repository import InvalidName, ModelRepository, NotFound
from training.transfer import (
    adapt_site,
    auto_candidates,
    choose_mode,
    holdout_split,
    target_phases,
    train_target,
)

TARGET = toy_fingerprints(160, (5.0, -2.0), seed=7, size=(8.0, 6.0))
CFG = FAST.replace(epochs=3, patience=2, head_warmup_steps=4)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_modes_are_phase_lists() -> None:
    cfg = TrainConfig(lr=1e-3, unfreeze_lr_factor=0.5, head_warmup_steps=150)
    gradual = target_phases("gradual", cfg, 480)
    assert [(p.name, p.train) for p in gradual] == [("warmup", "head"), ("unfrozen", "all")]
    assert gradual[0].budget.max_steps == gradual[0].budget.min_steps == 150  # bounded warm-up
    assert gradual[1].lr == pytest.approx(5e-4)
    assert gradual[1].budget == cfg.budget(480)  # its own, full budget and patience
    paper = target_phases("gradual-paper", cfg, 480)
    assert [(p.name, p.train) for p in paper] == [("head", "head"), ("unfrozen", "all")]
    assert paper[1].lr == pytest.approx(1e-4)  # the paper's x0.1
    assert [p.train for p in target_phases("finetune", cfg, 480)] == ["all"]
    assert [p.train for p in target_phases("head", cfg, 480)] == ["head"]
    with pytest.raises(ValueError, match="expected one of auto, finetune, gradual"):
        check_mode("freeze")
    with pytest.raises(ValueError, match="auto is a choice between modes"):
        target_phases("auto", cfg, 480)


def test_gradual_warmup_leaves_backbone_bit_identical_then_unfreezes() -> None:
    backbone = Backbone(seed=0)
    original = state(backbone)
    train, val = split_train_val(TARGET, 0.25, 0)
    head = Head(loss="nll", seed=1)
    head.fit_position_normalisation(train.pos)
    seen: list[tuple[str, bool]] = []

    def check(p: dict[str, Any]) -> None:
        now = state(backbone)
        seen.append((p["phase"], all(torch.equal(now[k], original[k]) for k in now)))

    cfg = TrainConfig(epochs=3, min_steps=0, patience=3, lr=2e-3, head_warmup_steps=8)
    phases = target_phases("gradual", cfg, len(train))
    fit(
        backbone,
        [Task.from_fingerprints("t", head, train, val)],
        phases,
        loss="nll",
        batch_size=32,
        progress=check,
        quiet=True,
    )
    assert [s for s in seen if s[0] == "warmup"] == [("warmup", True)]
    assert [s for s in seen if s[0] == "unfrozen"] and all(
        not same for name, same in seen if name == "unfrozen"
    )


def test_head_mode_keeps_the_backbone_and_does_not_touch_the_callers() -> None:
    backbone = Backbone(seed=0)
    original = state(backbone)
    train, val = split_train_val(TARGET, 0.25, 0)
    head_only = train_target(backbone, train, val, CFG, mode="head", quiet=True)
    assert all(
        torch.equal(v, original[k]) for k, v in head_only.model.backbone.state_dict().items()
    )
    assert set(head_only.report.steps) == {"warmup", "head"}
    finetuned = train_target(backbone, train, val, CFG, mode="finetune", quiet=True)
    tuned = finetuned.model.backbone.state_dict()
    assert any(not torch.equal(v, original[k]) for k, v in tuned.items())
    assert all(torch.equal(v, original[k]) for k, v in backbone.state_dict().items())
    assert set(finetuned.report.epochs) == {"finetune"}
    assert {"me", "crps", "within_1sigma"} <= set(finetuned.metrics)


def test_auto_trains_every_candidate_and_reports_the_choice() -> None:
    """A random backbone: head-only training on its features is far worse than training
    every layer, so auto must not pick it; every candidate's score is recorded."""
    train, val = split_train_val(TARGET, 0.25, 0)
    cfg = CFG.replace(epochs=8, auto_min_val=1)
    result = train_target(Backbone(seed=0), train, val, cfg, mode="auto", quiet=True)
    assert result.mode == "auto" and result.chosen in ("finetune", "gradual")
    assert set(result.candidates) == {"finetune", "gradual", "head"}
    c = result.candidates
    assert c["head"]["val_score"] > c[result.chosen]["val_score"]
    assert c["head"]["val_me"] > 1.2 * c[result.chosen]["val_me"]
    assert result.reason and result.summary()["chosen_mode"] == result.chosen
    assert c["finetune"]["folds"] == 1.0


def test_auto_with_calibrated_selection_compares_the_nll_after_sigma_s_factor() -> None:
    """The score is invariant to a per-axis factor on sigma: the kept model's (already
    calibrated) predictions give the same value as the candidate's recorded score."""
    from training.fit import predict
    from training.metrics import nll_per_point

    train, val = split_train_val(TARGET, 0.25, 0)
    cfg = CFG.replace(epochs=8, auto_min_val=1, select="calibrated")
    result = train_target(Backbone(seed=0), train, val, cfg, mode="auto", quiet=True)
    pos, sigma = predict(result.model.backbone, result.model.head, torch.from_numpy(val.csi))
    assert sigma is not None
    err, sig = pos.double().numpy() - val.pos, sigma.double().numpy()
    raw = nll_per_point(pos.numpy(), sig, val.pos).mean()
    factor = np.sqrt(np.mean(np.square(err / sig), axis=0))
    calibrated = nll_per_point(pos.numpy(), sig * factor, val.pos).mean()
    assert result.candidates[result.chosen]["val_score"] == pytest.approx(calibrated, rel=1e-4)
    assert calibrated <= raw


def test_auto_uses_several_validation_splits_when_validation_is_small() -> None:
    train, val = split_train_val(TARGET, 0.25, 0)
    seen: set[str] = set()
    cfg = CFG.replace(auto_folds=3, auto_min_val=100)  # 40 validation samples < 100
    result = train_target(
        Backbone(seed=0), train, val, cfg, mode="auto", quiet=True,
        progress=lambda p: seen.add(str(p.get("candidate"))),
    )  # fmt: skip
    assert result.candidates["finetune"]["folds"] == 3.0
    assert result.candidates["finetune"]["n_val"] == 3 * len(val)
    assert {"finetune[1/3]", "gradual[3/3]", "head[2/3]"} <= seen


def test_auto_picks_the_clearly_better_mode_and_keeps_finetune_on_a_tie() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.5, 200)
    me = {"finetune": [1.0], "gradual": [1.0], "head": [0.5]}
    clear = {"finetune": base, "gradual": base + 0.01, "head": base - 0.8}
    chosen, reason, cand = choose_mode(clear, me, 1)  # type: ignore[arg-type]
    assert chosen == "head" and "beats finetune" in reason
    assert cand["head"]["diff_vs_finetune"] == pytest.approx(-0.8)
    # gradual is lower on average by 0.01, but the paired differences spread by 0.5.
    noisy = {"finetune": base, "gradual": base + np.tile([0.49, -0.51], 100), "head": base + 1}
    chosen, reason, _ = choose_mode(noisy, me, 1)  # type: ignore[arg-type]
    assert chosen == "finetune"


def test_auto_weighs_a_scratch_candidate_from_enough_labels() -> None:
    """From `auto_scratch_min` labels `auto` also trains from random initialisation, so a
    backbone that does not suit the site cannot hold it back (here a dead one: all zeros,
    which no mode can train out of); below it, no scratch run is spent."""
    train, val = split_train_val(TARGET, 0.25, 0)
    dead = Backbone(seed=0)
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    cfg = CFG.replace(epochs=8, auto_min_val=1, auto_scratch_min=len(TARGET))
    result = train_target(dead, train, val, cfg, mode="auto", quiet=True)
    assert set(result.candidates) == {"finetune", "gradual", "head", "scratch", "fresh-dense"}
    assert result.chosen == "scratch" and "scratch beats finetune" in result.reason
    assert result.summary()["chosen_mode"] == "scratch"
    alone = train_target(None, train, val, cfg, mode="finetune", quiet=True)
    for k, v in alone.model.state_dict().items():  # the same run as scratch at a site
        torch.testing.assert_close(result.model.state_dict()[k], v)
    assert result.metrics["me"] == pytest.approx(alone.metrics["me"])
    fewer = train_target(
        dead, train, val, cfg.replace(auto_scratch_min=len(TARGET) + 1), mode="auto", quiet=True
    )
    assert set(fewer.candidates) == {"finetune", "gradual", "head"} and fewer.chosen != "scratch"
    with pytest.raises(ValueError, match="auto_scratch_min"):
        CFG.replace(auto_scratch_min=1)


def test_auto_weighs_a_fresh_dense_candidate_from_enough_labels() -> None:
    """From `auto_scratch_min` labels `auto` also fine-tunes the backbone with its `dense`
    layer drawn afresh. Here the convolutions are trained on the site and the `dense`
    layer is saturated (every feature stuck at ELU's floor, no gradient through it), so
    every mode that keeps it fails and the candidate that re-draws it wins; it is the
    same run as fine-tuning `with_fresh_dense(seed)` by hand."""
    train, val = split_train_val(TARGET, 0.25, 0)
    cfg = CFG.replace(epochs=8, auto_min_val=1, auto_scratch_min=len(TARGET))
    trained = train_target(Backbone(seed=0), train, val, cfg, mode="finetune", quiet=True)
    stuck = trained.model.backbone
    with torch.no_grad():
        stuck.dense.bias.fill_(-60.0)
    runs = auto_candidates(stuck, train, val, cfg)
    assert set(runs.scores) == {"finetune", "gradual", "head", "scratch", "fresh-dense"}
    assert runs.scores["fresh-dense"].mean() < runs.scores["finetune"].mean() - 0.5
    result = train_target(stuck, train, val, cfg, mode="auto", quiet=True)
    assert result.chosen == "fresh-dense" and "fresh-dense beats finetune" in result.reason
    fresh = stuck.with_fresh_dense(cfg.seed)
    by_hand = train_target(fresh, train, val, cfg, mode="finetune", quiet=True)
    for k, v in by_hand.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[k], v, rtol=0, atol=0)
    fewer = auto_candidates(stuck, train, val, cfg.replace(auto_scratch_min=len(TARGET) + 1))
    assert set(fewer.scores) == {"finetune", "gradual", "head"}


def test_auto_leaves_gradual_out_from_auto_gradual_max_labels() -> None:
    """From `auto_gradual_max` labelled samples `auto` spends nothing on `gradual`; the
    other candidates are the same runs, so only the choice among fewer can change."""
    train, val = split_train_val(TARGET, 0.25, 0)
    cfg = CFG.replace(epochs=8, auto_min_val=1, auto_gradual_max=len(TARGET))
    fewer = auto_candidates(Backbone(seed=0), train, val, cfg)
    every = auto_candidates(
        Backbone(seed=0), train, val, cfg.replace(auto_gradual_max=len(TARGET) + 1)
    )
    assert set(fewer.scores) == {"finetune", "head"}
    assert set(every.scores) == {"finetune", "gradual", "head"}
    for mode in fewer.scores:
        np.testing.assert_array_equal(fewer.scores[mode], every.scores[mode])
    with pytest.raises(ValueError, match="auto_gradual_max"):
        CFG.replace(auto_gradual_max=1)


def test_the_anchor_weight_holds_a_finetuned_backbone_near_the_pretrained_one() -> None:
    backbone = Backbone(seed=0)
    original = state(backbone)
    train, val = split_train_val(TARGET, 0.25, 0)

    def drift(weight: float) -> float:
        cfg = CFG.replace(anchor_weight=weight, epochs=6, patience=6)
        tuned = train_target(backbone, train, val, cfg, mode="finetune", quiet=True)
        now = tuned.model.backbone.state_dict()
        return float(sum(((now[k] - v) ** 2).sum() for k, v in original.items()))

    free, held = drift(0.0), drift(100.0)
    assert free > 0 and held < 0.5 * free


def test_scratch_is_a_target_run_without_a_backbone() -> None:
    train, val = split_train_val(TARGET, 0.25, 0)
    result = train_target(None, train, val, CFG, mode="auto", quiet=True)
    assert result.chosen == "finetune" and "no backbone" in result.reason
    assert set(result.report.steps) == {"train"}
    with pytest.raises(ValueError, match="needs a pre-trained backbone"):
        train_target(None, train, val, CFG, mode="head", quiet=True)


@pytest.mark.parametrize("backbone", [Backbone(seed=0), None], ids=["backbone", "scratch"])
def test_target_runs_calibrate_with_their_training_split_as_the_reference(
    backbone: Backbone | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.calibration

    seen: list[int | None] = []
    calibrate = training.calibration.calibrate_sigma

    def spy(*args: Any, reference: Any = None, **kwargs: Any) -> Any:
        seen.append(None if reference is None else len(reference))
        return calibrate(*args, reference=reference, **kwargs)

    monkeypatch.setattr(training.calibration, "calibrate_sigma", spy)
    train, val = split_train_val(TARGET, 0.25, 0)
    train_target(backbone, train, val, CFG, mode="finetune", quiet=True)
    assert seen and seen[-1] == len(train)  # the head's neighbour terms see its labels


def test_holdout_split_matches_evaluate_and_nests_fractions() -> None:
    pool, test = holdout_split(TARGET, 0.2, 1.0, seed=3)
    assert test is not None and len(pool) + len(test) == len(TARGET)
    half, test2 = holdout_split(TARGET, 0.2, 0.5, seed=3)
    assert test2 is not None and np.array_equal(test2.pos, test.pos)
    assert set(map(tuple, half.pos.tolist())) <= set(map(tuple, pool.pos.tolist()))
    everything, none = holdout_split(TARGET, 0.0, 1.0, seed=3)
    assert none is None and len(everything) == len(TARGET)
    with pytest.raises(ValueError, match=r"holdout=1\.0"):
        holdout_split(TARGET, 1.0, 1.0, seed=3)


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
    assert list(result.epochs) == ["warmup", "unfrozen"]
    assert result.samples == len(TARGET) and result.wall_s > 0
    assert {"me", "median", "p90", "crps", "within_1sigma", "within_2sigma"} <= set(result.metrics)
    assert {p["phase"] for p in progress} == {"warmup", "unfrozen"}
    assert {"phase", "epoch", "step", "val_me", "best_val_me"} <= set(progress[0])
    manifest = repo.manifest("site", "lab", "v1")
    assert manifest["parent"] == {"backbone": "meml", "version": "v1"}
    assert manifest["config"]["mode"] == "gradual" and manifest["loss"] == "nll"
    assert manifest["config"]["chosen_mode"] == "gradual"
    assert manifest["config"]["torch_threads"] == 1
    assert manifest["metrics"]["me"] == pytest.approx(result.metrics["me"])
    # the tracker's error length comes from how far apart the trained labels lie
    train, _ = split_train_val(TARGET, 0.25, 1)  # the split adapt_site made
    assert manifest["metrics"]["label_spacing_m"] == pytest.approx(label_spacing(train.pos))
    model = load_site_model(repo, "lab")
    _, sigma = model(torch.from_numpy(TARGET.csi[:2]))
    assert sigma is not None and bool((sigma > 0).all())

    again = adapt_site(repo, "lab", TARGET, mode="head", loss="mse", activate=False, config=CFG)
    assert again.version == "v2" and repo.active_version("site", "lab") == "v1"


def test_adapt_site_defaults_to_auto_and_records_every_candidate(repo: ModelRepository) -> None:
    result = adapt_site(repo, "lab", TARGET, config=CFG, holdout=0.25)
    config = repo.manifest("site", "lab", "v1")["config"]
    assert config["mode"] == "auto" and config["chosen_mode"] == result.chosen_mode
    assert set(config["candidates"]) == {"finetune", "gradual", "head"}
    assert config["choice_reason"] and config["degenerate"] in (True, False)
    assert result.test is not None and result.test["n"] == 40
    assert result.samples == 120  # the pool after the test holdout


def test_adapt_site_scratch_and_backbone_refs(repo: ModelRepository, tmp_path: Path) -> None:
    scratch = adapt_site(repo, "s", TARGET, scratch=True, config=CFG)
    assert scratch.parent is None and repo.manifest("site", "s", "v1")["parent"] is None
    save_backbone(repo, "meml", Backbone(seed=3), loss="mse")  # v2, the active one
    pinned = adapt_site(repo, "p", TARGET, backbone="meml:v1", mode="head", config=CFG)
    assert pinned.parent == ("meml", "v1")
    other = ModelRepository(tmp_path / "elsewhere")
    save_backbone(other, "far", Backbone(seed=4), loss="mse")
    remote = adapt_site(repo, "r", TARGET, backbone="far", source_repo=other, config=CFG)
    assert remote.parent == ("far", "v1") and repo.list_sites() == ["p", "r", "s"]


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
