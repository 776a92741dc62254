"""MAML and TB-MAML (`training.meta`): the outer gradient against a hand computation,
first vs second order, the task-biased rates, and meta-training end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.training.toychannel import TOY_ENVS, toy_fingerprints
from training.config import TrainConfig
from training.meml import SourceData
from training.meta import (
    INNER_CLIP,
    TB_SPREAD,
    Params,
    _Functional,
    inner_adapt,
    meta_gradient,
    tb_rate_factors,
    train_meta,
)
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel
from training.transfer import _Trainer, train_target

SLIM = BackboneConfig(block_channels=((2, 2), (2, 2)), features=8)
SLIM_HEAD = HeadConfig(in_features=8, hidden=(8,))


def _linear_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L(w, b) = mean((x w + b - y)^2): a linear model with the MSE."""
    return (x @ params["w"] + params["b"] - y).square().mean()


def test_one_maml_step_on_a_linear_model_matches_the_closed_form() -> None:
    """Support loss L_s, query loss L_q, one inner step at rate a, with x~ = [x, 1]:

    grad L(theta) = 2/n x~^T (x~ theta - y)        (theta = [w; b])
    theta'        = theta - a grad L_s(theta)
    H_s           = 2/n_s x~_s^T x~_s               (the support loss's Hessian)
    second order: (I - a H_s) grad L_q(theta')
    first order:  grad L_q(theta')
    """
    gen = torch.Generator().manual_seed(0)
    x_s, x_q = (
        torch.randn(5, 3, generator=gen, dtype=torch.float64),
        torch.randn(4, 3, generator=gen, dtype=torch.float64),
    )
    y_s, y_q = (
        torch.randn(5, generator=gen, dtype=torch.float64),
        torch.randn(4, generator=gen, dtype=torch.float64),
    )
    params = {
        "w": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64),
        "b": torch.tensor(0.1, dtype=torch.float64),
    }
    a = 0.05

    def aug(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)

    theta = torch.cat([params["w"], params["b"].reshape(1)])
    xs, xq = aug(x_s), aug(x_q)
    grad_s = 2 / len(xs) * xs.T @ (xs @ theta - y_s)
    assert grad_s.norm() < INNER_CLIP  # the clip must not bind in the hand computation
    adapted = theta - a * grad_s
    grad_q = 2 / len(xq) * xq.T @ (xq @ adapted - y_q)
    hessian = 2 / len(xs) * xs.T @ xs
    second = (torch.eye(4, dtype=torch.float64) - a * hessian) @ grad_q
    query_loss = (xq @ adapted - y_q).square().mean()

    inner = inner_adapt(_linear_loss, params, (x_s, y_s), a, 1)
    torch.testing.assert_close(torch.cat([inner["w"], inner["b"].reshape(1)]), adapted)
    for first_order, expected in ((False, second), (True, grad_q)):
        g, value = meta_gradient(_linear_loss, params, (x_s, y_s), (x_q, y_q), a, 1, first_order)
        torch.testing.assert_close(torch.cat([g["w"], g["b"].reshape(1)]), expected)
        torch.testing.assert_close(value, query_loss)
    assert not torch.allclose(second, grad_q)  # the Hessian term is really there


