"""The training loop: phases, step budgets, freezing, early stopping, best restore, determinism.

A tiny linear model stands in for the CNN here: the loop, not the net, is under test.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.training.toychannel import toy_fingerprints
from training.config import Selection, StepBudget, TrainConfig
from training.fit import (
    EPISODE_RIDGE,
    FitReport,
    Phase,
    PhaseReport,
    Task,
    _calibrated_nll,
    _IndexStream,
    episode_loss,
    fit,
    predict,
)
from training.losses import gaussian_nll
from training.metrics import evaluate


def budget(steps: int, patience: int = 100, every: int = 5, min_steps: int = 0) -> StepBudget:
    return StepBudget(min(min_steps, steps), steps, every, patience)


def phase(name: str, train: str, lr: float, steps: int, **kw: int) -> Phase:
    return Phase(name, "all" if train == "all" else "head", lr, budget(steps, **kw))


class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(8 * 103 * 2, 32), nn.Tanh())

    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(csi * 20.0)
        return out


class TinyHead(nn.Module):
    def __init__(self, out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(32, out)
        self.register_buffer("pos_mean", torch.zeros(2))
        self.register_buffer("pos_scale", torch.ones(()))

    def fit_position_normalisation(self, pos: torch.Tensor) -> None:
        self.pos_mean = pos.mean(0)
        self.pos_scale = pos.std(0).mean()

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raw = self.lin(feat)
        xy = raw[:, :2] * self.pos_scale + self.pos_mean
        if raw.shape[1] == 2:
            return xy, None
        return xy, (nn.functional.softplus(raw[:, 2:]) + 0.01) * self.pos_scale


def make_task(name: str, n: int, seed: int, out: int = 2) -> Task:
    fp = toy_fingerprints(n, (0.0, 0.0), seed=seed)
    head = TinyHead(out)
    train, val = fp.subset(slice(0, n * 3 // 4)), fp.subset(slice(n * 3 // 4, n))
    head.fit_position_normalisation(torch.from_numpy(train.pos))
    return Task.from_fingerprints(name, head, train, val)


def params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_training_beats_the_mean_position() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 400, 0, out=4)
    report = fit(
        backbone, [task], [phase("train", "all", 3e-3, 240, patience=5)], loss="nll", quiet=True
    )
    pos, sigma = predict(backbone, task.head, task.val[0])
    trained = evaluate(pos, sigma, task.val[1])
    mean = task.train[1].mean(0).expand_as(task.val[1])
    baseline = evaluate(mean, None, task.val[1])
    assert trained["me"] < 0.8 * baseline["me"]
    assert report.best_val_me == pytest.approx(trained["me"], rel=1e-4)  # best state restored
    losses = [r["train_loss"] for r in report.history]
    assert losses[-1] < losses[0]


def test_head_phase_leaves_backbone_bit_identical_then_all_phase_moves_it() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 1)
    before = params(backbone)
    head_before = params(task.head)
    fit(backbone, [task], [phase("head", "head", 1e-2, 15)], loss="mse", quiet=True)
    for k, v in params(backbone).items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in params(task.head).items())
    assert all(p.requires_grad for p in backbone.parameters())  # unfrozen again afterwards

    report = fit(
        backbone,
        [task],
        [phase("head", "head", 1e-2, 10), phase("unfrozen", "all", 1e-3, 10)],
        loss="mse",
        quiet=True,
    )
    assert [p.name for p in report.phases] == ["head", "unfrozen"]
    assert [r["phase"] for r in report.history] == ["head"] * 2 + ["unfrozen"] * 2
    assert report.steps == {"head": 10, "unfrozen": 10}
    assert any(not torch.equal(v, before[k]) for k, v in params(backbone).items())


def test_same_seed_same_weights() -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        backbone, task = TinyBackbone(), make_task("a", 150, 2)
        fit(backbone, [task], [phase("t", "all", 1e-3, 15)], loss="mse", seed=seed, quiet=True)
        return params(backbone) | {f"h.{k}": v for k, v in params(task.head).items()}

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_and_best_restore() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 3)
    # Validation labels unrelated to the CSI: the val loss stops improving quickly.
    gen = torch.Generator().manual_seed(0)
    task.val = (task.val[0], task.val[1][torch.randperm(len(task.val[1]), generator=gen)])
    report = fit(backbone, [task], [phase("t", "all", 3e-2, 2000, patience=2, every=5)], loss="mse")
    ph = report.phases[0]
    assert ph.stopped_early and ph.steps == ph.best_step + 2 * 5 < 2000
    best_row = report.history[ph.best_step // 5 - 1]
    assert best_row["val_loss"] == min(r["val_loss"] for r in report.history)
    pos, _ = predict(backbone, task.head, task.val[0])
    assert evaluate(pos, None, task.val[1])["me"] == pytest.approx(ph.best_val_me, rel=1e-4)


def fit_selecting(
    select: Selection,
) -> tuple[TinyBackbone, Task, FitReport, PhaseReport, dict[str, Any]]:
    """One 200-step NLL phase validated every 10 steps, kept by ``select``: the model, its
    task, the report, the phase's report and the history row of the kept step."""
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 3, out=4)
    steps = phase("t", "all", 3e-3, 200, every=10)
    kept_by = Phase("t", "all", 3e-3, steps.budget, select=select)
    report = fit(backbone, [task], [kept_by], loss="nll", quiet=True)
    ph = report.phases[0]
    return backbone, task, report, ph, report.history[ph.best_step // 10 - 1]


def test_select_me_keeps_the_checkpoint_of_the_best_validation_error() -> None:
    backbone, task, report, ph, best_row = fit_selecting("me")
    assert best_row["val_me"] == min(r["val_me"] for r in report.history)
    assert ph.best_score == pytest.approx(ph.best_val_me)
    pos, _ = predict(backbone, task.head, task.val[0])
    assert evaluate(pos, None, task.val[1])["me"] == pytest.approx(ph.best_val_me, rel=1e-4)
    # The NLL's own choice would be another checkpoint in this run (its minimum comes earlier).
    by_loss = min(report.history, key=lambda r: r["val_loss"])
    assert by_loss["step"] != best_row["step"]


def test_calibrated_nll_is_the_nll_after_the_best_per_axis_sigma_factor() -> None:
    gen = torch.Generator().manual_seed(0)
    pos, truth = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen)
    sigma = torch.rand(64, 2, generator=gen) * 0.1 + 0.05  # over-confident: errors ~1.4
    z2 = ((pos - truth) / sigma).square().mean(0)
    factor = z2.sqrt()
    value = float(_calibrated_nll(z2[None], sigma.log().mean(0)[None])[0])
    assert value == pytest.approx(float(gaussian_nll(pos, sigma * factor, truth)), rel=1e-5)
    # no other factor does better, and the plain NLL of the over-confident sigma is far worse
    for f in (0.8, 1.25):
        assert value < float(gaussian_nll(pos, sigma * factor * f, truth))
    assert float(gaussian_nll(pos, sigma, truth)) > value + 10


