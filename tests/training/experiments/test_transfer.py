"""The label-budget (`transfer`) grid: source sets held out by scene, probes, seeds as folds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.training.toychannel import toy_fingerprints
from training.data.fingerprints import EnvironmentMeta, write_environment
from training.experiments import jobs, sources
from training.experiments.grid import (
    QUICK,
    TRANSFER,
    TRANSFER_2CORE,
    Run,
    SourceSet,
    meta_variant,
    strategy_kind,
)
from training.experiments.runner import run_experiment

# Ten toy "scenes" of one or two BSs: s0000-s0005 sources, s0006 the probe, s0007-s0008 targets.
SCENES = {f"proc/s{k:04d}": 2 if k % 2 else 1 for k in range(9)}
PRESET = dataclasses.replace(
    QUICK,
    name="transfer-test",
    targets=("proc/s0007/bs0", "proc/s0008/bs0"),
    source_envs=(),
    dtl_sources=(),
    modes=("finetune",),
    meml_losses=("nll",),
    meta_losses=(),  # MAML/TB-MAML over a source set: their own test below
    labels=(20, 60, 500),
    folds=(0, 1),
    source_sets=(SourceSet("corpus3", ("proc/*",), 3), SourceSet("corpus", ("proc/*",))),
    probe_envs=("proc/s0006/*",),
    probe_labels=30,
    inputs="phase-delay",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The toy corpus in two files, as a chunked simulation would write it."""
    root = tmp_path_factory.mktemp("corpus")
    files = [root / "a.h5", root / "b.h5"]
    for k, (scene, n_bs) in enumerate(SCENES.items()):
        for b in range(n_bs):
            bs = (3.0 * k, 2.0 * b)
            meta = EnvironmentMeta(bs_position=(*bs, 3.0), description="toy", source={"k": k})
            write_environment(
                files[k % 2], f"{scene}/bs{b}", toy_fingerprints(120, bs, seed=10 * k + b), meta
            )
    return files


def test_runs_count_labels_and_ids_say_so() -> None:
    runs = PRESET.runs()
    assert {r.labels for r in runs} == {20, 60, 500}
    assert {r.strategy for r in runs} == {"scratch", "meml-nll@corpus3", "meml-nll@corpus"}
    run = Run("proc/s0007/bs0", "nll", "meml-nll@corpus3", "finetune", 1.0, 1, 60)
    assert run.id == "proc_s0007_bs0.nll.meml-nll@corpus3.finetune.n00060.k1"
    assert run.cell[4] == 60.0
    # The full preset and its 2-core cut are consistent.
    assert set(TRANSFER_2CORE.targets) == set(TRANSFER.targets) and len(TRANSFER.targets) == 10
    with pytest.raises(ValueError, match="source set names"):
        dataclasses.replace(PRESET, source_sets=(SourceSet("a", ("x",)), SourceSet("a", ("y",))))


def test_source_sets_hold_out_whole_scenes_and_nest(corpus: list[Path]) -> None:
    env_paths = jobs.locate_data(PRESET, corpus)
    full = sources.source_set_envs(PRESET, "corpus", env_paths, seed=0)
    small = sources.source_set_envs(PRESET, "corpus3", env_paths, seed=0)
    # No environment of a target's or the probe's scene, whichever BS it is.
    assert not {e for e in full if e.startswith(("proc/s0006", "proc/s0007", "proc/s0008"))}
    assert len(full) == 9 and len(small) == 3 and set(small) <= set(full)
    assert sources.source_set_envs(PRESET, "corpus3", env_paths, seed=0) == small
    assert sources.probe_envs(PRESET, env_paths) == ["proc/s0006/bs0"]
    too_many = dataclasses.replace(PRESET, source_sets=(SourceSet("big", ("proc/*",), 50),))
    with pytest.raises(ValueError, match="asks for 50 environments; the data holds 9"):
        sources.source_set_envs(too_many, "big", env_paths, seed=0)


