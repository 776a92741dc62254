"""MEML, DTL and scratch source training on small in-memory data with the real nets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.toychannel import toy_fingerprints, write_toy_file
from training.config import TrainConfig
from training.data.fingerprints import Fingerprints, read_environment
from training.data.splits import split_train_val
from training.fit import Shard
from training.meml import SourceData, SourceResult, combined_fingerprint, train_sources
from training.metrics import evaluate

ENVS = {  # different sizes on purpose
    "a": toy_fingerprints(240, (0.0, 0.0), seed=0),
    "b": toy_fingerprints(120, (20.0, 0.0), seed=1),
    "c": toy_fingerprints(60, (10.0, 10.0), seed=2),
}
FAST = TrainConfig(
    loss="mse", epochs=6, min_steps=0, patience=3, batch_size=32, lr=2e-3, val_fraction=0.25
)


def split(envs: dict[str, Fingerprints], cfg: TrainConfig) -> dict[str, SourceData]:
    return {n: SourceData.split(d, cfg.val_fraction, cfg.seed) for n, d in envs.items()}


def train_meml(envs: dict[str, Fingerprints], cfg: TrainConfig) -> SourceResult:
    return train_sources(split(envs, cfg), cfg, quiet=True)


@pytest.fixture(scope="module")
def meml_result():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return train_meml(ENVS, FAST)


def test_meml_has_one_head_per_env_and_learns(meml_result) -> None:  # type: ignore[no-untyped-def]
    r = meml_result
    assert set(r.heads) == set(ENVS) == set(r.metrics)
    assert r.samples == {"a": 180, "b": 90, "c": 45}
    # An epoch = ceil(180 / 32) = 6 steps, every env drawing a full batch each step.
    steps = r.report.steps["train"]
    assert steps <= 6 * 6 and r.report.samples == steps * (32 + 32 + 32)
    history = r.report.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Better than predicting the mean training position, on the largest env.
    train, val = split_train_val(ENVS["a"], FAST.val_fraction, FAST.seed)
    mean = np.broadcast_to(train.pos.mean(0), val.pos.shape)
    assert r.metrics["a"]["me"] < evaluate(mean, None, val.pos)["me"]
    assert set(history[0]["val_me_per_task"]) == set(ENVS)


def test_heads_hold_their_own_position_normalisation(meml_result) -> None:  # type: ignore[no-untyped-def]
    train_c, _ = split_train_val(ENVS["c"], FAST.val_fraction, FAST.seed)
    head = meml_result.heads["c"]
    np.testing.assert_allclose(head.pos_mean.numpy(), train_c.pos.mean(0), rtol=1e-5)
    model = meml_result.site_model("c")
    pos, sigma = model(torch.from_numpy(ENVS["c"].csi[:4]))
    assert pos.shape == (4, 2) and sigma is None


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    envs = {"a": ENVS["c"], "b": ENVS["c"].subset(slice(0, 40))}
    cfg = TrainConfig(epochs=2, min_steps=0, patience=2, batch_size=32, val_fraction=0.25, seed=3)
    one, two = train_meml(envs, cfg), train_meml(envs, cfg)
    other = train_meml(envs, cfg.replace(seed=4))
    s1, s2, s3 = (r.backbone.state_dict() for r in (one, two, other))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert any(not torch.equal(s1[k], s3[k]) for k in s1)
    assert one.data_fingerprint == two.data_fingerprint


def test_dtl_and_scratch_are_single_task_runs() -> None:
    cfg = TrainConfig(loss="nll", epochs=1, min_steps=0, patience=1, batch_size=32)
    dtl = train_meml({"a": ENVS["c"]}, cfg.replace(val_fraction=0.25))
    assert list(dtl.heads) == ["a"] and "crps" in dtl.metrics["a"]
    train, val = split_train_val(ENVS["b"], 0.25, 0)
    scratch = train_sources({"target": SourceData.in_memory(train, val)}, cfg, quiet=True)
    assert list(scratch.heads) == ["target"]
    assert scratch.metrics["target"]["n"] == len(val)


def test_a_degenerate_single_source_run_is_retried_and_flagged() -> None:
    """Labels unrelated to the CSI: no initialisation beats the centroid, so the trainer
    tries a second one, keeps the better, and flags the run."""
    data = ENVS["b"]
    rng = np.random.default_rng(0)
    shuffled = Fingerprints(csi=data.csi, pos=data.pos[rng.permutation(len(data))])
    cfg = TrainConfig(epochs=2, min_steps=0, patience=1, batch_size=32, val_fraction=0.25)
    result = train_meml({"x": shuffled}, cfg)
    assert result.degenerate == ["x"] and result.retried
    assert result.metrics["x"]["degenerate"] == 1.0
    plain = train_meml({"x": shuffled}, cfg.replace(retry_degenerate=False))
    assert plain.degenerate == ["x"] and not plain.retried
    healthy = train_meml({"x": data}, cfg.replace(epochs=20))
    assert (
        healthy.degenerate == []
        and not healthy.retried
        and "degenerate" not in healthy.metrics["x"]
    )


def test_config_and_split_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="expected one of mse, nll"):
        TrainConfig(loss="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"val_fraction=1\.5"):
        TrainConfig(val_fraction=1.5)
    with pytest.raises(ValueError, match="no environments"):
        train_sources({}, FAST)
    with pytest.raises(ValueError, match=r"lr_patience=2, expected >= 3"):
        TrainConfig(lr_patience=2)
    with pytest.raises(ValueError, match="select='mae', expected one of me, loss, calibrated"):
        TrainConfig(select="mae")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule='step', expected one of cosine, plateau"):
        TrainConfig(schedule="step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 samples"):
        split_train_val(ENVS["a"].subset(slice(0, 1)), 0.2, 0)
    one = Fingerprints(csi=ENVS["a"].csi[:3], pos=ENVS["a"].pos[:3])
    train, val = split_train_val(one, 0.01, 0)  # at least one validation sample
    assert (len(train), len(val)) == (2, 1)
    assert combined_fingerprint({"x": "h"}) != combined_fingerprint({"y": "h"})


def test_file_reader_gives_each_rank_its_strided_shard(tmp_path: Path) -> None:
    path = write_toy_file(tmp_path / "toy.h5", n=50)
    env = read_environment(path, "lab-los")
    train, val = split_train_val(env, 0.2, 3)
    whole = SourceData.from_file(path, "lab-los", 0.2, 3)
    np.testing.assert_array_equal(whole.train.csi, train.csi)
    rank1 = SourceData.from_file(path, "lab-los", 0.2, 3, Shard(1, 2))
    np.testing.assert_array_equal(rank1.train.pos, train.pos[1::2])
    np.testing.assert_array_equal(rank1.val.pos, val.pos[1::2])
    np.testing.assert_array_equal(rank1.train_pos, train.pos)  # normalisation: whole split
    assert rank1.val_full is None and rank1.train_size == len(train)
    rank0 = SourceData.in_memory(train, val, Shard(0, 2))
    np.testing.assert_array_equal(rank0.train.pos, train.pos[0::2])
    assert rank0.val_full is val


def test_training_from_file_equals_training_in_memory(tmp_path: Path) -> None:
    path = write_toy_file(tmp_path / "toy.h5", n=60)
    cfg = TrainConfig(epochs=1, min_steps=0, patience=1, batch_size=32, val_fraction=0.25)
    names = ["industrial/bs0", "lab-los"]
    sources = {n: SourceData.from_file(path, n, cfg.val_fraction, cfg.seed) for n in names}
    from_file = train_sources(sources, cfg, quiet=True)
    in_memory = train_meml({n: read_environment(path, n) for n in names}, cfg)
    a, b = from_file.backbone.state_dict(), in_memory.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert from_file.metrics == in_memory.metrics


def test_lazy_rows_cover_every_row_once_per_pass(tmp_path: Path) -> None:
    from training.data.lazy import LazyRows

    path = write_toy_file(tmp_path / "toy.h5", n=80)
    env = read_environment(path, "lab-los")
    rows = np.arange(0, 80, 2)[::-1]  # 40 rows, unsorted on purpose
    lazy = LazyRows(path, "lab-los", rows, chunk_rows=6, window_chunks=2)
    stream = lazy.stream(10, torch.Generator().manual_seed(0))
    batches = [next(stream) for _ in range(12)]  # three passes of 40
    assert all(c.shape == (10, 8, 103, 2) and p.shape == (10, 2) for c, p in batches)
    seen = np.concatenate([p for _, p in batches])
    want = env.pos[np.sort(rows)]
    for k in range(3):
        got = seen[40 * k : 40 * (k + 1)]
        np.testing.assert_array_equal(np.sort(got[:, 0]), np.sort(want[:, 0]))
    csi, pos = batches[0]
    match = np.flatnonzero((env.pos == pos[0]).all(axis=1))
    np.testing.assert_array_equal(env.csi[match[0]], csi[0])  # rows stay paired
    stream2 = lazy.stream(10, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(next(stream2)[1], batches[0][1])  # seeded


def test_reader_processes_train_the_same_backbone_from_lazy_rows(tmp_path: Path) -> None:
    path = write_toy_file(tmp_path / "toy.h5", n=120)
    cfg = TrainConfig(epochs=2, min_steps=0, patience=5, batch_size=16, envs_per_step=2)
    names = ["industrial/bs0", "industrial/bs1", "lab-los"]
    sources = {n: SourceData.from_file(path, n, 0.25, 0, lazy=True) for n in names}
    local = train_sources(sources, cfg, quiet=True)
    pooled = train_sources(sources, cfg, quiet=True, read_workers=2)
    a, b = local.backbone.state_dict(), pooled.backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert local.metrics == pooled.metrics


def test_meml_trains_from_lazy_rows_with_sampled_environments(tmp_path: Path) -> None:
    from training.data.lazy import LazyRows

    path = write_toy_file(tmp_path / "toy.h5", n=120)
    cfg = TrainConfig(
        epochs=4, min_steps=0, patience=5, batch_size=16, val_fraction=0.25, envs_per_step=2
    )
    names = ["industrial/bs0", "industrial/bs1", "lab-los"]
    sources = {n: SourceData.from_file(path, n, 0.25, 0, lazy=True) for n in names}
    assert all(isinstance(s.train, LazyRows) for s in sources.values())
    result = train_sources(sources, cfg, quiet=True)
    # An epoch: 90 rows x 3 envs / (16 x 2) = 9 steps, each taking 2 x 16 samples.
    assert result.report.phases[0].steps_per_epoch == 9
    assert result.report.samples == result.report.steps["train"] * 32
    assert set(result.heads) == set(names) and result.samples == dict.fromkeys(names, 90)
    for n in names:  # every head holds its own normalisation and learnt something
        assert result.report.final is not None
        assert result.report.final.best_val_me_per_task[n] < result.report.centroid_me_per_task[n]
    in_memory = SourceData.from_file(path, names[0], 0.25, 0)
    assert sources[names[0]].fingerprint == in_memory.fingerprint
    np.testing.assert_array_equal(sources[names[0]].train_pos, in_memory.train_pos)


def test_envs_per_step_budget_and_errors() -> None:
    from training.meml import source_phases

    cfg = TrainConfig(batch_size=10, epochs=2, min_steps=0, envs_per_step=2)
    # 100 samples x 8 envs / 2 per step: an epoch is 40 steps.
    assert source_phases(cfg, 100, 8)[0].budget.max_steps == 80
    assert source_phases(cfg.replace(envs_per_step=0), 100, 8)[0].budget.max_steps == 20
    with pytest.raises(ValueError, match="envs_per_step=-1"):
        TrainConfig(envs_per_step=-1)