def test_select_calibrated_keeps_the_checkpoint_of_the_best_calibrated_nll() -> None:
    backbone, task, report, ph, best_row = fit_selecting("calibrated")
    assert best_row["val_loss"] == min(r["val_loss"] for r in report.history)
    assert ph.best_score == pytest.approx(ph.best_val_loss)
    # the kept model's validation NLL once sigma is scaled by its best factor, normalised
    pos, sigma = predict(backbone, task.head, task.val[0])
    assert sigma is not None
    scale = task.head.pos_scale
    z2 = ((pos - task.val[1]) / sigma).square().mean(0)
    expected = gaussian_nll(pos / scale, sigma * z2.sqrt() / scale, task.val[1] / scale)
    assert ph.best_val_loss == pytest.approx(float(expected), rel=1e-4)


def test_cosine_schedule_decays_to_zero_over_the_phase() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 150, 2)
    cos = Phase("t", "all", 1e-2, budget(100, every=10), schedule="cosine")
    report = fit(backbone, [task], [cos], loss="mse", quiet=True)
    lrs = [r["lr"] for r in report.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 1e-2
    assert lrs[4] == pytest.approx(1e-2 * 0.5 * (1 + np.cos(np.pi * 50 / 100)))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_multi_task_progress_and_console_line(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    tasks = [make_task("big", 200, 4), make_task("small", 40, 5)]
    seen: list[dict[str, object]] = []
    with caplog.at_level(logging.INFO, logger="training.fit"):
        report = fit(
            TinyBackbone(),
            tasks,
            [phase("t", "all", 1e-3, 6, every=3)],
            loss="mse",
            batch_size=50,
            progress=seen.append,
        )
    keys = {"phase", "epoch", "step", "val_me", "best_val_me"}
    assert [set(s) for s in seen] == [keys] * 2
    assert [s["epoch"] for s in seen] == [1, 2]  # an epoch is ceil(150 / 50) = 3 steps
    assert set(report.history[0]["val_me_per_task"]) == {"big", "small"}
    # 6 steps of 50 (big) + 30 (small, capped at its size).
    assert report.samples == 6 * (50 + 30)
    assert report.epochs == {"t": 2} and report.steps == {"t": 6}
    assert "val ME" in caplog.text and "step      6" in caplog.text


def test_quiet_mode_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="training.fit"):
        fit(
            TinyBackbone(),
            [make_task("a", 40, 6)],
            [phase("t", "all", 1e-3, 2)],
            loss="mse",
            quiet=True,
        )
    assert caplog.text == ""


def test_index_stream_covers_each_permutation() -> None:
    stream = _IndexStream(10, 4, torch.Generator().manual_seed(0))
    drawn = torch.cat([stream.next() for _ in range(5)]).numpy()  # 20 = two permutations
    assert sorted(drawn[:10]) == list(range(10)) and sorted(drawn[10:]) == list(range(10))
    assert len(_IndexStream(3, 8, torch.Generator()).next()) == 3


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="expected 'all' or 'head'"):
        Phase("x", "backbone", 1e-3, budget(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr=0"):
        Phase("x", "all", 0, budget(1))
    with pytest.raises(ValueError, match="eval_every and patience must be >= 1"):
        StepBudget(0, 10, 0, 1)
    task = make_task("a", 40, 0)
    task.val = (task.val[0][:0], task.val[1][:0])
    with pytest.raises(ValueError, match="task 'a': val set is empty"):
        fit(TinyBackbone(), [task], [phase("t", "all", 1e-3, 2)], loss="mse")
    with pytest.raises(ValueError, match="nll loss needs a head with sigma"):
        fit(TinyBackbone(), [make_task("a", 40, 0)], [phase("t", "all", 1e-3, 2)], loss="nll")


def test_a_later_phase_that_never_improves_keeps_the_earlier_best() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 7)
    # A learning rate this large wrecks the model in the second phase.
    report = fit(
        backbone,
        [task],
        [phase("head", "head", 1e-2, 20), phase("wreck", "all", 50.0, 10)],
        loss="mse",
        quiet=True,
    )
    first, second = report.phases
    assert second.best_val_loss > first.best_val_loss  # judged on its own...
    assert report.final_phase == "head"  # ...and not kept
    pos, _ = predict(backbone, task.head, task.val[0])
    assert evaluate(pos, None, task.val[1])["me"] == pytest.approx(first.best_val_me, rel=1e-4)


def test_a_later_phase_that_improves_slowly_is_kept() -> None:
    """The unfrozen phase is judged on its own: no gate drops it for starting worse."""
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 300, 8)
    report = fit(
        backbone,
        [task],
        [phase("head", "head", 1e-2, 10), phase("all", "all", 3e-3, 200, patience=10)],
        loss="mse",
        quiet=True,
    )
    first, second = report.phases
    assert second.best_val_loss < first.best_val_loss
    assert report.final_phase == "all" and report.best_val_me == second.best_val_me
    pos, _ = predict(backbone, task.head, task.val[0])
    assert evaluate(pos, None, task.val[1])["me"] == pytest.approx(second.best_val_me, rel=1e-4)


