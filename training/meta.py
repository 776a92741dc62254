"""Meta-learned source training: MAML (Finn et al., ICML 2017) and TB-MAML (Owfi et al.,
GLOBECOM 2023), the meta-learning baselines MEML is compared with.

Both learn one *initialisation* of the whole site model (backbone + head) over the
same source environments as MEML; a new site then starts from it with the usual
target modes (`training.transfer.train_target`, ``head_init``). Everything is
built on `torch.func` (``functional_call`` + ``grad``): the model's parameters
are a dict, and the per-environment position normalisation is passed in as the
head's buffers, so one functional model serves every task.

- **Task** = one source environment. A meta-step draws, for each task, a
  *support* batch and a disjoint *query* batch (``batch_size`` each, from the
  environment's training split, its own seeded reshuffled stream).
- **Inner loop**: ``inner_steps`` plain gradient-descent steps at ``inner_lr``
  on the support loss (the training loss: MSE or beta-NLL), adapting *every*
  parameter (classic MAML, and what the TB-MAML code does). A step's gradient
  norm is capped at `INNER_CLIP` (a guard against NLL blow-ups, see `inner_adapt`).
- **Outer loss**: the query loss at the adapted parameters. Second order by
  default (``grad`` through the inner ``grad``: the Hessian-vector term
  included); ``first_order=True`` is FOMAML (the query gradient at the adapted
  parameters, the inner steps treated as constant).
- **MAML** averages the tasks' outer gradients and takes one Adam step at
  ``lr``.
- **TB-MAML** (task-biased): as in the authors' published notebook
  (github.com/AliOwfi/GLOBCOM2023-MetaLearningLocalizationCSI, `main.ipynb`),
  the tasks are visited in a shuffled order and each takes its *own* Adam step
  with its own outer rate ``lr_t = lr * (1 + TB_SPREAD * tanh(s_t))``, where
  ``s_t = -2 (minmax(I)_t - 0.5)`` in [-1, 1] and ``I_t`` is the task's error:
  harder tasks (larger error) get the smaller rate, easier ones the larger.
  Choices the paper's text and code leave open, and ours (docs/meta-learning.md):

  * ``I_t``: the authors load a precomputed per-task error of a conventionally
    trained model after 5-shot fine-tuning (a file not in the repository). We
    use the meta-model's own per-environment validation loss after inner
    adaptation, re-estimated at every validation (all rates equal until the
    first one): no extra training run, and it tracks the model being trained.
  * The rate spread: the authors use ``0.002 +- 0.001 tanh(s)``; we keep that
    ratio relative to ``lr`` (``TB_SPREAD = 0.5``).
  * The schedule: the authors decay the rate stepwise (StepLR, gamma 0.9 every
    30 or 10 iterations); both variants here use the project's plateau schedule
    and early stopping (`training.config`), so budgets compare with MEML's.

Budgets are `TrainConfig`'s: a meta-step counts as one step (whatever the number
of tasks), ``config.budget`` of the largest environment's training split sets
``min_steps``, ``max_steps``, ``eval_every`` and ``patience``; the best
validation state is restored at the end. The validation score is the mean over
environments of the plain validation loss (NLL with beta 0, or MSE) after the
inner loop adapts from the meta-parameters on a fixed support batch of that
environment's training split. ``envs_per_step`` = k > 0 draws k tasks per
meta-step. In-memory data and a single process only (no torchrun, no lazy rows);
``mse_warmup_steps`` and the degenerate-run retry are not applied.
Same seed, same numbers (CPU).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch.func import functional_call, grad, grad_and_value

from training.config import LossName, TrainConfig
from training.data.fingerprints import Fingerprints
from training.losses import position_loss
from training.meml import SourceData, combined_fingerprint
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel

log = logging.getLogger(__name__)

MetaVariant = Literal["maml", "tb-maml"]
META_VARIANTS: tuple[MetaVariant, ...] = ("maml", "tb-maml")
TB_SPREAD = 0.5
"""TB-MAML: the per-task outer rate spans ``lr * (1 +- TB_SPREAD * tanh(1))`` (the authors'
0.002 +- 0.001)."""
EVAL_CHUNK = 512
INNER_CLIP = 10.0
"""Largest gradient norm of one inner step (all parameters together); gradients at
initialisation are ~1 on the paper's data, so it only catches blow-ups."""

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]
"""A task's loss as a pure function of (parameters, inputs, targets)."""


