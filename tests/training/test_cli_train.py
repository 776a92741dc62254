"""The training CLI end to end: train meml -> train site --mode gradual -> evaluate -> export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from training.cli import app
from training.cli.train import ModelRef, parse_model_ref
from training.data.fingerprints import read_environment
from training.data.splits import fraction_subset, train_val_test
from training.export import read_model_metadata
from training.metrics import evaluate

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_h5: Path) -> tuple[Path, Path, float]:
    """(data file, model repository, seconds) after `train meml` and `train site`."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("cli")
    data, repo = tiny_h5, tmp / "models"
    t0 = time.perf_counter()
    invoke(
        "train", "meml", "--data", str(data), "--envs", "industrial/bs0,industrial/bs1",
        "--loss", "mse", "--out", str(repo), "--epochs", "3", "--patience", "2",
        "--min-steps", "20", "--set-default", "--quiet",
    )  # fmt: skip
    invoke(
        "train", "site", "--backbone", f"{repo}/backbones/meml", "--data", str(data),
        "--env", "lab-los", "--fraction", "1.0", "--mode", "gradual", "--loss", "nll",
        "--out", str(repo), "--site", "lab", "--epochs", "8", "--patience", "3",
        "--lr", "3e-3", "--min-steps", "30", "--head-warmup-steps", "10", "--quiet",
    )  # fmt: skip
    return data, repo, time.perf_counter() - t0


def test_meml_then_gradual_site_then_evaluate_beats_the_mean(
    trained: tuple[Path, Path, float],
) -> None:
    data, repo, seconds = trained
    out = invoke(
        "evaluate", "--model", f"{repo}/sites/lab@v1", "--data", str(data), "--env", "lab-los",
        "--holdout", "0.2", "--json",
    )  # fmt: skip
    report = json.loads(out)
    assert report["version"] == "v1" and report["env"] == "lab-los"
    m = report["metrics"]
    assert {"me", "median", "p90", "crps", "nll", "within_1sigma", "within_2sigma"} <= set(m)

    # Baseline: always predict the mean position of the site's training data.
    fp = read_environment(data, "lab-los")
    split = train_val_test(len(fp), 0.0, 0.2, 0)
    train_pos = fp.pos[fraction_subset(split.train, 1.0, 0)]
    test_pos = fp.pos[split.test]
    baseline = evaluate(np.broadcast_to(train_pos.mean(0), test_pos.shape), None, test_pos)
    assert m["n"] == len(test_pos)
    assert m["me"] < 0.8 * baseline["me"], (m["me"], baseline["me"])
    # Speed is a benchmark's business (bench/), not a timed assertion on a shared machine.
    assert seconds > 0

    manifest = json.loads((repo / "sites/lab/versions/v1/manifest.json").read_text())
    assert manifest["parent"] == {"backbone": "meml", "version": "v1"}
    # the backbone carries its sources' background, and the site's detector uses it
    backbone = json.loads((repo / "backbones/meml/versions/v1/manifest.json").read_text())
    assert "background.npz" in backbone["files"]
    assert backbone["metrics"]["background"]["environments"] == 2
    parts = manifest["metrics"]["novelty"]["parts"]
    assert set(parts) == {"spatial", "delay"} and all(p["relative"] for p in parts.values())
    assert set(manifest["config"]["epochs_run"]) == {"warmup", "unfrozen"}
    assert manifest["config"]["min_steps"] == 30 and manifest["config"]["beta"] == 0.5
    assert (manifest["config"]["select"], manifest["config"]["schedule"]) == ("loss", "plateau")
    assert manifest["metrics"]["test"]["me"] == pytest.approx(m["me"], rel=1e-6)


def test_evaluate_prints_a_table(trained: tuple[Path, Path, float]) -> None:
    data, repo, _ = trained
    out = invoke(
        "evaluate", "--model", f"{repo}/sites/lab", "--data", str(data), "--env", "lab-los"
    )
    for word in ("me", "p90", "crps", "within_1sigma", "39.3 %", "86.5 %"):
        assert word in out