def test_min_steps_hold_off_early_stopping() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 100, 9)
    gen = torch.Generator().manual_seed(0)
    task.val = (task.val[0], task.val[1][torch.randperm(len(task.val[1]), generator=gen)])
    report = fit(
        backbone,
        [task],
        [phase("t", "all", 3e-2, 1000, patience=1, every=5, min_steps=300)],
        loss="mse",
        quiet=True,
    )
    assert 300 <= report.phases[0].steps < 1000


def test_a_100_sample_run_gets_the_documented_minimum_of_steps() -> None:
    """The default budget: a ~100-sample site trains for at least `min_steps` steps."""
    cfg = TrainConfig()
    b = cfg.budget(80)  # 100 samples, 20 % validation
    assert b.min_steps == cfg.min_steps >= 300 and b.max_steps >= b.min_steps
    assert b.eval_every == 10  # an epoch would be 2 steps: validate every 10 instead
    large = cfg.budget(64_000)  # 1,000 steps an epoch: validate once an epoch, 100 epochs
    assert large.eval_every == 500 and large.max_steps == 100 * 1000
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 100, 10)
    # Validation labels unrelated to the CSI would stop an epoch-counted run at once.
    gen = torch.Generator().manual_seed(1)
    task.val = (task.val[0], task.val[1][torch.randperm(len(task.val[1]), generator=gen)])
    report = fit(
        backbone, [task], [Phase("t", "all", 1e-3, cfg.budget(75))], loss="mse", quiet=True
    )
    assert report.phases[0].steps >= cfg.min_steps


