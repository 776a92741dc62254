"""`csipos train ...`, `csipos evaluate`, `csipos export`.

Models are named by a REF: a path into a model repository,
``REPO/backbones/NAME[@vN]`` or ``REPO/sites/SITE[@vN]`` (without ``@vN``: the
active version), e.g. ``models/sites/lab-los@v2``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.repository import Kind

app = typer.Typer(
    help="Train MEML backbones, DTL and scratch models, and site heads.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True)

REF_HELP = (
    "Model REF: REPO/backbones/NAME[@vN] or REPO/sites/SITE[@vN] "
    "(no @vN: the active version), e.g. models/sites/lab-los@v2."
)
# Rich would read "[@vN]" as markup in --help and in error lines: escape it there.
_BACKBONE_HELP = escape("Backbone REF: REPO/backbones/NAME[@vN] (default: active version).")
_SITE_HELP = escape("Site model REF: REPO/sites/SITE[@vN] (default: active version).")
_KIND_DIRS: dict[str, Kind] = {"backbones": "backbone", "sites": "site"}


@dataclass(frozen=True)
class ModelRef:
    """A parsed REF: repository root, kind, name, and version (None: the active one)."""

    root: Path
    kind: Kind
    name: str
    version: str | None

    def __str__(self) -> str:
        kind_dir = "backbones" if self.kind == "backbone" else "sites"
        return f"{self.root / kind_dir / self.name}" + (f"@{self.version}" if self.version else "")


def parse_model_ref(ref: str) -> ModelRef:
    """Parse ``REPO/backbones/NAME[@vN]`` or ``REPO/sites/SITE[@vN]``; raise ValueError if not."""
    from training.repository import check_name, check_version

    path_text, sep, version = ref.rstrip("/").partition("@")
    path = Path(path_text)
    kind = _KIND_DIRS.get(path.parent.name)
    if kind is None or not path.name:
        raise ValueError(f"model REF {ref!r} is not valid. {REF_HELP}")
    check_name(path.name, f"{kind} name")
    return ModelRef(path.parent.parent, kind, path.name, check_version(version) if sep else None)


# --------------------------------------------------------------------------- helpers
_OPT_DATA = typer.Option("--data", help="HDF5 fingerprint file.", exists=True, dir_okay=False)
Loss = Annotated[str, typer.Option(help="Loss: mse (eq. 3) or nll (Gaussian NLL, eq. 4).")]
Out = Annotated[Path, typer.Option("--out", help="Model repository to publish into.")]
Epochs = Annotated[int, typer.Option(help="Most epochs per phase.")]
Patience = Annotated[int, typer.Option(help="Early-stopping patience (epochs).")]
BatchSize = Annotated[int, typer.Option(help="Batch size per environment and step.")]
Lr = Annotated[float, typer.Option(help="Learning rate (Adam).")]
Seed = Annotated[int, typer.Option(help="Seed for splits, initialisation and batches.")]
ValFraction = Annotated[float, typer.Option(help="Share held out for validation.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No per-epoch lines.")]
CalibrateSigma = Annotated[
    bool,
    typer.Option(help="nll: scale sigma per axis to fit the validation errors after training."),
]
Holdout = Annotated[
    float,
    typer.Option(
        help="Share of the environment held out as a test set (split by --seed); "
        "`csipos evaluate` with the same --holdout and --seed tests on it."
    ),
]


@contextmanager
def _cli_errors() -> Iterator[None]:
    """Turn the library's input errors into one red line and exit code 2, never a traceback."""
    from training.data.schema import SchemaError
    from training.repository import RepositoryError

    try:
        yield
    except (ValueError, SchemaError, RepositoryError, FileNotFoundError, KeyError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc


def _setup_logging(quiet: bool) -> None:
    # Plain lines on stderr: epoch lines must not wrap, and stdout stays clean for --json.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("training").setLevel(logging.WARNING if quiet else logging.INFO)


def _config(**kwargs: Any) -> Any:
    from training.meml import TrainConfig

    return TrainConfig(**kwargs)


_COLUMNS = {
    "me": "ME",
    "median": "median",
    "p90": "p90",
    "crps": "CRPS",
    "nll": "NLL",
    "within_1sigma": "in 1σ",
    "within_2sigma": "in 2σ",
}


def _metrics_table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    present = [k for k in _COLUMNS if any(k in m for m in rows.values())]
    table = Table(title=title)
    table.add_column("set")
    table.add_column("n", justify="right")
    for k in present:
        table.add_column(_COLUMNS[k], justify="right")
    for name, m in rows.items():
        cells = [f"{m[k]:.3f}" if k in m else "-" for k in present]
        table.add_row(name, str(int(m["n"])), *cells)
    return table


def _target_data(
    data: Path, env: str, fraction: float, holdout: float, seed: int
) -> tuple[Any, Any]:
    """(chosen fraction of the training pool, held-out test set or None) of a target env."""
    from training.data.fingerprints import read_environment
    from training.data.splits import fraction_subset, train_val_test

    fp = read_environment(data, env)
    split = train_val_test(len(fp), 0.0, holdout, seed)
    chosen = fraction_subset(split.train, fraction, seed)
    return fp.subset(chosen), fp.subset(split.test) if len(split.test) else None


def _backbone_name(env: str) -> str:
    return "dtl-" + re.sub(r"[^a-z0-9_-]+", "-", env.lower()).strip("-")[:58]


# --------------------------------------------------------------------------- source training
def _publish_source(
    result: Any,
    out: Path,
    name: str,
    kind: str,
    envs: list[str],
    set_default: bool,
    world: int = 1,
) -> None:
    from training.checkpoint import save_backbone
    from training.repository import ModelRepository

    repo = ModelRepository(out)
    config = {**result.config.to_dict(), "mode": kind, "envs": envs, "world_size": world}
    config["epochs_run"] = result.report.epochs
    version = save_backbone(
        repo,
        name,
        result.backbone,
        loss=result.config.loss,
        config=config,
        data_fingerprint=result.data_fingerprint,
        metrics={
            "val": result.metrics,
            "best_val_me": result.report.best_val_me,
            "val_loss_history": [row["val_loss"] for row in result.report.history],
            "train_loss_history": [row["train_loss"] for row in result.report.history],
        },
    )
    if set_default:
        repo.set_default_backbone(name)
    console.print(_metrics_table(f"{kind} validation (metres)", result.metrics))
    console.print(
        f"published {ModelRef(out, 'backbone', name, version)}  "
        f"({result.report.epochs['train']} epochs, "
        f"{result.report.samples_per_s * world:.0f} samples/s over {world} process(es))",
        soft_wrap=True,
    )


@app.command("meml")
def meml(
    data: Annotated[Path, _OPT_DATA],
    envs: Annotated[str, typer.Option(help="Comma-separated source environments.")],
    out: Out,
    loss: Loss = "mse",
    name: Annotated[str, typer.Option(help="Backbone name in the repository.")] = "meml",
    epochs: Epochs = 100,
    patience: Patience = 10,
    batch_size: BatchSize = 64,
    lr: Lr = 1e-3,
    val_fraction: ValFraction = 0.1,
    seed: Seed = 0,
    set_default: Annotated[
        bool, typer.Option(help="Make this the repository's default backbone.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """MEML: one backbone, one head per source environment, summed losses (eq. 5).

    Runs data-parallel under `torchrun --nproc_per_node=N csipos train meml ...`.
    """
    from training import distributed
    from training.meml import train_meml_file

    _setup_logging(quiet)
    with _cli_errors(), distributed.session() as ses:
        names = [e.strip() for e in envs.split(",") if e.strip()]
        if not names:
            raise ValueError("--envs is empty: expected e.g. industrial/bs0,industrial/bs1")
        cfg = _config(
            loss=loss,
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            seed=seed,
        )
        result = train_meml_file(
            data,
            names,
            cfg,
            quiet=quiet or not ses.is_main,
            shard=ses.shard,
            device=ses.device,
        )
        if ses.is_main:
            _publish_source(result, out, name, "meml", names, set_default, ses.shard.world)


@app.command("dtl")
def dtl(
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="The one source environment.")],
    out: Out,
    loss: Loss = "mse",
    name: Annotated[str | None, typer.Option(help="Backbone name (default dtl-<env>).")] = None,
    epochs: Epochs = 100,
    patience: Patience = 10,
    batch_size: BatchSize = 64,
    lr: Lr = 1e-3,
    val_fraction: ValFraction = 0.1,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """DTL: a full model on one source environment; its backbone is published for transfer."""
    from training.data.fingerprints import read_environment
    from training.meml import train_dtl

    _setup_logging(quiet)
    with _cli_errors():
        cfg = _config(
            loss=loss,
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            seed=seed,
        )
        result = train_dtl(env, read_environment(data, env), cfg, quiet=quiet)
        _publish_source(result, out, name or _backbone_name(env), "dtl", [env], False)


# --------------------------------------------------------------------------- target training
def _publish_site(
    out: Path,
    site: str,
    model: Any,
    parent: tuple[str, str] | None,
    config: dict[str, Any],
    val: dict[str, float],
    pool: Any,
    test_data: Any,
    report: Any,
) -> None:
    """Test on the held-out set (if any), then publish with the training data's fingerprint.

    ``config`` is the run's own part; the epochs run are added here.
    """
    from training.checkpoint import save_site_model
    from training.data.fingerprints import data_fingerprint
    from training.meml import evaluate_model
    from training.repository import ModelRepository

    test = None if test_data is None else evaluate_model(model.backbone, model.head, test_data)
    config = {**config, "epochs_run": report.epochs}
    fingerprint = data_fingerprint(pool)
    metrics: dict[str, Any] = dict(val)
    if test is not None:
        metrics["test"] = test
    version = save_site_model(
        ModelRepository(out),
        site,
        model,
        parent=parent,
        config=config,
        data_fingerprint=fingerprint,
        metrics=metrics,
    )
    rows = {"validation": val} | ({"test": test} if test is not None else {})
    console.print(_metrics_table(f"site {site} (metres)", rows))
    epochs = ", ".join(f"{name} {n}" for name, n in report.epochs.items())
    console.print(
        f"published {ModelRef(out, 'site', site, version)}  "
        f"(epochs: {epochs}; best val ME {report.best_val_me:.3f} m)",
        soft_wrap=True,
    )


@app.command("site")
def site_cmd(
    backbone: Annotated[str, typer.Option(help=_BACKBONE_HELP)],
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="Target environment in --data.")],
    out: Out,
    site: Annotated[str, typer.Option(help="Site id to publish as.")],
    fraction: Annotated[float, typer.Option(help="Share of the training pool to use.")] = 1.0,
    mode: Annotated[
        str, typer.Option(help="gradual (head, then all at lower lr) | finetune | head.")
    ] = "gradual",
    loss: Loss = "nll",
    holdout: Holdout = 0.2,
    epochs: Epochs = 100,
    patience: Patience = 10,
    batch_size: BatchSize = 64,
    lr: Lr = 1e-3,
    val_fraction: ValFraction = 0.2,
    seed: Seed = 0,
    calibrate_sigma: CalibrateSigma = True,
    quiet: Quiet = False,
) -> None:
    """Target training: the backbone plus a fresh head on a new site (eq. 6)."""
    from training.checkpoint import load_backbone
    from training.meml import split_train_val
    from training.repository import ModelRepository
    from training.transfer import check_mode, train_target

    _setup_logging(quiet)
    with _cli_errors():
        target_mode = check_mode(mode)
        ref = parse_model_ref(backbone)
        if ref.kind != "backbone":
            raise ValueError(f"--backbone {backbone!r} names a site; expected REPO/backbones/NAME")
        repo = ModelRepository(ref.root)
        version = repo.resolve("backbone", ref.name, ref.version)
        cfg = _config(
            loss=loss,
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            seed=seed,
            calibrate_sigma=calibrate_sigma,
        )
        pool, test = _target_data(data, env, fraction, holdout, seed)
        train, val = split_train_val(pool, val_fraction, seed)
        result = train_target(
            load_backbone(repo, ref.name, version),
            train,
            val,
            cfg,
            mode=target_mode,
            quiet=quiet,
        )
        config = {
            **cfg.to_dict(),
            "mode": mode,
            "backbone": f"{ref.name}:{version}",
            "data": str(data),
            "env": env,
            "fraction": fraction,
            "holdout": holdout,
        }
        _publish_site(
            out, site, result.model, (ref.name, version), config, result.metrics, pool, test,
            result.report,
        )  # fmt: skip


@app.command("scratch")
def scratch_cmd(
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="Target environment in --data.")],
    out: Out,
    site: Annotated[str, typer.Option(help="Site id to publish as.")],
    fraction: Annotated[float, typer.Option(help="Share of the training pool to use.")] = 1.0,
    loss: Loss = "nll",
    holdout: Holdout = 0.2,
    epochs: Epochs = 100,
    patience: Patience = 10,
    batch_size: BatchSize = 64,
    lr: Lr = 1e-3,
    val_fraction: ValFraction = 0.2,
    seed: Seed = 0,
    calibrate_sigma: CalibrateSigma = True,
    quiet: Quiet = False,
) -> None:
    """Scratch: a full model from random initialisation on the target only."""
    from training.meml import split_train_val, train_scratch

    _setup_logging(quiet)
    with _cli_errors():
        cfg = _config(
            loss=loss,
            epochs=epochs,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            val_fraction=val_fraction,
            seed=seed,
            calibrate_sigma=calibrate_sigma,
        )
        pool, test = _target_data(data, env, fraction, holdout, seed)
        train, val = split_train_val(pool, val_fraction, seed)
        result = train_scratch(train, val, cfg, quiet=quiet)
        config = {
            **cfg.to_dict(),
            "mode": "scratch",
            "data": str(data),
            "env": env,
            "fraction": fraction,
            "holdout": holdout,
        }
        _publish_site(
            out, site, result.site_model("target").eval(), None, config,
            result.metrics["target"], pool, test, result.report,
        )  # fmt: skip


# --------------------------------------------------------------------------- evaluate, export
def evaluate(
    model: Annotated[str, typer.Option(help=_SITE_HELP)],
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="Environment in --data to test on.")],
    holdout: Annotated[
        float,
        typer.Option(
            help="Test only on this held-out share (as `train site --holdout`, same --seed); "
            "0 tests on the whole environment."
        ),
    ] = 0.0,
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Test a site model: ME, median, p90 (metres); CRPS, NLL, calibration for nll models."""
    from training.checkpoint import load_site_model
    from training.data.fingerprints import read_environment
    from training.data.splits import train_val_test
    from training.meml import evaluate_model
    from training.metrics import CALIBRATION_EXPECTED
    from training.repository import ModelRepository

    _setup_logging(True)
    with _cli_errors():
        ref = parse_model_ref(model)
        if ref.kind != "site":
            raise ValueError(f"--model {model!r} is a backbone; evaluate needs REPO/sites/SITE")
        repo = ModelRepository(ref.root)
        version = repo.resolve("site", ref.name, ref.version)
        site_model = load_site_model(repo, ref.name, version)
        fp = read_environment(data, env)
        if holdout > 0:
            fp = fp.subset(train_val_test(len(fp), 0.0, holdout, seed).test)
        metrics = evaluate_model(site_model.backbone, site_model.head, fp)
    if as_json:
        payload = {"site": ref.name, "version": version, "env": env, "metrics": metrics}
        typer.echo(json.dumps(payload, indent=2))
        return
    table = Table(title=f"{ref.name} {version} on {env} ({int(metrics['n'])} points)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("expected", justify="right")
    units = {"me": "m", "median": "m", "p90": "m", "crps": "m", "nll": ""}
    for key, unit in units.items():
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.3f} {unit}".rstrip(), "")
    for key, expected in CALIBRATION_EXPECTED.items():
        if key in metrics:
            table.add_row(key, f"{100 * metrics[key]:.1f} %", f"{100 * expected:.1f} %")
    console.print(table)


def export(
    model: Annotated[str, typer.Option(help=escape(REF_HELP))],
    out: Annotated[
        Path | None, typer.Option(help="ONNX file to write (default ./<name>-<version>.onnx).")
    ] = None,
) -> None:
    """Re-export a published site model (backbone + head) or backbone as ONNX.

    Published versions are immutable, so the file goes outside the repository.
    """
    from training.checkpoint import load_backbone, load_site_model
    from training.export import export_backbone, export_site_model
    from training.repository import ModelRepository

    with _cli_errors():
        ref = parse_model_ref(model)
        repo = ModelRepository(ref.root)
        version = repo.resolve(ref.kind, ref.name, ref.version)
        target = out or Path(f"{ref.name}-{version}.onnx")
        if ref.kind == "site":
            parent = repo.manifest("site", ref.name, version).get("parent") or {}
            backbone_ref = f"{parent['backbone']}:{parent['version']}" if parent else ""
            site_model = load_site_model(repo, ref.name, version)
            export_site_model(
                site_model, target, site=ref.name, version=version, backbone_ref=backbone_ref
            )
        else:
            backbone = load_backbone(repo, ref.name, version)
            export_backbone(backbone, target, name=ref.name, version=version)
    console.print(f"wrote {target}")


def register_top_level(root: typer.Typer) -> None:
    """Add `evaluate` and `export` to the root app."""
    root.command("evaluate")(evaluate)
    root.command("export")(export)
