"""The grid, presets, seeds and the target splits: what every run trains and tests on."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from training.config import TrainConfig
from training.experiments.grid import (
    PAPER,
    PRESETS,
    QUICK,
    Preset,
    Run,
    SourceSet,
    derive_seed,
    get_preset,
    meta_variant,
    strategy_kind,
)
from training.experiments.jobs import IndexArray, target_split
from training.experiments.sources import source_set_envs
from training.nets import Backbone


def assert_same_samples(
    base: Preset, cut: Preset, run: Run, pool: int
) -> tuple[IndexArray, IndexArray]:
    """``run`` trains and validates on the same rows of a ``pool``-sample target in both
    grids (fold 0); returns them (train, val)."""
    a = target_split(pool, base, 0, run.target).run_indices(run, 0)
    b = target_split(pool, cut, 0, run.target).run_indices(run, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    return a


def test_quick_grid_has_every_strategy_mode_and_unique_ids() -> None:
    runs = QUICK.runs()
    # per (target, fraction, fold): scratch + (1 DTL + 2 MEML) x 5 modes + MAML, TB-MAML x auto
    assert len(runs) == 2 * 2 * 2 * 18
    assert len({r.id for r in runs}) == len(runs)
    assert {r.strategy for r in runs} == {
        "scratch", "dtl-bs0", "meml-mse", "meml-nll", "maml-nll", "tbmaml-nll"
    }  # fmt: skip
    assert {r.mode for r in runs if r.strategy == "scratch"} == {"finetune"}
    assert {r.mode for r in runs if "maml" in r.strategy} == {"auto"}
    assert {r.mode for r in runs} == {"auto", "finetune", "gradual", "gradual-paper", "head"}


def test_paper_grid_is_the_full_comparison() -> None:
    assert PAPER.k == 5 and PAPER.folds == (0, 1, 2, 3, 4)
    assert PAPER.fractions == (0.2, 0.4, 0.6, 0.8, 1.0)
    per_cell = 1 + 5 * len(PAPER.dtl_sources) + 2 * 5 + 4 * 5  # + MAML, TB-MAML x mse, nll
    assert len(PAPER.runs()) == 2 * 2 * 5 * 5 * per_cell
    assert {"maml-mse", "maml-nll", "tbmaml-mse", "tbmaml-nll"} <= set(PAPER.strategies)


def test_meta_strategies_name_their_variant_and_loss() -> None:
    assert strategy_kind("maml-nll") == strategy_kind("tbmaml-mse") == "meta"
    assert meta_variant("tbmaml-nll") == ("tb-maml", "nll")
    assert meta_variant("maml-mse") == ("maml", "mse")
    with pytest.raises(ValueError, match="unknown strategy 'maml-huber'"):
        strategy_kind("maml-huber")
    with pytest.raises(ValueError, match="not a meta-learning strategy"):
        meta_variant("meml-nll")
    with pytest.raises(ValueError, match="unknown loss"):
        Preset(name="x", meta_losses=("huber",))
    with pytest.raises(ValueError, match="train over source_envs"):
        Preset(name="x", meta_losses=("nll",), source_envs=(), dtl_sources=())
    # A preset without meta strategies keeps the fingerprint it had before they existed.
    plain = Preset(name="x")
    assert plain.fingerprint() == Preset(name="x", source=TrainConfig()).fingerprint()
    assert plain.fingerprint() != Preset(name="x", meta_losses=("nll",)).fingerprint()
    assert plain.fingerprint() != Preset(name="x", source=TrainConfig(inner_lr=0.1)).fingerprint()
    # Nor did label budgets, source sets and probes change it: `paper-meta` made before them
    # (docs/results/meta) resumes.
    # Nor did the target recipe's fields (select, schedule) at their defaults; another
    # recipe is another experiment. Sources ignore both.
    meta = get_preset("paper-meta")
    assert meta.fingerprint() == "c9586681613c31ae"
    me = TrainConfig(select="me", schedule="cosine")
    assert dataclasses.replace(meta, target=meta.target.replace(**_recipe(me))).fingerprint() != (
        "c9586681613c31ae"
    )
    assert (
        dataclasses.replace(meta, source=meta.source.replace(**_recipe(me)))
    ).fingerprint() == "c9586681613c31ae"
    # Nor augmented labels off (the paper's recipe, pinned by the presets; the product's
    # default is 3 copies); sources ignore it.
    augmented = dataclasses.replace(meta, target=meta.target.replace(augment_copies=3))
    assert augmented.fingerprint() != "c9586681613c31ae"
    unaugmented = dataclasses.replace(meta, source=meta.source.replace(augment_copies=0))
    assert unaugmented.fingerprint() == "c9586681613c31ae"
    # every preset runs targets as their recorded results ran, without copies
    assert all(p.target.augment_copies == 0 for p in [plain, *PRESETS.values()])
    assert plain.fingerprint() != Preset(name="x", labels=(500,)).fingerprint()
    probed = Preset(
        name="x", probe_envs=("proc/s0012/*",), source_sets=(SourceSet("c", ("proc/*",)),)
    )
    assert probed.fingerprint() != dataclasses.replace(probed, probe_labels=50).fingerprint()


def _recipe(config: TrainConfig) -> dict[str, str]:
    return {"select": config.select, "schedule": config.schedule}


def test_run_id_is_readable_and_stable() -> None:
    run = Run("lab-los", "nll", "meml-mse", "gradual", 0.2, 3)
    assert run.id == "lab-los.nll.meml-mse.gradual.f020.k3"


def test_presets_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="fractions"):
        Preset(name="x", fractions=(0.0, 0.5))
    with pytest.raises(ValueError, match="folds"):
        Preset(name="x", k=3, folds=(0, 3))
    with pytest.raises(ValueError, match="DTL sources"):
        Preset(name="x", dtl_sources=("campus/bs9",))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, "a", 1) == derive_seed(0, "a", 1)
    assert derive_seed(0, "a", 1) == 2016588758  # pinned: results must not move between runs
    assert derive_seed(0, "a", 1) != derive_seed(1, "a", 1) != derive_seed(0, "a", 2)
    assert QUICK.fingerprint() == get_preset("quick").fingerprint() != PAPER.fingerprint()


def test_target_split_fixed_test_folds_and_nested_fractions() -> None:
    preset = Preset(name="t", max_target_pool=150)
    split = target_split(500, preset, 0, "lab-los")
    assert len(split.test) == 100 and len(split.pool) == 150
    assert not set(split.test) & set(split.pool)
    assert np.array_equal(split.test, target_split(500, preset, 0, "lab-los").test)
    vals = np.concatenate([va for _, va in split.folds])
    assert sorted(vals) == sorted(split.pool)  # validation parts partition the pool
    small = split.run_indices(Run("lab-los", "mse", "scratch", "finetune", 0.2, 1), 0)
    large = split.run_indices(Run("lab-los", "mse", "meml-nll", "gradual", 0.6, 1), 0)
    assert len(small[0]) == 24 and len(large[0]) == 72
    assert set(small[0]) <= set(large[0]) and set(small[1]) <= set(large[1])
    assert not set(large[0]) & set(large[1])


@pytest.mark.parametrize(
    "name",
    [
        "transfer-nb-2core",
        "transfer-labels-2core",
        "transfer-auto-2core",
        "transfer-auto-3000-2core",
    ],
)
def test_two_core_cuts_share_runs_with_transfer_2core(name: str) -> None:
    """The cuts reuse `transfer-2core`'s finished runs (docs/results/transfer): a run both
    grids hold must train and test on the same data with the same recipe."""
    base, cut = get_preset("transfer-2core"), get_preset(name)
    shared = {r.id for r in base.runs()} & {r.id for r in cut.runs()}
    assert any(".scratch." in i for i in shared) and any("meml-nll@corpus." in i for i in shared)
    for field in ("targets", "test_fraction", "max_test", "max_target_pool", "k", "inputs"):
        assert getattr(cut, field) == getattr(base, field), field
    assert cut.target == base.target and cut.probe_envs == base.probe_envs
    assert cut.source_set("corpus") == base.source_set("corpus")
    same_name = [s for s in cut.source_sets if s.name in {b.name for b in base.source_sets}]
    assert all(s == base.source_set(s.name) for s in same_name)
    labels = min(set(cut.labels) & set(base.labels))
    run = next(r for r in cut.runs() if r.id in shared and r.labels == labels)
    a = assert_same_samples(base, cut, run, 5000)
    assert len(a[0]) + len(a[1]) == labels


def test_the_big_corpus_cut_nests_transfer_2core_and_pairs_its_runs() -> None:
    """`transfer-big-2core` grows the corpus (scenes 0-47, nesting `transfer-2core`'s
    0-31) and doubles the source steps; its scratch runs are `transfer-2core`'s, and every run
    trains and tests on the same samples, so big / 55-environment MEML is paired by seed."""
    base, big = get_preset("transfer-2core"), get_preset("transfer-big-2core")
    available = [f"proc/s{i:04d}/bs{b}" for i in range(70) for b in (0, 1)] + list(big.targets)
    picked = source_set_envs(big, "corpus48", available, 0)
    probes = {f"proc/s{i:04d}" for i in range(12, 16)}
    assert picked == [e for e in available[:96] if e.rsplit("/", 1)[0] not in probes]
    assert big.source.max_steps == 2 * base.source.max_steps == 2400
    assert big.source.envs_per_step == base.source.envs_per_step
    assert big.target == base.target and big.probe_envs == base.probe_envs
    assert big.inputs == base.inputs and set(big.targets) < set(base.targets)
    runs = big.runs()
    assert len(runs) == 48 and not any("lab" in r.target for r in runs)
    shared = {r.id for r in runs} & {r.id for r in base.runs()}
    assert shared == {r.id for r in runs if r.strategy == "scratch"}
    for run in runs[-2:]:
        assert_same_samples(base, big, run, 2000)


def test_the_wide_cut_differs_from_transfer_2core_only_in_width() -> None:
    """`transfer-wide-2core` pairs every run with `transfer-2core`'s (the same labelled and
    test sets, sources, probe and recipe), so wide / paper-width is a ratio of widths."""
    base, wide = get_preset("transfer-2core"), get_preset("transfer-wide-2core")
    assert sum(p.numel() for p in Backbone(wide.backbone_config()).parameters()) == 401_152
    assert wide.backbone_config() == dataclasses.replace(
        base.backbone_config(), block_channels=((80, 32), (80, 32))
    )
    for field in ("targets", "test_fraction", "max_test", "max_target_pool", "k", "probe_envs"):
        assert getattr(wide, field) == getattr(base, field), field
    assert wide.source == base.source and wide.target == base.target
    assert wide.source_set("corpus") == base.source_set("corpus")
    assert wide.fingerprint() != base.fingerprint()
    runs = wide.runs()
    assert {r.id for r in runs} <= {r.id for r in base.runs()} and len(runs) == 60
    assert_same_samples(base, wide, runs[-1], 5000)


def test_the_many_environments_cut_pairs_transfer_2core_with_256_sources() -> None:
    """`transfer-many-2core` draws 256 environments (the probe scenes never among them) with
    the N_B grid's source compute, and trains and tests every run on `transfer-2core`'s
    samples, so its MEML and scratch pair with the 55-environment grid's by seed."""
    base, nb, many = (
        get_preset("transfer-2core"),
        get_preset("transfer-nb-2core"),
        get_preset("transfer-many-2core"),
    )
    available = [f"proc/s{i:04d}/bs{b}" for i in range(136) for b in (0, 1, 2)]
    picked = source_set_envs(many, "corpus256", available + list(many.targets), 0)
    assert len(picked) == 256 and set(picked) <= set(available)
    probes = tuple(f"proc/s{i:04d}/" for i in range(13, 16))
    assert not any(e.startswith(probes) for e in picked)
    assert many.source == nb.source and many.target == base.target
    runs = many.runs()
    assert len(runs) == 32 and {r.fold for r in runs} == {0, 1}
    shared = {r.id for r in runs} & {r.id for r in base.runs()}
    assert shared == {r.id for r in runs if r.strategy == "scratch"}
    for run in runs[-2:]:
        assert_same_samples(base, many, run, 2000)
