"""Adapting a 3-BS site from one upload: one model per BS, one split, fused metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.toychannel import toy_site
from training.checkpoint import load_site_model, save_backbone
from training.config import TrainConfig
from training.multibs import split_site
from training.nets import Backbone
from training.repository import ModelRepository, RepositoryError
from training.transfer import adapt_site

CFG = TrainConfig(
    loss="nll",
    epochs=2,
    min_steps=0,
    patience=1,
    batch_size=32,
    lr=2e-3,
    val_fraction=0.25,
    head_warmup_steps=2,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    return repo


def test_split_is_one_split_of_positions_for_every_bs() -> None:
    site = toy_site(80, seed=5, drop=0.2)
    train, val, test = split_site(site, 0.25, 0.2, 1.0, seed=3)
    assert test is not None and len(train) + len(val) + len(test) == len(site)
    seen = [set(map(int, s.sample_id)) for s in (train, val, test)]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    for part in (train, val, test):
        for bs in site.bs_ids:  # each BS's rows are exactly its samples in that part
            ids = set(map(int, part.sample_id[part.stations[bs].rows]))
            heard = set(map(int, site.sample_id[site.stations[bs].rows]))
            assert ids == heard & set(map(int, part.sample_id))


def test_adapt_three_bs_site_publishes_one_model_per_bs(repo: ModelRepository) -> None:
    site = toy_site(120, seed=2, drop=0.15)
    progress: list[dict[str, Any]] = []
    result = adapt_site(
        repo, "hall", site, mode="head", config=CFG, holdout=0.2, progress=progress.append
    )
    manifest = repo.manifest("site", "hall", result.version)
    assert manifest["base_stations"] == ["bs0", "bs1", "bs2"]
    files = set(manifest["files"])
    for bs in site.bs_ids:
        assert {f"model.{bs}.onnx", f"head.{bs}.pt", f"backbone.{bs}.pt"} <= files
        per_bs = manifest["metrics"]["bs"][bs]
        assert per_bs["me"] > 0 and per_bs["rmse_x"] > 0 and "test" in per_bs
    assert "model.onnx" not in files
    metrics = manifest["metrics"]
    assert metrics["fusion"]["method"] == "robust_student_t"
    assert metrics["fusion"]["inflation"] >= 1.0 and metrics["test"]["n"] > 0
    assert manifest["config"]["chosen_mode"] == "bs0=head,bs1=head,bs2=head"
    assert {p["bs"] for p in progress} == {"bs0", "bs1", "bs2"}
    model = load_site_model(repo, "hall", bs="bs2")
    _, sigma = model(torch.from_numpy(site.station("bs2").csi[:2]))
    assert sigma is not None
    with pytest.raises(RepositoryError, match="one model per base station"):
        load_site_model(repo, "hall")


def test_mse_multi_bs_site_fuses_with_validation_rmse(repo: ModelRepository) -> None:
    site = toy_site(80, seed=3, drop=0.1)
    result = adapt_site(repo, "m", site, mode="head", loss="mse", config=CFG)
    metrics = repo.manifest("site", "m", result.version)["metrics"]
    assert metrics["fusion"]["sigma_source"] == "validation_rmse"
    assert np.isfinite(metrics["me"]) and metrics["within_2sigma"] > 0


def test_one_bs_site_is_a_single_bs_site(repo: ModelRepository) -> None:
    site = toy_site(60, seed=4, stations={"only": (0.0, 0.0)}, drop=0.0)
    result = adapt_site(repo, "one", site, mode="head", config=CFG)
    manifest = repo.manifest("site", "one", result.version)
    assert "base_stations" not in manifest and "model.onnx" in manifest["files"]


def test_too_few_samples_for_a_bs_is_refused(repo: ModelRepository) -> None:
    site = toy_site(40, seed=6, drop=0.0)
    site.stations["bs1"] = site.subset(np.arange(2)).stations["bs1"]  # bs1 heard 2 UEs
    site.validate()
    with pytest.raises(ValueError, match="base station 'bs1'"):
        adapt_site(repo, "few", site, mode="head", config=CFG)


def test_cli_train_site_on_a_group_adapts_every_bs(repo: ModelRepository, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app
    from training.data.site import write_site

    data = tmp_path / "hall.h5"
    write_site(data, "hall", toy_site(90, seed=8, drop=0.1))
    result = CliRunner().invoke(
        app,
        [
            "train", "site", "--data", str(data), "--env", "hall", "--site", "hall",
            "--out", str(repo.root), "--mode", "head", "--epochs", "2", "--min-steps", "0",
            "--head-warmup-steps", "2", "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bs2 validation" in result.stdout and "published" in result.stdout
    manifest = repo.manifest("site", "hall")
    assert manifest["base_stations"] == ["bs0", "bs1", "bs2"]
    assert manifest["config"]["data"] == str(data) and manifest["config"]["env"] == "hall"
    bad = CliRunner().invoke(
        app,
        ["train", "site", "--data", str(data), "--env", "nope", "--site", "x",
         "--out", str(repo.root), "--quiet"],
    )  # fmt: skip
    assert bad.exit_code != 0 and "holds no environments" in bad.output