def test_label_draws_are_nested_disjoint_from_test_and_budgets_capped(corpus: list[Path]) -> None:
    env_paths = jobs.locate_data(PRESET, corpus)
    sizes = jobs.data_sizes(env_paths)
    planned = jobs.planned_runs(PRESET, sizes, seed=0)
    # 120 samples, 20 % test: a pool of 96 cannot give 500 labels, so those are not planned.
    assert {r.labels for r in planned} == {20, 60}
    split = jobs.target_split(120, PRESET, 0, "proc/s0007/bs0")
    small = Run("proc/s0007/bs0", "nll", "scratch", "finetune", 1.0, 0, 20)
    big = dataclasses.replace(small, labels=60)
    tr_s, va_s = split.run_indices(small, 0, 0.2)
    tr_b, va_b = split.run_indices(big, 0, 0.2)
    assert (len(tr_s), len(va_s), len(tr_b), len(va_b)) == (16, 4, 48, 12)
    assert set(tr_s) | set(va_s) <= set(tr_b) | set(va_b)
    assert not (set(tr_b) | set(va_b)) & set(split.test)
    other_seed = split.run_indices(dataclasses.replace(small, fold=1), 0, 0.2)
    assert set(other_seed[0]) != set(tr_s)


def test_transfer_grid_end_to_end(corpus: list[Path], tmp_path: Path) -> None:
    one_seed = dataclasses.replace(PRESET, folds=(0,))
    outcome = run_experiment(one_seed, corpus, tmp_path, workers=1, seed=0)
    assert outcome.complete and outcome.ran == len(outcome.planned) == 2 * 2 * 3
    meta = json.loads((tmp_path / "sources/meml-nll@corpus3/source.json").read_text())
    assert len(meta["envs"]) == 3 and set(meta["probe_me"]) == {"proc/s0006/bs0"}
    assert sources.env_counts(tmp_path) == {"meml-nll@corpus": 9, "meml-nll@corpus3": 3}
    report = (tmp_path / "report.md").read_text()
    assert "## Transfer to sites never seen" in report
    assert "### held-out procedural scenes (2 target(s))" in report
    assert "labels to match" in report and "Claim" not in report
    assert (tmp_path / "figures/transfer_held_out_procedural_scenes.png").stat().st_size > 10_000
    assert (tmp_path / "figures/transfer_nb.png").is_file()
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[0].split(",")[4:6] == ["fraction", "labels"] and len(csv) == 1 + outcome.ran


def test_meta_strategies_train_over_a_source_set(corpus: list[Path], tmp_path: Path) -> None:
    preset = dataclasses.replace(
        PRESET,
        targets=("proc/s0007/bs0",),
        labels=(20,),
        folds=(0,),
        meta_losses=("nll",),
        meta_modes=("finetune",),
        source_sets=(SourceSet("corpus3", ("proc/*",), 3),),
    )
    assert preset.strategies == (
        "scratch",
        "meml-nll@corpus3",
        "maml-nll@corpus3",
        "tbmaml-nll@corpus3",
    )
    assert strategy_kind("maml-nll@corpus3") == "meta"
    assert meta_variant("tbmaml-nll@corpus3") == ("tb-maml", "nll")
    assert {"maml-nll@corpus256", "tbmaml-nll@industrial"} <= set(TRANSFER.strategies)
    assert not any(strategy_kind(s) == "meta" for s in TRANSFER_2CORE.strategies)

    outcome = run_experiment(preset, corpus, tmp_path, workers=1, seed=0)
    assert outcome.complete and outcome.ran == 4
    meml = json.loads((tmp_path / "sources/meml-nll@corpus3/source.json").read_text())
    for name in ("maml-nll@corpus3", "tbmaml-nll@corpus3"):
        meta = json.loads((tmp_path / f"sources/{name}/source.json").read_text())
        # The same three environments as MEML's set, none of a target's or probe's scene.
        assert sorted(meta["samples"]) == sorted(meml["envs"])
        assert (tmp_path / f"sources/{name}/head.pt").is_file()
    # The N_B figure stays MEML's: two corpus sources would draw a line, one does not.
    assert not (tmp_path / "figures/transfer_nb.png").exists()