def check_variant(variant: str) -> MetaVariant:
    """Return ``variant`` as a `MetaVariant`, or raise a ValueError listing the choices."""
    for v in META_VARIANTS:
        if variant == v:
            return v
    raise ValueError(f"unknown meta-learning variant {variant!r}: expected maml or tb-maml")


def inner_adapt(
    loss_fn: LossFn,
    params: Params,
    support: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    steps: int,
) -> Params:
    """``steps`` gradient-descent steps on the support loss (differentiable in ``params``
    when called under an outer `torch.func.grad`).

    A step's gradient is scaled down to norm `INNER_CLIP` when larger (a smooth factor,
    so the second-order gradient stays exact where it does not bind): one NLL step on a
    batch with tiny sigmas can otherwise throw the adapted weights to 1e20 losses.
    """
    for _ in range(steps):
        g = grad(loss_fn)(params, *support)
        norm = torch.stack([(v * v).sum() for v in g.values()]).sum().sqrt()
        factor = torch.clamp(INNER_CLIP / (norm + 1e-12), max=1.0)
        params = {k: p - lr * factor * g[k] for k, p in params.items()}
    return params


def meta_gradient(
    loss_fn: LossFn,
    params: Params,
    support: tuple[torch.Tensor, torch.Tensor],
    query: tuple[torch.Tensor, torch.Tensor],
    lr: float,
    steps: int,
    first_order: bool = False,
) -> tuple[Params, torch.Tensor]:
    """One task's outer gradient d L_query(adapt(params)) / d params, and that query loss.

    Second order: ``(I - lr H_support) grad L_query(params')`` for one inner step
    (products of it for more), by differentiating through the inner `grad`.
    First order: ``grad L_query(params')`` with ``params'`` computed without a graph.
    """
    if first_order:
        adapted = inner_adapt(
            loss_fn, {k: p.detach() for k, p in params.items()}, support, lr, steps
        )
        adapted = {k: p.detach() for k, p in adapted.items()}
        g, value = grad_and_value(loss_fn)(adapted, *query)
        return g, value

    def outer(p: Params) -> torch.Tensor:
        return loss_fn(inner_adapt(loss_fn, p, support, lr, steps), *query)

    g, value = grad_and_value(outer)(params)
    return g, value


def tb_rate_factors(errors: Mapping[str, float]) -> dict[str, float]:
    """TB-MAML's per-task outer-rate factors from the tasks' errors (higher error: lower
    rate), ``1 + TB_SPREAD * tanh(-2 (minmax(error) - 0.5))``; all 1 when they are equal."""
    values = np.array([errors[k] for k in errors], dtype=np.float64)
    if len(values) == 0:
        return {}
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo <= 1e-12:
        return dict.fromkeys(errors, 1.0)
    s = -2.0 * ((values - lo) / (hi - lo) - 0.5)
    return {k: float(1.0 + TB_SPREAD * math.tanh(v)) for k, v in zip(errors, s, strict=True)}


@dataclass
class MetaResult:
    """A meta-learned initialisation: the backbone and the head every site starts from.

    ``head`` holds the meta-learned weights; its position normalisation is the
    identity (a site fits its own, as every source task did). ``metrics`` per
    environment: validation loss and ME after inner adaptation, at the best state.
    ``samples`` counts the training samples drawn (support + query), for samples/s.
    """

    backbone: Backbone
    head: Head
    variant: MetaVariant
    config: TrainConfig
    steps: int
    best_step: int
    best_val_loss: float
    samples: int
    wall_s: float
    metrics: dict[str, dict[str, float]]
    data_fingerprint: str
    history: list[dict[str, float]] = field(default_factory=list)
    rate_factors: dict[str, float] = field(default_factory=dict)
    """TB-MAML's last per-environment outer-rate factors (MAML: all 1)."""

    @property
    def best_val_me(self) -> float:
        return float(np.mean([m["me"] for m in self.metrics.values()]))