def test_evaluate_reports_out_of_site_detection(trained: tuple[Path, Path, float]) -> None:
    data, repo, _ = trained
    args = ("evaluate", "--model", f"{repo}/sites/lab", "--data", str(data), "--env", "lab-los",
            "--holdout", "0.2", "--ood-env", "lab-los,industrial/*")  # fmt: skip
    report = json.loads(invoke(*args, "--json"))
    ood = report["out_of_site"]
    manifest = json.loads((repo / "sites/lab/versions/v1/manifest.json").read_text())
    assert ood["threshold"] == manifest["metrics"]["novelty"]["threshold"]
    assert ood["false_alarm"] == manifest["metrics"]["novelty"]["test_false_alarm"]
    assert ood["own"]["n"] == report["metrics"]["n"]
    assert set(ood["foreign"]) == {f"industrial/bs{k}" for k in range(4)}  # own env skipped
    for row in ood["foreign"].values():
        assert 0.0 <= row["out_of_site"] <= 1.0 and "within_1sigma" in row["answered"]
    assert "out of site" in invoke(*args)


def test_export_writes_onnx_with_metadata(
    trained: tuple[Path, Path, float], tmp_path: Path
) -> None:
    _, repo, _ = trained
    target = tmp_path / "lab.onnx"
    invoke("export", "--model", f"{repo}/sites/lab@v1", "--out", str(target))
    meta = read_model_metadata(target)
    assert (meta["site"], meta["version"], meta["loss"]) == ("lab", "v1", "nll")
    assert meta["backbone"] == "meml:v1" and meta["outputs"] == "position,sigma"
    invoke("export", "--model", f"{repo}/backbones/meml", "--out", str(tmp_path / "bb.onnx"))
    assert read_model_metadata(tmp_path / "bb.onnx")["kind"] == "backbone"


def test_dtl_and_scratch(trained: tuple[Path, Path, float]) -> None:
    data, repo, _ = trained
    invoke(
        "train", "dtl", "--data", str(data), "--env", "industrial/bs2", "--out", str(repo),
        "--epochs", "1", "--min-steps", "0", "--quiet",
    )  # fmt: skip
    assert (repo / "backbones/dtl-industrial-bs2/versions/v1/backbone.pt").is_file()
    invoke(
        "train", "scratch", "--data", str(data), "--env", "lab-los", "--fraction", "0.5",
        "--out", str(repo), "--site", "scratch-lab", "--epochs", "1", "--min-steps", "0",
        "--inputs", "phase-delay", "--quiet",
    )  # fmt: skip
    manifest = json.loads((repo / "sites/scratch-lab/versions/v1/manifest.json").read_text())
    assert manifest["parent"] is None and manifest["config"]["mode"] == "scratch"
    assert manifest["config"]["inputs"] == "phase-delay"
    assert manifest["metrics"]["test"]["n"] > 0


def test_scratch_reads_the_default_backbone_s_inputs_unless_told(
    tmp_path: Path, tiny_h5: Path
) -> None:
    """The fair baseline: scratch on the representation the transfer arm reads."""
    from training.checkpoint import save_backbone
    from training.nets import Backbone, BackboneConfig
    from training.repository import ModelRepository

    def scratch(repo: Path, site: str, *extra: str) -> str:
        invoke(
            "train", "scratch", "--data", str(tiny_h5), "--env", "lab-los", "--fraction", "0.3",
            "--out", str(repo), "--site", site, "--epochs", "1", "--min-steps", "0",
            "--augment-copies", "0", "--quiet", *extra,
        )  # fmt: skip
        manifest = json.loads((repo / f"sites/{site}/versions/v1/manifest.json").read_text())
        return str(manifest["config"]["inputs"])

    empty = tmp_path / "empty"
    assert scratch(empty, "a") == "raw"  # no backbone to match
    repo = tmp_path / "models"
    backbone = Backbone(BackboneConfig(inputs="phase-delay"), seed=0)
    save_backbone(ModelRepository(repo), "meml", backbone, loss="nll")
    assert scratch(repo, "b") == "phase-delay"
    assert scratch(repo, "c", "--inputs", "raw") == "raw"


def test_site_defaults_to_auto_on_the_repository_default_backbone(
    trained: tuple[Path, Path, float],
) -> None:
    data, repo, _ = trained
    out = invoke(
        "train", "site", "--data", str(data), "--env", "lab-nlos", "--out", str(repo),
        "--site", "auto-lab", "--epochs", "2", "--min-steps", "10", "--head-warmup-steps", "5",
        "--no-calibrate-sigma", "--quiet",
    )  # fmt: skip
    assert "published" in out and "mode " in out
    config = json.loads((repo / "sites/auto-lab/versions/v1/manifest.json").read_text())["config"]
    assert config["mode"] == "auto" and config["backbone"] == "meml:v1"
    assert set(config["candidates"]) == {"finetune", "gradual", "head"}
    assert config["calibrate_sigma"] is False