def test_centroid_error_and_degenerate_flag() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 11)
    report = fit(backbone, [task], [phase("t", "all", 3e-3, 200)], loss="mse", quiet=True)
    train_mean = task.train[1].mean(0)
    centroid = float((task.val[1] - train_mean).norm(dim=1).mean())
    assert report.centroid_me_per_task["a"] == pytest.approx(centroid, rel=1e-5)
    assert report.degenerate_tasks == []
    # Labels unrelated to the CSI: nothing beats the centroid by 5 %.
    backbone, task = TinyBackbone(), make_task("b", 200, 12)
    gen = torch.Generator().manual_seed(0)
    shuffle = torch.randperm(len(task.val[1]), generator=gen)
    task.val = (task.val[0], task.val[1][shuffle])
    report = fit(backbone, [task], [phase("t", "all", 3e-3, 20)], loss="mse", quiet=True)
    assert report.degenerate_tasks == ["b"]


def test_head_phase_on_cached_features_matches_the_uncached_forward() -> None:
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 120, 13)
    report = fit(backbone, [task], [phase("head", "head", 1e-2, 10)], loss="mse", quiet=True)
    pos, _ = predict(backbone, task.head, task.val[0])
    me = float((pos - task.val[1]).norm(dim=1).mean())
    assert report.best_val_me == pytest.approx(me, rel=1e-5)


# --- many environments: sampling, batched heads, lazy rows ---