class _Env:
    """One source environment as a task: tensors, normalisation buffers, batch stream."""

    def __init__(
        self, name: str, src: SourceData, head: Head, seed: int, batch: int, dev: torch.device
    ) -> None:
        if not isinstance(src.train, Fingerprints):
            raise ValueError(f"meta-learning needs in-memory data; {name!r} is lazy")
        self.name = name
        self.csi = torch.from_numpy(src.train.csi).to(dev)
        self.pos = torch.from_numpy(src.train.pos).to(dev)
        val = src.val if src.val_full is None else src.val_full
        self.val_csi = torch.from_numpy(val.csi).to(dev)
        self.val_pos = torch.from_numpy(val.pos).to(dev)
        norm = copy.deepcopy(head)
        norm.fit_position_normalisation(src.train_pos)
        self.buffers = {f"head.{k}": v.to(dev) for k, v in norm.named_buffers()}
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(self.csi))
        self.at = 0
        n = _batch_cap(len(self.csi), batch)
        # The fixed support batch validation adapts on (a seeded draw, not the stream's).
        self.val_support = np.sort(np.random.default_rng(seed + 1).permutation(len(self.csi))[:n])

    def draw(self, n: int) -> torch.Tensor:
        """The next ``n`` rows of the endless reshuffled stream (cycled on small sets)."""
        out: list[np.ndarray] = []
        while n > 0:
            if self.at >= len(self.order):
                self.order, self.at = self.rng.permutation(len(self.csi)), 0
            take = self.order[self.at : self.at + n]
            out.append(take)
            self.at += len(take)
            n -= len(take)
        return torch.from_numpy(np.concatenate(out))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.csi[idx], self.pos[idx]


