"""The training options of `csipos train meml|dtl|site|scratch`, built once from `TrainConfig`.

`train_options` adds the options to a command and hands it a validated
`TrainConfig` as its ``config`` argument, so the four commands cannot drift
apart and a new `TrainConfig` field needs one line here. Per-command defaults
(the loss, the validation share) are arguments of the decorator.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

from training.allocator import keep_freed_memory
from training.config import TrainConfig

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class _Option:
    field: str
    kind: type
    help: str
    flag: str | None = None


_OPTIONS: tuple[_Option, ...] = (
    _Option("loss", str, "Loss: mse (eq. 3) or nll (Gaussian NLL, eq. 4; trained as beta-NLL)."),
    _Option("epochs", int, "Most passes over the largest environment per phase."),
    _Option("patience", int, "Validations without improvement before a phase stops."),
    _Option(
        "lr_patience",
        int,
        "Validations without improvement before the plateau schedule halves the rate (>= 3).",
    ),
    _Option("min_steps", int, "Fewest optimizer steps per phase before it may stop early."),
    _Option("max_steps", int, "Hard cap on optimizer steps per phase (0: none)."),
    _Option("eval_every", int, "Steps between validations (0: one epoch, within 10-500)."),
    _Option("batch_size", int, "Batch size per environment and step."),
    _Option("lr", float, "Learning rate (Adam)."),
    _Option("val_fraction", float, "Share held out for validation."),
    _Option("seed", int, "Seed for splits, initialisation and batches."),
    _Option("beta", float, "beta-NLL weight (0: plain NLL); nll only."),
    _Option("mse_warmup_steps", int, "nll: train positions with the MSE for this many steps."),
    _Option("head_warmup_steps", int, "gradual: head-only warm-up steps before unfreezing."),
    _Option("unfreeze_lr_factor", float, "gradual: learning-rate factor once all layers train."),
    _Option(
        "select",
        str,
        "Target training: keep the checkpoint by validation loss, calibrated (NLL) or me.",
    ),
    _Option("schedule", str, "Target training: learning-rate schedule, cosine or plateau."),
    _Option("anchor_weight", float, "Target training from a backbone: L2-SP weight (0: off)."),
    _Option(
        "augment_copies",
        int,
        "Target training: perturbed copies of each labelled fingerprint (0: off).",
    ),
    _Option(
        "augment_max_labels",
        int,
        "Target training: copies only below this many labelled fingerprints (0: always).",
    ),
    _Option(
        "episode_weight",
        float,
        "Source training: weight of the episodic ridge-head term (0: off).",
    ),
)
_SIGMA = _Option(
    "calibrate_sigma",
    bool,
    "nll: scale sigma per axis to fit the validation errors after training.",
    "--calibrate-sigma/--no-calibrate-sigma",
)
_OPTIONAL_ZERO = {"max_steps", "eval_every", "augment_max_labels"}
"""`TrainConfig` fields that are None when automatic; 0 on the command line."""


def train_options(
    *, loss: str, val_fraction: float, calibrate_sigma: bool = False
) -> Callable[[F], F]:
    """Add the training options to a Typer command that takes ``config: TrainConfig``.

    ``loss`` and ``val_fraction`` are the command's defaults; ``calibrate_sigma``
    adds that option (site models only).
    """
    defaults: dict[str, Any] = {
        **{o.field: getattr(_DEFAULTS, o.field) for o in _OPTIONS},
        "loss": loss,
        "val_fraction": val_fraction,
        "max_steps": 0,
        "eval_every": 0,
        "calibrate_sigma": True,
    }
    options = (*_OPTIONS, _SIGMA) if calibrate_sigma else _OPTIONS

    def decorate(command: F) -> F:
        hints = typing.get_type_hints(command, include_extras=True)
        own = [p for p in inspect.signature(command).parameters.values() if p.name != "config"]
        added = [
            inspect.Parameter(
                o.field,
                inspect.Parameter.KEYWORD_ONLY,
                default=defaults[o.field],
                annotation=Annotated[
                    o.kind, typer.Option(*([o.flag] if o.flag else []), help=o.help)
                ],
            )
            for o in options
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {o.field: kwargs.pop(o.field) for o in options}
            for name in _OPTIONAL_ZERO:
                values[name] = values[name] or None
            try:
                config = TrainConfig(**values)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
            keep_freed_memory()  # every command with these options trains
            return command(config=config, **kwargs)

        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own] + added
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return typing.cast(F, wrapper)

    return decorate