def test_env_patterns_expand_against_the_file(tiny_h5: Path) -> None:
    from training.cli.train import _expand_envs

    assert list(_expand_envs(tiny_h5, "industrial/bs[02],lab-*")) == [
        "industrial/bs0", "industrial/bs2", "lab-los", "lab-nlos"
    ]  # fmt: skip
    assert list(_expand_envs(tiny_h5, "lab-los,lab-*")) == ["lab-los", "lab-nlos"]
    with pytest.raises(ValueError, match="'lab-typo' matches no environment"):
        _expand_envs(tiny_h5, "lab-los,lab-typo")


def test_model_refs() -> None:
    assert parse_model_ref("models/sites/lab@v2") == ModelRef(Path("models"), "site", "lab", "v2")
    ref = parse_model_ref("/r/backbones/meml/")
    assert (ref.kind, ref.name, ref.version, str(ref)) == (
        "backbone",
        "meml",
        None,
        "/r/backbones/meml",
    )
    with pytest.raises(ValueError, match="REPO/backbones/NAME"):
        parse_model_ref("models/lab")


def test_bad_input_is_one_clear_line(tmp_path: Path, trained: tuple[Path, Path, float]) -> None:
    data, repo, _ = trained
    result = runner.invoke(
        app, ["evaluate", "--model", f"{repo}/sites/nope", "--data", str(data), "--env", "lab-los"]
    )
    assert result.exit_code == 2 and "does not exist" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(
        app,
        ["train", "meml", "--data", str(data), "--envs", "no-such-env", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "no-such-env" in result.output
    result = runner.invoke(
        app,
        ["train", "meml", "--data", str(data), "--envs", "campus/*", "--out", str(tmp_path)],
    )
    assert result.exit_code == 2 and "'campus/*' matches no environment" in result.output
    result = runner.invoke(
        app,
        ["train", "site", "--backbone", f"{repo}/backbones/meml", "--data", str(data),
         "--env", "lab-los", "--out", str(repo), "--site", "x", "--mode", "fast"],
    )  # fmt: skip
    assert result.exit_code == 2 and "expected one of auto, finetune, gradual" in result.output
    site = ["train", "site", "--data", str(data), "--env", "lab-los", "--out", str(repo)]
    for option, expected in [
        (["--lr-patience", "1"], "lr_patience=1, expected >= 3 validations"),
        (["--beta", "2"], "beta=2.0, expected in [0, 1]"),
        (["--select", "nll"], "select='nll', expected one of me, loss, calibrated"),
        (["--anchor-weight", "-1"], "anchor_weight=-1.0, expected a finite number"),
    ]:
        result = runner.invoke(app, [*site, "--site", "x", *option])
        assert result.exit_code == 2 and expected in result.output, option


def test_meml_lazy_with_sampled_environments(tmp_path: Path, tiny_h5: Path) -> None:
    """`--lazy --envs-per-step`: trains from the file, one environment a step, and says so."""
    repo = tmp_path / "models"
    invoke(
        "train", "meml", "--data", str(tiny_h5), "--envs", "industrial/bs0,industrial/bs1",
        "--out", str(repo), "--name", "lazy", "--max-steps", "4", "--eval-every", "2",
        "--min-steps", "0", "--envs-per-step", "1", "--lazy", "--quiet",
    )  # fmt: skip
    manifest = json.loads((repo / "backbones/lazy/versions/v1/manifest.json").read_text())
    assert manifest["config"]["envs_per_step"] == 1
    # Reader processes read the same batches: the same weights.
    invoke(
        "train", "meml", "--data", str(tiny_h5), "--envs", "industrial/bs0,industrial/bs1",
        "--out", str(repo), "--name", "pooled", "--max-steps", "4", "--eval-every", "2",
        "--min-steps", "0", "--envs-per-step", "1", "--lazy", "--read-workers", "2", "--quiet",
    )  # fmt: skip
    weights = [
        (repo / f"backbones/{name}/versions/v1/backbone.pt").read_bytes()
        for name in ("lazy", "pooled")
    ]
    assert weights[0] == weights[1]
    result = runner.invoke(
        app,
        ["train", "meml", "--data", str(tiny_h5), "--envs", "industrial/bs0", "--out", str(repo),
         "--read-workers", "2"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--read-workers 2" in result.output
    assert "needs --lazy" in result.output


def test_meml_selects_by_transfer_to_held_out_environments(tmp_path: Path, tiny_h5: Path) -> None:
    """`--probe-envs`: held out of the sources even when a pattern covers them, and scored
    (here with the episodic term on, as `scripts/build-default-models` trains)."""
    repo = tmp_path / "models"
    invoke(
        "train", "meml", "--data", str(tiny_h5), "--data", str(tiny_h5),
        "--envs", "industrial/*", "--probe-envs", "industrial/bs3,lab-los", "--probe-labels", "40",
        "--out", str(repo), "--name", "probed", "--max-steps", "6", "--eval-every", "2",
        "--min-steps", "0", "--episode-weight", "1", "--quiet",
    )  # fmt: skip
    manifest = json.loads((repo / "backbones/probed/versions/v1/manifest.json").read_text())
    assert manifest["config"]["episode_weight"] == 1.0
    assert manifest["config"]["envs"] == ["industrial/bs0", "industrial/bs1", "industrial/bs2"]
    assert manifest["config"]["probe_envs"] == ["industrial/bs3", "lab-los"]
    metrics = manifest["metrics"]
    assert set(metrics["probe_me"]) == {"industrial/bs3", "lab-los"}
    assert all(0.0 < v < 50.0 for v in metrics["probe_me"].values())
    assert len(metrics["probe_score_history"]) == 3


def test_maml_and_tb_maml_publish_a_backbone_a_site_can_start_from(
    tmp_path: Path, tiny_h5: Path
) -> None:
    repo = tmp_path / "models"
    for variant in ("maml", "tb-maml"):
        out = invoke(
            "train", "maml", "--variant", variant, "--data", str(tiny_h5),
            "--envs", "industrial/bs0,industrial/bs1", "--loss", "nll", "--out", str(repo),
            "--min-steps", "4", "--max-steps", "4", "--eval-every", "2", "--batch-size", "16",
            "--inner-lr", "0.02", "--quiet",
        )  # fmt: skip
        assert "meta-steps" in out
    manifest = json.loads((repo / "backbones/tbmaml/versions/v1/manifest.json").read_text())
    assert manifest["config"]["mode"] == "tb-maml" and manifest["config"]["inner_lr"] == 0.02
    assert manifest["config"]["steps_run"] == {"meta": 4}
    invoke(
        "train", "site", "--backbone", f"{repo}/backbones/maml", "--data", str(tiny_h5),
        "--env", "lab-los", "--mode", "head", "--loss", "nll", "--out", str(repo),
        "--site", "lab", "--min-steps", "5", "--max-steps", "5", "--quiet",
    )  # fmt: skip
    bad = runner.invoke(
        app,
        ["train", "maml", "--variant", "reptile", "--data", str(tiny_h5), "--envs",
         "industrial/bs0", "--out", str(repo)],
    )  # fmt: skip
    assert bad.exit_code != 0 and "reptile" in bad.output


def test_background_extends_an_older_backbone_with_its_corpus(
    tmp_path: Path, tiny_h5: Path
) -> None:
    """A backbone published before backgrounds gets a next version with the same weights
    and its sources' background (what `adapt_site` then loads for the detectors)."""
    from training.checkpoint import load_backbone, load_background, save_backbone
    from training.nets import Backbone
    from training.repository import ModelRepository

    repo = ModelRepository(tmp_path / "models")
    envs = ["industrial/bs0", "industrial/bs1"]
    save_backbone(repo, "old", Backbone(seed=0), loss="nll", config={"envs": envs, "seed": 3})
    assert load_background(repo, "old") is None
    out = invoke("train", "background", "--backbone", f"{repo.root}/backbones/old",
                 "--data", str(tiny_h5))  # fmt: skip
    assert "published" in out and "from 2 environments" in out
    manifest = repo.manifest("backbone", "old")
    assert manifest["version"] == "v2" and manifest["parent"] == {
        "backbone": "old",
        "version": "v1",
    }
    assert manifest["config"]["background_envs"] == envs and manifest["loss"] == "nll"
    background = load_background(repo, "old")
    assert background is not None and background.environments == 2
    old, new = (
        load_backbone(repo, "old", "v1").state_dict(),
        load_backbone(repo, "old").state_dict(),
    )
    assert all(torch.equal(old[k], new[k]) for k in old)
    # with no envs recorded and none given, it says what to pass
    save_backbone(repo, "bare", Backbone(seed=0), loss="mse")
    bare = f"{repo.root}/backbones/bare"
    result = runner.invoke(app, ["train", "background", "--backbone", bare, "--data", str(tiny_h5)])
    assert result.exit_code == 2 and "pass --envs" in result.output