def _batch_cap(n: int, batch: int) -> int:
    """Support and query must be disjoint: at most half of a small environment each."""
    return max(1, min(batch, n // 2)) if n >= 2 else 1


class _Functional:
    """The site model as a pure function of (parameters, one environment's buffers)."""

    def __init__(self, model: SiteModel, loss: LossName, beta: float) -> None:
        self.model, self.loss, self.beta = model, loss, beta

    def loss_fn(self, buffers: Params, beta: float | None = None) -> LossFn:
        b = self.beta if beta is None else beta

        def fn(params: Params, csi: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            position, sigma = functional_call(self.model, {**params, **buffers}, (csi,))
            return position_loss(self.loss, position, sigma, pos, buffers["head.pos_scale"], b)

        return fn

    def predict(self, params: Params, buffers: Params, csi: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = [
                functional_call(self.model, {**params, **buffers}, (csi[i : i + EVAL_CHUNK],))[0]
                for i in range(0, len(csi), EVAL_CHUNK)
            ]
        return torch.cat(out)


def train_meta(
    sources: Mapping[str, SourceData],
    config: TrainConfig,
    *,
    variant: MetaVariant = "maml",
    backbone_config: BackboneConfig | None = None,
    head_config: HeadConfig | None = None,
    quiet: bool = True,
    device: torch.device | str = "cpu",
) -> MetaResult:
    """Meta-train a backbone + head initialisation over ``sources`` (one task each).

    See the module docstring for the algorithm, the budget and the choices made.
    """
    variant = check_variant(variant)
    if not sources:
        raise ValueError("no environments to meta-train on: expected at least one")
    t0 = time.perf_counter()
    dev = torch.device(device)
    backbone = Backbone(backbone_config, seed=config.seed)
    head = Head(head_config, loss=config.loss, seed=config.seed + 1)
    model = SiteModel(backbone, head).to(dev)
    names = sorted(sources)
    envs = {
        name: _Env(name, sources[name], head, config.seed + 101 * (k + 1), config.batch_size, dev)
        for k, name in enumerate(names)
    }
    fun = _Functional(model, config.loss, config.beta)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    budget = config.budget(max(len(e.csi) for e in envs.values()))
    task_rng = np.random.default_rng(config.seed + 7)
    k = config.envs_per_step if 0 < config.envs_per_step < len(names) else len(names)
    factors = dict.fromkeys(names, 1.0)
    lr_scale, best_loss, best_step, bad, bad_lr = 1.0, math.inf, 0, 0, 0
    best_state = _snapshot(model)
    history: list[dict[str, float]] = []
    samples = step = 0

    def params_now() -> Params:
        return {n: p.detach() for n, p in model.named_parameters()}

    def apply(grads: Params, rate: float) -> None:
        for g in opt.param_groups:
            g["lr"] = rate
        for n, p in model.named_parameters():
            p.grad = grads[n].detach().clone()
        opt.step()
        opt.zero_grad(set_to_none=True)

    while step < budget.max_steps:
        step += 1
        drawn = sorted(task_rng.choice(len(names), size=k, replace=False).tolist())
        tasks = [names[i] for i in drawn]
        if variant == "tb-maml":
            tasks = [tasks[i] for i in task_rng.permutation(len(tasks))]
        total: Params | None = None
        for name in tasks:
            env = envs[name]
            n = _batch_cap(len(env.csi), config.batch_size)
            idx = env.draw(2 * n)
            support, query = env.batch(idx[:n]), env.batch(idx[n:])
            g, _ = meta_gradient(
                fun.loss_fn(env.buffers),
                params_now(),
                support,
                query,
                config.inner_lr,
                config.inner_steps,
                config.first_order,
            )
            samples += 2 * n
            if variant == "tb-maml":
                apply(g, config.lr * lr_scale * factors[name])
            else:
                total = g if total is None else {p: total[p] + g[p] for p in total}
        if total is not None:
            apply({p: v / len(tasks) for p, v in total.items()}, config.lr * lr_scale)

        if step % budget.eval_every and step < budget.max_steps:
            continue
        per_env = _validate(fun, params_now(), envs, config)
        score = float(np.mean([m["loss"] for m in per_env.values()]))
        if variant == "tb-maml":
            factors = tb_rate_factors({e: m["loss"] for e, m in per_env.items()})
        improved = score < best_loss
        if improved:
            best_loss, best_step, bad, bad_lr = score, step, 0, 0
            best_state = _snapshot(model)
        else:
            bad, bad_lr = bad + 1, bad_lr + 1
            if bad_lr >= config.lr_patience:
                lr_scale, bad_lr = lr_scale * 0.5, 0
        row = {
            "step": float(step),
            "val_loss": score,
            "lr_scale": lr_scale,
            "val_me": float(np.mean([m["me"] for m in per_env.values()])),
        }
        history.append(row)
        if not quiet:
            log.info(
                "%s step %d: val loss %.4f, ME %.3f m%s",
                variant,
                step,
                score,
                row["val_me"],
                " *" if improved else "",
            )
        if step >= budget.min_steps and bad >= budget.patience:
            break

    model.load_state_dict(best_state)
    metrics = _validate(fun, params_now(), envs, config)
    model.cpu()
    out_head = Head(head.config)
    out_head.mlp.load_state_dict(head.mlp.state_dict())
    return MetaResult(
        backbone=backbone,
        head=out_head,
        variant=variant,
        config=config,
        steps=step,
        best_step=best_step,
        best_val_loss=best_loss,
        samples=samples,
        wall_s=time.perf_counter() - t0,
        metrics=metrics,
        data_fingerprint=combined_fingerprint({n: s.fingerprint for n, s in sources.items()}),
        history=history,
        rate_factors=factors,
    )


def _validate(
    fun: _Functional, params: Params, envs: Mapping[str, _Env], config: TrainConfig
) -> dict[str, dict[str, float]]:
    """Per environment: adapt on its fixed support batch, then the plain loss and ME on its
    validation split."""
    out: dict[str, dict[str, float]] = {}
    for name, env in envs.items():
        support = env.batch(torch.from_numpy(env.val_support))
        adapted = inner_adapt(
            fun.loss_fn(env.buffers), params, support, config.inner_lr, config.inner_steps
        )
        adapted = {k: v.detach() for k, v in adapted.items()}
        plain = fun.loss_fn(env.buffers, beta=0.0)
        with torch.no_grad():
            losses = [
                float(
                    plain(adapted, env.val_csi[i : i + EVAL_CHUNK], env.val_pos[i : i + EVAL_CHUNK])
                )
                * len(env.val_csi[i : i + EVAL_CHUNK])
                for i in range(0, len(env.val_csi), EVAL_CHUNK)
            ]
        position = fun.predict(adapted, env.buffers, env.val_csi)
        me = float((position - env.val_pos).norm(dim=1).mean())
        n = len(env.val_csi)
        out[name] = {"loss": sum(losses) / max(1, n), "me": me, "n": float(n)}
    return out


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