def test_two_inner_steps_chain_the_jacobians() -> None:
    """With two steps the outer gradient is (I - a H)^2 grad L_q(theta'') (H constant here)."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    params = {"w": torch.zeros(2, dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    a = 0.1
    xa = torch.cat([x, torch.ones(6, 1, dtype=x.dtype)], dim=1)
    theta = torch.zeros(3, dtype=torch.float64)
    for _ in range(2):
        theta = theta - a * 2 / 6 * xa.T @ (xa @ theta - y)
    grad_q = 2 / 6 * xa.T @ (xa @ theta - y)
    jac = torch.eye(3, dtype=torch.float64) - a * 2 / 6 * xa.T @ xa
    g, _ = meta_gradient(_linear_loss, params, (x, y), (x, y), a, 2)
    torch.testing.assert_close(torch.cat([g["w"], g["b"].reshape(1)]), jac @ jac @ grad_q)


def _site_task(loss: str = "nll") -> tuple[_Functional, Params, dict[str, torch.Tensor]]:
    model = SiteModel(Backbone(SLIM, seed=0), Head(SLIM_HEAD, loss=loss, seed=1)).double()  # type: ignore[arg-type]
    data = toy_fingerprints(40, (0.0, 0.0), seed=3)
    model.head.fit_position_normalisation(data.pos)
    fun = _Functional(model, loss, 0.5)  # type: ignore[arg-type]
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {f"head.{k}": v for k, v in model.head.named_buffers()}
    batch = {
        "csi": torch.from_numpy(data.csi).double(),
        "pos": torch.from_numpy(data.pos).double(),
    }
    return fun, params, {**buffers, **batch}


@pytest.mark.parametrize("loss", ["mse", "nll"])
def test_first_and_second_order_agree_as_the_inner_rate_goes_to_zero(loss: str) -> None:
    fun, params, t = _site_task(loss)
    buffers = {k: v for k, v in t.items() if k.startswith("head.")}
    fn = fun.loss_fn(buffers)
    support, query = (t["csi"][:20], t["pos"][:20]), (t["csi"][20:], t["pos"][20:])

    def flat(g: Params) -> torch.Tensor:
        return torch.cat([v.reshape(-1) for v in g.values()])

    gaps = []
    for a in (1e-2, 1e-3, 1e-4):
        so, _ = meta_gradient(fn, params, support, query, a, 1, first_order=False)
        fo, _ = meta_gradient(fn, params, support, query, a, 1, first_order=True)
        gaps.append(float((flat(so) - flat(fo)).norm() / flat(fo).norm()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3
    assert 3.0 < gaps[1] / gaps[2] < 30.0  # the gap is O(a): the Hessian term a H g


def test_an_exploding_inner_gradient_is_clipped() -> None:
    params = {"w": torch.tensor([0.0], dtype=torch.float64)}

    def steep(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1e6 * (p["w"] * x - y).sum()

    one = torch.ones(1, dtype=torch.float64)
    out = inner_adapt(steep, params, (one, one), 0.01, 1)
    assert math.isclose(float(out["w"].abs()), 0.01 * INNER_CLIP, rel_tol=1e-9)


def test_task_biased_rates_favour_the_easier_tasks() -> None:
    f = tb_rate_factors({"easy": 1.0, "mid": 2.0, "hard": 3.0})
    assert f["easy"] == pytest.approx(1 + TB_SPREAD * math.tanh(1))
    assert f["hard"] == pytest.approx(1 - TB_SPREAD * math.tanh(1))
    assert f["mid"] == pytest.approx(1.0)
    assert tb_rate_factors({"a": 2.0, "b": 2.0}) == {"a": 1.0, "b": 1.0}
    assert tb_rate_factors({"a": float("nan"), "b": 1.0}) == {"a": 1.0, "b": 1.0}


def _sources() -> dict[str, SourceData]:
    return {
        env: SourceData.split(toy_fingerprints(120, bs, seed=k), 0.2, 0)
        for k, (env, bs) in enumerate(list(TOY_ENVS.items())[:3])
    }


CONFIG = TrainConfig(loss="nll", batch_size=16, min_steps=6, max_steps=6, eval_every=3, lr=3e-3)


@pytest.mark.parametrize("variant", ["maml", "tb-maml"])
def test_meta_training_is_seeded_and_gives_a_backbone_and_head(variant: str) -> None:
    srcs = _sources()
    one = train_meta(srcs, CONFIG, variant=variant, backbone_config=SLIM, head_config=SLIM_HEAD)  # type: ignore[arg-type]
    two = train_meta(srcs, CONFIG, variant=variant, backbone_config=SLIM, head_config=SLIM_HEAD)  # type: ignore[arg-type]
    assert one.steps == 6 and len(one.history) == 2 and one.samples == 6 * 3 * 2 * 16
    assert [h["val_loss"] for h in one.history] == [h["val_loss"] for h in two.history]
    for a, b in zip(
        one.backbone.state_dict().values(), two.backbone.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert set(one.metrics) == set(srcs) and all(np.isfinite(m["me"]) for m in one.metrics.values())
    assert one.head.loss == "nll" and torch.equal(one.head.pos_scale, torch.ones(1))
    if variant == "tb-maml":
        assert len(set(one.rate_factors.values())) > 1  # the tasks got different rates
    else:
        assert set(one.rate_factors.values()) == {1.0}
    other = train_meta(
        srcs,
        CONFIG.replace(seed=1),
        variant=variant,
        backbone_config=SLIM,
        head_config=SLIM_HEAD,  # type: ignore[arg-type]
    )
    assert other.history[0]["val_loss"] != one.history[0]["val_loss"]


def test_first_order_meta_training_runs_and_errors_are_clear() -> None:
    srcs = _sources()
    fo = train_meta(
        srcs, CONFIG.replace(first_order=True), backbone_config=SLIM, head_config=SLIM_HEAD
    )
    assert fo.steps == 6 and math.isfinite(fo.best_val_loss)
    with pytest.raises(ValueError, match="unknown meta-learning variant"):
        train_meta(srcs, CONFIG, variant="reptile")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no environments"):
        train_meta({}, CONFIG)
    with pytest.raises(ValueError, match="inner_lr"):
        TrainConfig(inner_lr=0.0)
    with pytest.raises(ValueError, match="inner_steps"):
        TrainConfig(inner_steps=0)


def test_a_target_starts_from_the_meta_head_with_its_own_normalisation() -> None:
    srcs = _sources()
    meta = train_meta(srcs, CONFIG, backbone_config=SLIM, head_config=SLIM_HEAD)
    target = toy_fingerprints(60, (3.0, 1.0), seed=9, size=(8.0, 4.0))
    train, val = target.subset(np.arange(45)), target.subset(np.arange(45, 60))
    cfg = CONFIG.replace(min_steps=2, max_steps=2)
    trainer = _Trainer(meta.backbone, train, val, cfg, SLIM_HEAD, True, None, "cpu", meta.head)
    first = trainer.fresh(cfg.seed).head
    for a, b in zip(
        first.mlp.state_dict().values(), meta.head.mlp.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert float(first.pos_scale) != 1.0  # the target's own normalisation
    retry = trainer.fresh(cfg.seed + 7919).head  # a degenerate run's retry: random head
    assert not torch.equal(retry.mlp[0].weight, meta.head.mlp[0].weight)
    result = train_target(meta.backbone, train, val, cfg, mode="auto", head_init=meta.head)
    assert math.isfinite(result.metrics["me"])
    with pytest.raises(ValueError, match="head_init is a nll head"):
        train_target(meta.backbone, train, val, cfg.replace(loss="mse"), head_init=meta.head)
