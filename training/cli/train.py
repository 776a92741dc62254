"""`csipos train ...`, `csipos evaluate`, `csipos export`.

Models are named by a REF: a path into a model repository,
``REPO/backbones/NAME[@vN]`` or ``REPO/sites/SITE[@vN]`` (without ``@vN``: the
active version), e.g. ``models/sites/lab-los@v2``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.cli.options import train_options
from training.config import TrainConfig
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


def _resolve_ref(text: str, kind: str, wrong_kind: str) -> tuple[ModelRef, Any, str]:
    """(REF, its `ModelRepository`, the resolved version) of a ``kind`` REF; ``wrong_kind``
    is the error when it names the other kind."""
    from training.repository import ModelRepository

    ref = parse_model_ref(text)
    if ref.kind != kind:
        raise ValueError(wrong_kind)
    repo = ModelRepository(ref.root)
    return ref, repo, repo.resolve(kind, ref.name, ref.version)


# --------------------------------------------------------------------------- helpers
_OPT_DATA = typer.Option("--data", help="HDF5 fingerprint file.", exists=True, dir_okay=False)
Out = Annotated[Path, typer.Option("--out", help="Model repository to publish into.")]
SiteOut = Annotated[Path, typer.Option("--out", help="Model repository to publish into.")]
Seed = Annotated[int, typer.Option(help="Seed for splits, initialisation and batches.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No per-validation lines.")]
Fraction = Annotated[float, typer.Option(help="Share of the training pool to use.")]
Inputs = Annotated[
    str,
    typer.Option(
        help="Input representation inside the backbone: raw (the paper's) | phase (common "
        "phase removed) | phase-delay (timing ramp and common phase removed)."
    ),
]
ScratchInputs = Annotated[
    str | None,
    typer.Option(
        "--inputs",
        help="Input representation inside the model: raw | phase | phase-delay. Default: the "
        "inputs of the default backbone in --out (scratch is the baseline a backbone is "
        "judged against, on the same inputs), raw where there is none.",
        show_default=False,
    ),
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
    # Plain lines on stderr: validation lines must not wrap, and stdout stays clean for --json.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("training").setLevel(logging.WARNING if quiet else logging.INFO)


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


def _expand_envs(data: Path | list[Path], envs: str, what: str = "--envs") -> dict[str, Path]:
    """The environments ``--envs`` names, patterns expanded against the files, in order."""
    from training.data.catalog import environments_in, match_environments

    parts = [e.strip() for e in envs.split(",") if e.strip()]
    if not parts:
        raise ValueError(f"{what} is empty: expected e.g. industrial/bs0,industrial/bs1")
    files = data if isinstance(data, list) else [data]
    return match_environments(environments_in(files), parts, what=f"{what} entry")


def _backbone_config(inputs: str) -> Any:
    from training.nets import BackboneConfig

    return BackboneConfig(inputs=inputs)  # type: ignore[arg-type]  # checked in the config


def _scratch_inputs(out: Path, inputs: str | None) -> str:
    """``inputs``, else those of the default backbone in ``out``, else raw. The fair
    scratch reads the transfer arm's representation: on the shipped phase-delay backbone's,
    raw-input scratch with the product's copies was 1.01x its error on the labs and 1.30x
    on 8 held-out scenes (docs/results/transfer/timing)."""
    if inputs is not None:
        return inputs
    from training.checkpoint import load_backbone
    from training.repository import ModelRepository, NotFound

    repo = ModelRepository(out)
    try:
        name = repo.default_backbone()
        version = repo.resolve("backbone", name, None)
    except NotFound:
        return "raw"
    return load_backbone(repo, name, version).config.inputs


def _backbone_name(env: str) -> str:
    return "dtl-" + re.sub(r"[^a-z0-9_-]+", "-", env.lower()).strip("-")[:58]


# --------------------------------------------------------------------------- source training
def _save_source_backbone(
    out: Path,
    name: str,
    result: Any,
    config: dict[str, Any],
    metrics: dict[str, Any],
    env_files: Mapping[str, Path],
    set_default: bool = False,
) -> str:
    """Publish a source training's backbone (MEML, DTL, MAML...) with its manifest and the
    corpus background of its sources' channel statistics (`training.novelty`, for the
    out-of-site detectors of sites adapted from it); the one place that writes a newly
    trained backbone into a repository from the CLI (`background` re-publishes one)."""
    import torch

    from training.checkpoint import save_backbone
    from training.repository import ModelRepository

    background = _source_background(env_files, result.config.seed)
    repo = ModelRepository(out)
    version = save_backbone(
        repo,
        name,
        result.backbone,
        loss=result.config.loss,
        config={**config, "torch_threads": torch.get_num_threads()},
        data_fingerprint=result.data_fingerprint,
        metrics={**metrics, "background": background.summary()},
        background=background,
    )
    if set_default:
        repo.set_default_backbone(name)
    return version


def _source_background(env_files: Mapping[str, Path], seed: int) -> Any:
    """The corpus background (`training.novelty.Background`) of source environments, read
    one environment at a time."""
    from training.data.fingerprints import read_environment
    from training.novelty import fit_background

    return fit_background(
        (read_environment(path, env).csi for env, path in env_files.items()), seed=seed
    )


def _publish_source(
    result: Any,
    out: Path,
    name: str,
    kind: str,
    env_files: Mapping[str, Path],
    set_default: bool,
    world: int = 1,
    probe_envs: list[str] | None = None,
) -> None:
    envs = list(env_files)
    config = {**result.config.to_dict(), "mode": kind, "envs": envs, "world_size": world}
    config["epochs_run"] = result.report.epochs
    config["steps_run"] = result.report.steps
    config["degenerate"] = result.degenerate
    if probe_envs:
        config["probe_envs"] = probe_envs
    metrics = {
        "val": result.metrics,
        "best_val_me": result.report.best_val_me,
        "val_loss_history": [row["val_loss"] for row in result.report.history],
        "train_loss_history": [row["train_loss"] for row in result.report.history],
    }
    if result.probe_me:
        metrics["probe_me"] = result.probe_me
        metrics["probe_score_history"] = [row["score"] for row in result.report.history]
    version = _save_source_backbone(out, name, result, config, metrics, env_files, set_default)
    console.print(_metrics_table(f"{kind} validation (metres)", result.metrics))
    if result.degenerate:
        err_console.print(
            f"[yellow]warning:[/yellow] degenerate (validation ME near the centroid's): "
            f"{', '.join(result.degenerate)}",
            soft_wrap=True,
        )
    console.print(
        f"published {ModelRef(out, 'backbone', name, version)}  "
        f"({result.report.steps['train']} steps, {result.report.epochs['train']} epochs, "
        f"{result.report.samples_per_s * world:.0f} samples/s over {world} process(es))",
        soft_wrap=True,
    )


@app.command("meml")
@train_options(loss="mse", val_fraction=0.1)
def meml(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="HDF5 fingerprint file; repeat for a corpus traced in several files.",
            exists=True,
            dir_okay=False,
        ),
    ],
    envs: Annotated[
        str,
        typer.Option(
            help="Comma-separated source environments; shell-style patterns match the "
            "file's environments (e.g. 'proc/*' for a procedural corpus)."
        ),
    ],
    out: Out,
    config: TrainConfig,
    name: Annotated[str, typer.Option(help="Backbone name in the repository.")] = "meml",
    set_default: Annotated[
        bool, typer.Option(help="Make this the repository's default backbone.")
    ] = False,
    inputs: Inputs = "raw",
    envs_per_step: Annotated[
        int,
        typer.Option(
            help="Environments a step takes a batch from, drawn at random (0: all of them)."
        ),
    ] = 0,
    lazy: Annotated[
        bool,
        typer.Option(help="Leave the training CSI on disk and read it as batches are drawn."),
    ] = False,
    read_workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --lazy: processes that read ahead (0: the trainer reads). For a GPU, "
            "which trains faster than one core inflates the file; the batches are the same.",
        ),
    ] = 0,
    probe_envs: Annotated[
        str | None,
        typer.Option(
            help="Held-out environments (names or patterns, never sources) that measure "
            "transfer: early stopping and the kept checkpoint follow the ME of fresh linear "
            "heads fitted on --probe-labels of their samples. Use whole scenes, e.g. "
            "'proc/s0060/*,proc/s0061/*'."
        ),
    ] = None,
    probe_labels: Annotated[
        int, typer.Option(help="Labelled samples per probe environment.")
    ] = 100,
    quiet: Quiet = False,
) -> None:
    """MEML: one backbone, one head per source environment, summed losses (eq. 5).

    Runs data-parallel under `torchrun --nproc_per_node=N csipos train meml ...`.
    With hundreds of environments, --envs-per-step draws that many per step and
    --lazy trains a corpus larger than RAM; --probe-envs selects the checkpoint by
    transfer to held-out scenes (single process only).
    """
    from training import distributed
    from training.data.fingerprints import read_environment
    from training.meml import SourceData, train_sources
    from training.probe import TransferProbe

    _setup_logging(quiet)
    with _cli_errors(), distributed.session() as ses:
        if read_workers and not lazy:
            raise ValueError(
                f"--read-workers {read_workers} reads the training CSI from disk ahead of the "
                "trainer: it needs --lazy (without it the CSI is in memory)"
            )
        found = _expand_envs(data, envs)
        held_out = _expand_envs(data, probe_envs, "--probe-envs") if probe_envs else {}
        names = [e for e in found if e not in held_out]
        if not names:
            raise ValueError("every --envs environment is also a --probe-envs one: no sources")
        config = config.replace(envs_per_step=envs_per_step)
        sources = {
            env: SourceData.from_file(
                found[env], env, config.val_fraction, config.seed, ses.shard, lazy=lazy
            )
            for env in names
        }
        probe = (
            TransferProbe.from_fingerprints(
                {e: read_environment(p, e) for e, p in held_out.items()},
                probe_labels,
                config.seed,
            )
            if held_out
            else None
        )
        result = train_sources(
            sources,
            config,
            backbone_config=_backbone_config(inputs),
            quiet=quiet or not ses.is_main,
            shard=ses.shard,
            device=ses.device,
            probe=probe,
            read_workers=read_workers,
        )
        if ses.is_main:
            _publish_source(
                result,
                out,
                name,
                "meml",
                {env: found[env] for env in names},
                set_default,
                ses.shard.world,
                sorted(held_out),
            )


@app.command("maml")
@train_options(loss="mse", val_fraction=0.1)
def maml(
    data: Annotated[Path, _OPT_DATA],
    envs: Annotated[
        str,
        typer.Option(help="Comma-separated source environments (one task each); patterns ok."),
    ],
    out: Out,
    config: TrainConfig,
    variant: Annotated[
        str, typer.Option(help="maml (Finn et al.) or tb-maml (task-biased, Owfi et al.).")
    ] = "maml",
    name: Annotated[str | None, typer.Option(help="Backbone name (default: the variant).")] = None,
    inner_lr: Annotated[
        float, typer.Option(help="Inner-loop gradient-descent rate.")
    ] = TrainConfig.inner_lr,
    inner_steps: Annotated[
        int, typer.Option(help="Inner-loop steps on the support batch.")
    ] = TrainConfig.inner_steps,
    first_order: Annotated[
        bool, typer.Option(help="First-order outer gradient (FOMAML) instead of second order.")
    ] = False,
    inputs: Inputs = "raw",
    quiet: Quiet = False,
) -> None:
    """MAML / TB-MAML: a meta-learned initialisation over the source environments
    (`training.meta`, docs/meta-learning.md); its backbone is published for transfer.

    Only the backbone goes into the repository (sites start from a fresh head, as after
    MEML); the experiment grid also uses the meta-learned head. Single process only.
    """
    from training.data.fingerprints import read_environment
    from training.meml import SourceData
    from training.meta import check_variant, train_meta

    _setup_logging(quiet)
    with _cli_errors():
        kind = check_variant(variant)
        names = _expand_envs(data, envs)
        try:
            config = config.replace(
                inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        sources = {
            env: SourceData.split(read_environment(path, env), config.val_fraction, config.seed)
            for env, path in names.items()
        }
        result = train_meta(
            sources, config, variant=kind, backbone_config=_backbone_config(inputs), quiet=quiet
        )
        _publish_meta(result, out, name or kind.replace("-", ""), names)


def _publish_meta(result: Any, out: Path, name: str, env_files: Mapping[str, Path]) -> None:
    config = {**result.config.to_dict(), "mode": result.variant, "envs": list(env_files)}
    config.update(steps_run={"meta": result.steps}, best_step=result.best_step)
    metrics = {
        "val": result.metrics,
        "best_val_me": result.best_val_me,
        "val_loss_history": [row["val_loss"] for row in result.history],
        "rate_factors": result.rate_factors,
    }
    version = _save_source_backbone(out, name, result, config, metrics, env_files)
    console.print(_metrics_table(f"{result.variant} validation after adaptation", result.metrics))
    console.print(
        f"published {ModelRef(out, 'backbone', name, version)}  ({result.steps} meta-steps, "
        f"{result.samples / max(result.wall_s, 1e-9):.0f} samples/s)",
        soft_wrap=True,
    )


@app.command("dtl")
@train_options(loss="mse", val_fraction=0.1)
def dtl(
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="The one source environment.")],
    out: Out,
    config: TrainConfig,
    name: Annotated[str | None, typer.Option(help="Backbone name (default dtl-<env>).")] = None,
    inputs: Inputs = "raw",
    quiet: Quiet = False,
) -> None:
    """DTL: a full model on one source environment; its backbone is published for transfer."""
    from training.data.fingerprints import read_environment
    from training.meml import SourceData, train_sources

    _setup_logging(quiet)
    with _cli_errors():
        source = SourceData.split(read_environment(data, env), config.val_fraction, config.seed)
        result = train_sources(
            {env: source}, config, backbone_config=_backbone_config(inputs), quiet=quiet
        )
        _publish_source(result, out, name or _backbone_name(env), "dtl", {env: data}, False)


@app.command("background")
def background(
    backbone: Annotated[
        str, typer.Option(help=escape("Backbone to extend: REPO/backbones/NAME[@vN]."))
    ],
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="HDF5 file(s) holding its source environments; repeat for a corpus.",
            exists=True,
            dir_okay=False,
        ),
    ],
    envs: Annotated[
        str | None,
        typer.Option(
            help="Source environments or patterns (default: the envs its manifest records)."
        ),
    ] = None,
) -> None:
    """Publish a backbone's next version with the same weights and the corpus background of
    its sources' channel statistics (`background.npz`), so that sites adapted from it score
    out-of-site relative to the corpus (`training.novelty`). For backbones published
    before backgrounds existed; `csipos train meml|dtl|maml` write one themselves."""
    from training.checkpoint import load_backbone, save_backbone

    with _cli_errors():
        ref, repo, version = _resolve_ref(
            backbone, "backbone", f"--backbone must name a backbone, got {backbone!r}"
        )
        manifest = repo.manifest("backbone", ref.name, version)
        config = dict(manifest.get("config") or {})
        recorded = config.get("envs")
        recorded = recorded if isinstance(recorded, list) else []
        if envs is None and not recorded:
            raise ValueError(f"{ref}: its manifest records no source envs; pass --envs")
        wanted = envs if envs is not None else ",".join(str(e) for e in recorded)
        found = _expand_envs(data, wanted)
        seed = int(config.get("seed", 0))
        fitted = _source_background(found, seed)
        new = save_backbone(
            repo,
            ref.name,
            load_backbone(repo, ref.name, version),
            loss=str(manifest.get("loss") or "mse"),
            config={**config, "background_envs": list(found)},
            data_fingerprint=manifest.get("data_fingerprint"),
            metrics={**(manifest.get("metrics") or {}), "background": fitted.summary()},
            parent=(ref.name, version),
            background=fitted,
        )
    console.print(
        f"published {ModelRef(ref.root, 'backbone', ref.name, new)}: the weights of {version} "
        f"and a background of {fitted.n} fingerprints from {fitted.environments} environments",
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- target training
def _adapt_cli(
    data: Path,
    env: str,
    out: Path,
    site: str,
    config: TrainConfig,
    *,
    backbone: str | None,
    mode: str,
    fraction: float,
    holdout: float,
    quiet: bool,
    backbone_config: Any = None,
    unlabelled: Path | None = None,
    unlabelled_env: str | None = None,
) -> None:
    """`csipos train site|scratch`: the one site pipeline (`training.transfer.adapt_site`),
    then the validation and test tables. `env` naming a group of environments (not an
    environment) adapts a multi-BS site: its environments are the base stations.
    `unlabelled`: a file of unlabelled tracks (`training.data.unlabelled`)."""
    from training.data.fingerprints import list_environments, read_environment
    from training.data.site import SiteFingerprints, read_site
    from training.data.unlabelled import UnlabelledTracks, load_site_unlabelled, load_unlabelled
    from training.fusion import JOINT
    from training.repository import ModelRepository
    from training.transfer import adapt_site, check_mode

    scratch = mode == "scratch"
    target_mode = check_mode("finetune" if scratch else mode)
    repo = ModelRepository(out)
    source_repo, ref_text = None, None
    if backbone is not None:
        ref = parse_model_ref(backbone)
        if ref.kind != "backbone":
            raise ValueError(f"--backbone {backbone!r} names a site; expected REPO/backbones/NAME")
        source_repo = ModelRepository(ref.root)
        ref_text = ref.name + (f":{ref.version}" if ref.version else "")

    def show(info: dict[str, Any]) -> None:
        if not quiet:
            err_console.print(
                f"{info.get('candidate', info['phase'])}: step {info.get('step')}, "
                f"val ME {info['val_me']:.3f} m (best {info['best_val_me']:.3f})",
                highlight=False,
            )

    if unlabelled_env is not None and unlabelled is None:
        raise ValueError("--unlabelled-env needs --unlabelled FILE")
    target = read_environment(data, env) if env in list_environments(data) else read_site(data, env)
    tracks: UnlabelledTracks | dict[str, UnlabelledTracks] | None = None
    if unlabelled is not None and isinstance(target, SiteFingerprints) and len(target.bs_ids) > 1:
        tracks = load_site_unlabelled(unlabelled, target.bs_ids, unlabelled_env)
    elif unlabelled is not None:
        tracks = load_unlabelled(unlabelled, unlabelled_env)
    unlabelled_source = (
        {"unlabelled": str(unlabelled), "unlabelled_env": unlabelled_env} if unlabelled else {}
    )
    result = adapt_site(
        repo,
        site,
        target,
        backbone=ref_text,
        mode=target_mode,
        loss=config.loss,
        val_fraction=config.val_fraction,
        seed=config.seed,
        config=config,
        quiet=True,
        progress=None if quiet else show,
        scratch=scratch,
        holdout=holdout,
        fraction=fraction,
        source_repo=source_repo,
        backbone_config=backbone_config,
        extra={"data": str(data), "env": env, **unlabelled_source},
        unlabelled=tracks,
    )
    val = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    rows = {"validation": val} | ({"test": result.test} if result.test is not None else {})
    for bs, per_bs in (result.metrics.get("bs") or {}).items():
        rows[f"{bs} validation"] = {k: v for k, v in per_bs.items() if isinstance(v, float)}
    joint = (result.metrics.get("fusion") or {}).get(JOINT)
    if isinstance(joint, dict):  # the joint head alone, and the fusion without it
        rows["joint head validation"] = {k: v for k, v in joint.items() if isinstance(v, float)}
        without = {k: v for k, v in joint["without"].items() if isinstance(v, float)}
        rows["fused without joint (uninflated)"] = without
    console.print(_metrics_table(f"site {site} (metres)", rows))
    steps = ", ".join(f"{name} {n}" for name, n in result.steps.items())
    console.print(
        f"published {ModelRef(out, 'site', site, result.version)}  "
        f"(mode {result.chosen_mode}; steps: {steps}; val ME {val['me']:.3f} m)",
        soft_wrap=True,
    )
    by_set = (result.metrics.get("fusion") or {}).get("inflation_by_set")
    if by_set:  # what widens the fused covariance, by the BSs that heard the UE
        sets = ", ".join(f"{key} {factor:.2f}" for key, factor in by_set.items())
        console.print(f"fused covariance inflation by the BSs heard: {sets}", soft_wrap=True)
    if tracks is not None:
        used = repo.manifest("site", site, result.version)["config"]
        choice = used.get("unlabelled_choice") or {}
        if choice.get("kept") is False:  # a multi-BS site fused better without them
            console.print(
                f"unlabelled: not used: the site fused better on validation without them "
                f"({choice['criterion']} {choice['val_score_without']:.3f} against "
                f"{choice['val_score_with']:.3f} with)",
                soft_wrap=True,
            )
        else:
            console.print(
                f"unlabelled: {used['unlabelled_samples']} samples on "
                f"{used['unlabelled_tracks']} tracks, {used['track_pairs']} pairs"
                + (
                    f" ({used['found_pairs']} of them found by their channels)"
                    if used.get("found_pairs")
                    else ""
                )
                + f" (track weight {config.track_weight:g})"
                + (f"; base stations {', '.join(tracks)}" if isinstance(tracks, dict) else ""),
                soft_wrap=True,
            )
    novelty = result.metrics.get("novelty")
    if isinstance(novelty, dict):
        tested = novelty.get("test_false_alarm")
        console.print(
            f"out-of-site detector: threshold {novelty['threshold']:.2f} (Mahalanobis, "
            f"{100 * novelty['false_alarm']:.0f} % false alarms on {novelty['n_val']} validation "
            "points)" + ("" if tested is None else f"; test-set false alarms {100 * tested:.1f} %"),
            soft_wrap=True,
        )
    ue = result.metrics.get("ue_novelty")
    if isinstance(ue, dict):  # the out-of-site threshold's scale from the walks (walk_alarm)
        console.print(
            f"out of site: threshold scale {ue['scale']:.2f}, fitted on "
            f"{ue['walk_instants']} walk instants ({ue['walk_tracks']} tracks); the walks "
            f"alarm on {100 * ue['walk_false_alarm_unscaled']:.1f} % unscaled, "
            f"{100 * ue['walk_false_alarm']:.1f} % as served",
            soft_wrap=True,
        )
    if val.get("degenerate"):
        err_console.print(
            "[yellow]warning:[/yellow] degenerate run: validation ME within 5 % of the "
            "centroid predictor's (after a second initialisation)",
            soft_wrap=True,
        )


UnlabelledFile = Annotated[
    Path | None,
    typer.Option(
        "--unlabelled",
        help="HDF5 file of unlabelled tracks from the same BS (csi, time, track; no positions; "
        "csi alone: fingerprints without tracks, paired by their channels): its groups with "
        "attribute unlabelled=True, or the one --unlabelled-env names. For a "
        "multi-BS site, groups named by BS id (or the children of --unlabelled-env).",
    ),
]
UnlabelledEnv = Annotated[
    str | None,
    typer.Option(
        help="Group of --unlabelled to use (may be labelled: its positions are ignored); for a "
        "multi-BS site, the group holding one group per BS id."
    ),
]
_TRACK_WEIGHT = TrainConfig().track_weight
TrackWeight = Annotated[
    float,
    typer.Option(help="Weight of the track-consistency term with --unlabelled (0: off)."),
]


@app.command("site")
@train_options(loss="nll", val_fraction=0.2, calibrate_sigma=True)
def site_cmd(
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[
        str,
        typer.Option(
            help="Target environment in --data, or a group of environments: the base "
            "stations of a multi-BS site (one model each, fused at /locate)."
        ),
    ],
    site: Annotated[str, typer.Option(help="Site id to publish as.")],
    config: TrainConfig,
    out: SiteOut = Path("models"),
    backbone: Annotated[str | None, typer.Option(help=_BACKBONE_HELP)] = None,
    fraction: Fraction = 1.0,
    mode: Annotated[
        str,
        typer.Option(
            help="auto (default: trains finetune and head, below 500 labels gradual, and "
            "from 2,000 labels scratch and fresh-dense (a fresh dense layer) too; keeps the "
            "best on validation; at a multi-BS site finetune, gradual and head for "
            "every BS, one mode for all, the best fused) | finetune | gradual (short head "
            "warm-up, then all layers) | "
            "gradual-paper (head until plateau, then all at lr x 0.1) | head."
        ),
    ] = "auto",
    holdout: Holdout = 0.2,
    quiet: Quiet = False,
    unlabelled: UnlabelledFile = None,
    unlabelled_env: UnlabelledEnv = None,
    track_weight: TrackWeight = _TRACK_WEIGHT,
) -> None:
    """Target training: a backbone plus a fresh head on a new site (eq. 6).

    Without --backbone, the default backbone of the --out repository. --unlabelled adds
    tracks without positions (docs/architecture.md, "Unlabelled tracks").
    """
    _setup_logging(quiet)
    with _cli_errors():
        if mode == "scratch":
            raise ValueError("mode 'scratch' is `csipos train scratch`")
        _adapt_cli(
            data, env, out, site, config.replace(track_weight=track_weight), backbone=backbone,
            mode=mode, fraction=fraction, holdout=holdout, quiet=quiet, unlabelled=unlabelled,
            unlabelled_env=unlabelled_env,
        )  # fmt: skip


@app.command("scratch")
@train_options(loss="nll", val_fraction=0.2, calibrate_sigma=True)
def scratch_cmd(
    data: Annotated[Path, _OPT_DATA],
    env: Annotated[str, typer.Option(help="Target environment in --data.")],
    site: Annotated[str, typer.Option(help="Site id to publish as.")],
    config: TrainConfig,
    out: SiteOut = Path("models"),
    fraction: Fraction = 1.0,
    holdout: Holdout = 0.2,
    inputs: ScratchInputs = None,
    quiet: Quiet = False,
    unlabelled: UnlabelledFile = None,
    unlabelled_env: UnlabelledEnv = None,
    track_weight: TrackWeight = _TRACK_WEIGHT,
) -> None:
    """Scratch: a full model from random initialisation on the target only."""
    _setup_logging(quiet)
    with _cli_errors():
        _adapt_cli(
            data, env, out, site, config.replace(track_weight=track_weight), backbone=None,
            mode="scratch", fraction=fraction, holdout=holdout, quiet=quiet,
            backbone_config=_backbone_config(_scratch_inputs(out, inputs)),
            unlabelled=unlabelled, unlabelled_env=unlabelled_env,
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
    ood_env: Annotated[
        str | None,
        typer.Option(
            help="Out-of-site check: environments of other sites (comma list, shell patterns) "
            "to score with the site's novelty model; reports their detection rate and the "
            "false-alarm rate on --env (its --holdout share)."
        ),
    ] = None,
    ood_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="HDF5 file(s) holding --ood-env (repeatable; default: --data).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Test a site model: ME, median, p90 (metres); CRPS, NLL, calibration for nll models;
    with --ood-env, out-of-site detection against other sites' fingerprints."""
    from training.checkpoint import load_novelty, load_site_model
    from training.data.fingerprints import read_environment
    from training.data.splits import train_val_test
    from training.metrics import CALIBRATION_EXPECTED, evaluate_model
    from training.novelty import SINGLE_HEAD, evaluate_out_of_site

    _setup_logging(True)
    with _cli_errors():
        ref, repo, version = _resolve_ref(
            model, "site", f"--model {model!r} is a backbone; evaluate needs REPO/sites/SITE"
        )
        site_model = load_site_model(repo, ref.name, version)
        fp = read_environment(data, env)
        if holdout > 0:
            fp = fp.subset(train_val_test(len(fp), 0.0, holdout, seed).test)
        metrics = evaluate_model(site_model.backbone, site_model.head, fp)
        ood: dict[str, Any] | None = None
        if ood_env is not None:
            novelty = (load_novelty(repo, ref.name, version) or {}).get(SINGLE_HEAD)
            if novelty is None:
                raise ValueError(
                    f"{ref.name} {version} has no novelty model (published before out-of-site "
                    "detection, or with too little validation data): re-adapt the site"
                )
            where = _expand_envs(ood_data or [data], ood_env, "--ood-env")
            # A pattern may match the site's own environment: that is not another site.
            foreign = {
                name: read_environment(path, name)
                for name, path in where.items()
                if not (name == env and path.resolve() == data.resolve())
            }
            ood = evaluate_out_of_site(site_model, novelty, fp, foreign)
    if as_json:
        payload = {"site": ref.name, "version": version, "env": env, "metrics": metrics}
        if ood is not None:
            payload["out_of_site"] = ood
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
    if ood is not None:
        console.print(_out_of_site_table(ref.name, env, ood))


def _out_of_site_table(site: str, env: str, ood: dict[str, Any]) -> Table:
    """Out-of-site share per set: false alarms on the site's own, detection on others."""
    table = Table(
        title=f"{site}: out of site (threshold {ood['threshold']:.2f}, "
        f"target {100 * ood['false_alarm_target']:.0f} % false alarms)"
    )
    for col in ("set", "n", "out of site", "ME", "in 1σ model", "in 1σ answered"):
        table.add_column(col, justify="left" if col == "set" else "right")

    def row(name: str, r: dict[str, Any]) -> None:
        m, a = r["model"], r.get("answered", {})
        cov = [f"{100 * x['within_1sigma']:.1f} %" if "within_1sigma" in x else "-" for x in (m, a)]
        table.add_row(name, str(r["n"]), f"{100 * r['out_of_site']:.1f} %", f"{m['me']:.2f}", *cov)

    row(f"{env} (own: false alarms)", ood["own"])
    for name, r in ood["foreign"].items():
        row(name, r)
    return table


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