def head_tasks(sizes: list[int], loss: str, seed: int = 0) -> tuple[TinyBackbone, list[Task]]:
    """A tiny backbone and real `Head`s (batchable) on toy environments of ``sizes``."""
    from training.nets import Head, HeadConfig

    torch.manual_seed(seed)
    backbone = TinyBackbone()
    tasks = []
    for k, n in enumerate(sizes):
        fp = toy_fingerprints(n, (5.0 * k, 0.0), seed=seed + k)
        head = Head(HeadConfig(in_features=32, hidden=(16,)), loss=loss, seed=seed + 1 + k)  # type: ignore[arg-type]
        train, val = fp.subset(slice(0, n * 3 // 4)), fp.subset(slice(n * 3 // 4, n))
        head.fit_position_normalisation(train.pos)
        head.sigma_scale.fill_(1.0 + 0.1 * k)
        tasks.append(Task.from_fingerprints(f"e{k}", head, train, val))
    return backbone, tasks


@pytest.mark.parametrize("loss", ["mse", "nll"])
def test_batched_heads_step_matches_separate_heads(loss: str) -> None:
    """Batched heads (gather + bmm, padded small environments, row-wise Adam) compute the
    same losses and updates as separate heads with their own Adam."""
    runs = {}
    for batched in (False, True):
        backbone, tasks = head_tasks([80, 40, 20], loss)  # 60/30/15 train: padding
        report = fit(
            backbone,
            tasks,
            [phase("all", "all", 1e-2, 1, every=1)],
            loss=loss,  # type: ignore[arg-type]
            beta=0.5,
            batch_size=32,
            weight_decay=1e-3,
            quiet=True,
            batched_heads=batched,
        )
        runs[batched] = (report, backbone, tasks)
    (r0, b0, t0), (r1, b1, t1) = runs[False], runs[True]
    assert r0.history[0]["train_loss"] == pytest.approx(r1.history[0]["train_loss"], rel=1e-5)
    assert r0.history[0]["val_loss"] == pytest.approx(r1.history[0]["val_loss"], rel=1e-5)
    for a, b in zip(t0, t1, strict=True):
        for (k, x), y in zip(params(a.head).items(), params(b.head).values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    for x, y in zip(params(b0).values(), params(b1).values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_sampled_environments_batched_equal_separate_heads_and_skip_undrawn() -> None:
    """k of N environments a step: undrawn heads do not move (no Adam momentum drift), and
    the batched path equals separate heads over several steps."""
    runs = {}
    for batched in (False, True):
        backbone, tasks = head_tasks([40] * 5, "mse")
        before = [params(t.head) for t in tasks]
        report = fit(
            backbone,
            tasks,
            [phase("all", "all", 1e-2, 3, every=3)],
            loss="mse",
            batch_size=8,
            quiet=True,
            envs_per_step=2,
            batched_heads=batched,
        )
        assert report.samples == 3 * 2 * 8
        moved = [
            any(not torch.equal(v, params(t.head)[k]) for k, v in b.items())
            for t, b in zip(tasks, before, strict=True)
        ]
        runs[batched] = (tasks, moved)
    assert runs[False][1] == runs[True][1] and 2 <= sum(runs[True][1]) < 5
    for a, b in zip(runs[False][0], runs[True][0], strict=True):
        for x, y in zip(params(a.head).values(), params(b.head).values(), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_environment_sampling_is_uniform_and_seeded() -> None:
    from training.fit import _sample_envs

    gen = torch.Generator().manual_seed(0)
    draws = [_sample_envs(10, 3, gen) for _ in range(3000)]
    assert all(len(set(d)) == 3 and d == sorted(d) for d in draws)
    counts = np.bincount(np.concatenate(draws), minlength=10)
    assert counts.min() > 0.9 * 900 and counts.max() < 1.1 * 900
    again = torch.Generator().manual_seed(0)
    assert [_sample_envs(10, 3, again) for _ in range(5)] == draws[:5]
    assert _sample_envs(4, 4, gen) == _sample_envs(4, 9, gen) == [0, 1, 2, 3]


def test_a_selector_chooses_the_state_and_stops_the_phase() -> None:
    """With a selector, the kept state is the one it scored best, not the lowest val loss."""
    torch.manual_seed(0)
    backbone, task = TinyBackbone(), make_task("a", 200, 3)
    calls: list[int] = []

    def selector(b: nn.Module) -> float:
        calls.append(1)
        return [5.0, 1.0, 4.0, 3.0, 2.0, 6.0, 7.0][len(calls) - 1]  # best at the 2nd validation

    kept: dict[str, torch.Tensor] = {}
    snapshot_at = 10

    def progress(row: dict[str, object]) -> None:
        if row["step"] == snapshot_at:
            kept.update(params(backbone))

    report = fit(
        backbone,
        [task],
        [phase("t", "all", 3e-2, 2000, patience=3, every=5)],
        loss="mse",
        selector=selector,
        progress=progress,
    )
    ph = report.phases[0]
    assert ph.best_step == 10 and ph.best_score == 1.0
    assert ph.stopped_early and ph.steps == 25 and len(calls) == 5
    assert [r["score"] for r in report.history] == [5.0, 1.0, 4.0, 3.0, 2.0]
    assert all(torch.equal(kept[k], v) for k, v in params(backbone).items())


def _drift(before: dict[str, torch.Tensor], module: nn.Module) -> float:
    return float(sum(((v - before[k]) ** 2).sum() for k, v in params(module).items()))


def test_anchor_weight_holds_the_backbone_near_its_start_and_only_while_it_trains() -> None:
    def run(weight: float, train: str = "all") -> tuple[float, nn.Module]:
        torch.manual_seed(0)
        backbone, task = TinyBackbone(), make_task("a", 200, 3)
        before = params(backbone)
        fit(
            backbone,
            [task],
            [phase("t", train, 1e-2, 40)],
            loss="mse",
            quiet=True,
            anchor_weight=weight,
        )
        return _drift(before, backbone), task.head

    free, _ = run(0.0)
    held, _ = run(10.0)
    assert free > 0 and held < 0.25 * free
    _, head_free = run(0.0, "head")
    _, head_held = run(10.0, "head")  # a frozen backbone: nothing to anchor, the same steps
    assert all(
        torch.equal(a, b)
        for a, b in zip(params(head_free).values(), params(head_held).values(), strict=True)
    )
    with pytest.raises(ValueError, match="anchor_weight"):
        run(-1.0)
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainConfig(anchor_weight=float("nan"))


def test_episode_loss_is_a_ridge_head_fitted_on_the_support_and_scored_on_the_query() -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2 * 16, 5, generator=gen, dtype=torch.float64)
    truth = torch.randn(2 * 16, 2, generator=gen, dtype=torch.float64) * 3.0
    scales = [torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)]
    got = episode_loss(feats, truth, [16, 16], scales)
    want = 0.0
    for k in range(2):
        f, y = feats[16 * k : 16 * (k + 1)].numpy(), truth[16 * k : 16 * (k + 1)].numpy()
        y = y / float(scales[k])
        s, q = f[:10], f[10:]  # 5/8 of 16 is the support
        sm, ym = s.mean(0), y[:10].mean(0)
        sc = s - sm
        lam = EPISODE_RIDGE * float(np.mean(np.sum(sc**2, axis=1)))
        # the primal ridge solution, against which the dual one in episode_loss is checked
        w = np.linalg.solve(sc.T @ sc + lam * np.eye(5), sc.T @ (y[:10] - ym))
        pred = ym + (q - sm) @ w
        want += float(np.mean(np.sum((pred - y[10:]) ** 2, axis=1)))
    assert float(got) == pytest.approx(want, rel=1e-9)
    # a too-small batch contributes nothing instead of an ill-posed head
    assert float(episode_loss(feats[:5], truth[:5], [5], scales[:1])) == 0.0
    feats.requires_grad_(True)
    episode_loss(feats, truth, [16, 16], scales).backward()  # type: ignore[no-untyped-call]
    assert feats.grad is not None and float(feats.grad.abs().sum()) > 0


def test_episode_weight_changes_source_training_only_when_on_and_the_backbone_trains() -> None:
    def run(weight: float, train: str = "all") -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        backbone, tasks = TinyBackbone(), [make_task("a", 200, 3), make_task("b", 200, 4)]
        fit(
            backbone,
            tasks,
            [phase("t", train, 1e-2, 20)],
            loss="mse",
            quiet=True,
            batch_size=32,
            episode_weight=weight,
        )
        return params(nn.ModuleList([backbone, tasks[0].head, tasks[1].head]))

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    assert same(run(0.0), run(0.0))
    assert not same(run(0.0), run(1.0))
    assert same(run(1.0), run(1.0))  # seeded: the same numbers again
    assert same(run(0.0, "head"), run(1.0, "head"))  # a frozen backbone: the term is off
    with pytest.raises(ValueError, match="episode_weight"):
        run(-1.0)
    with pytest.raises(ValueError, match="episode_weight"):
        TrainConfig(episode_weight=float("inf"))
