"""Adapting a 3-BS site from one upload: one model per BS, one split, fused metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.fast import FAST
from tests.training.toychannel import toy_site, toy_site_tracks
from training.checkpoint import load_site_model, save_backbone
from training.config import TrainConfig
from training.data.fingerprints import EnvironmentMeta
from training.data.site import SiteFingerprints
from training.data.unlabelled import UnlabelledTracks
from training.fusion import JOINT_FILES, SET_MIN_VAL, fit_inflation, fuse_by
from training.multibs import (
    FUSION,
    JOINT_COPIES,
    JOINT_MEMBERS,
    drop_stations,
    fused_scores,
    inflation_by_set,
    joint_fingerprints,
    joint_tracks,
    set_factors,
    split_site,
    station_estimates,
    train_joint,
)
from training.nets import Backbone, Head, HeadConfig, JointBackbone, SiteModel
from training.repository import ModelRepository, RepositoryError
from training.transfer import adapt_site

CFG = FAST.replace(head_warmup_steps=2)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    return repo


def _joint_model(repo: ModelRepository, site: str, version: str, k: int) -> SiteModel:
    """The version's joint head on the frozen parent, as torch modules."""
    from training.checkpoint import load_backbone

    obj = torch.load(repo.path("site", site, version) / JOINT_FILES[1], weights_only=True)
    head = Head(HeadConfig(**obj["config"]))
    head.load_state_dict(obj["state_dict"])
    subsets = repo.manifest("site", site, version)["metrics"]["fusion"]["joint"]["subsets"]
    backbone = JointBackbone(load_backbone(repo, "meml").eval(), k, subsets=subsets)
    return SiteModel(backbone, head.eval())


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
    by_set = metrics["fusion"]["inflation_by_set"]  # one BS heard, two, all three
    assert {"bs0", "bs1", "bs2", "bs0+bs2", "bs0+bs1+bs2"} <= set(by_set)
    assert all(v >= 1.0 for v in by_set.values())
    assert 0 < metrics["label_spacing_m"] < 1.0  # 120 positions on a toy site of a few metres
    assert manifest["config"]["chosen_mode"] == "bs0=head,bs1=head,bs2=head"
    assert {p["bs"] for p in progress} == {"bs0", "bs1", "bs2", "joint"}
    model = load_site_model(repo, "hall", bs="bs2")
    _, sigma = model(torch.from_numpy(site.station("bs2").csi[:2]))
    assert sigma is not None
    with pytest.raises(RepositoryError, match="one model per base station"):
        load_site_model(repo, "hall")


def test_a_site_with_detectors_on_every_bs_gets_the_cross_bs_check(
    repo: ModelRepository,
) -> None:
    """`training.consistency` is fitted on the training and validation UEs and published
    beside the per-BS detectors, with its false alarms on the held-out UEs."""
    site = toy_site(400, seed=2, drop=0.1)
    result = adapt_site(repo, "hall", site, mode="head", config=CFG, holdout=0.2)
    manifest = repo.manifest("site", "hall", result.version)
    assert "consistency.npz" in manifest["files"] and "novelty.npz" in manifest["files"]
    check = manifest["metrics"]["consistency"]
    train, val, test = split_site(site, CFG.val_fraction, 0.2, 1.0, CFG.seed)
    assert test is not None and check["references"] == len(train) + len(val)
    assert check["sets"] == ["bs0+bs1", "bs0+bs1+bs2", "bs0+bs2", "bs1+bs2"]
    assert 0.0 <= check["test_false_alarm"] <= 0.05
    assert "ue_novelty" not in manifest["metrics"]  # no walks: the UEs' scores unscaled


def test_joint_input_stacks_every_bs_on_the_antenna_axis() -> None:
    site = toy_site(50, seed=9, drop=0.3)
    rows, joint = joint_fingerprints(site)
    heard = site.mask().all(axis=1)
    assert list(rows) == list(np.flatnonzero(heard)) and 0 < len(rows) < len(site)
    assert joint.csi.shape == (len(rows), 3 * 8, 103, 2)
    for k, bs in enumerate(site.bs_ids):  # block k is bs k's own fingerprint of that UE
        st = site.stations[bs]
        own = st.data.csi[np.searchsorted(st.rows, rows)]
        np.testing.assert_array_equal(joint.csi[:, 8 * k : 8 * (k + 1)], own)
    np.testing.assert_array_equal(joint.pos, site.pos[rows])


def test_subset_joint_input_zero_fills_the_bss_not_heard() -> None:
    site = toy_site(50, seed=9, drop=0.3)
    rows, joint = joint_fingerprints(site, subsets=True)
    heard = site.mask()
    assert list(rows) == list(np.flatnonzero(heard.sum(axis=1) >= 2))
    assert (heard[rows].sum(axis=1) == 2).any()  # the toy site has UEs two BSs heard
    for k, bs in enumerate(site.bs_ids):
        st, block = site.stations[bs], joint.csi[:, 8 * k : 8 * (k + 1)]
        here = heard[rows, k]
        np.testing.assert_array_equal(
            block[here], st.data.csi[np.searchsorted(st.rows, rows[here])]
        )
        assert not block[~here].any()


def test_dropped_copies_keep_a_bs_and_are_seeded() -> None:
    site = toy_site(60, seed=4, drop=0.2)
    _, joint = joint_fingerprints(site, subsets=True)
    copies = drop_stations(joint, 3, seed=1)
    n = len(joint)
    assert len(copies) == (JOINT_COPIES + 1) * n
    np.testing.assert_array_equal(copies.csi[:n], joint.csi)  # the samples as heard first
    np.testing.assert_array_equal(copies.pos, np.tile(joint.pos, (JOINT_COPIES + 1, 1)))
    blocks = np.abs(copies.csi.reshape(len(copies), 3, -1)).max(axis=2) > 0
    source = np.tile(blocks[:n], (JOINT_COPIES + 1, 1))
    assert not (blocks & ~source).any()  # a copy only removes BSs
    assert blocks.any(axis=1).all() and (blocks.sum(axis=1) < source.sum(axis=1)).any()
    assert (blocks.sum(axis=1) == 1).any()  # one BS left: its own view
    for k in range(3):  # a kept block is that BS's CSI, unchanged
        kept = blocks[:, k]
        tiled = np.tile(joint.csi[:, 8 * k : 8 * (k + 1)], (JOINT_COPIES + 1, 1, 1, 1))
        np.testing.assert_array_equal(copies.csi[kept, 8 * k : 8 * (k + 1)], tiled[kept])
    np.testing.assert_array_equal(drop_stations(joint, 3, seed=1).csi, copies.csi)
    assert not np.array_equal(drop_stations(joint, 3, seed=2).csi, copies.csi)


def test_nll_site_gets_a_joint_head_fused_where_every_bs_heard(repo: ModelRepository) -> None:
    site = toy_site(120, seed=2, drop=0.15)
    result = adapt_site(repo, "j", site, mode="head", config=CFG, holdout=0.2)
    manifest = repo.manifest("site", "j", result.version)
    assert set(JOINT_FILES) <= set(manifest["files"])
    joint = manifest["metrics"]["fusion"]["joint"]
    assert joint["base_stations"] == ["bs0", "bs1", "bs2"] and joint["me"] > 0
    assert joint["subsets"] is True  # 3 BSs: it answers for any two
    assert (
        joint["without"]["me"] > 0
        and joint["without"] != manifest["metrics"]["fusion"]["uninflated"]
    )
    assert manifest["config"]["joint"]["train_samples"] > 0
    steps = manifest["config"]["joint"]["steps_run"]
    assert {f"m{i}:head" for i in range(1, JOINT_MEMBERS)} <= set(steps)
    head = _assert_joint_onnx_serves_the_torch_head(repo, "j", result.version, site)
    assert head.config.members == JOINT_MEMBERS > 1  # an ensemble, served as one graph


def _assert_joint_onnx_serves_the_torch_head(
    repo: ModelRepository, name: str, version: str, site: SiteFingerprints
) -> Head:
    """The exported joint graph gives what the torch head gives on the same stacked CSI
    (3 UEs of ``site`` heard by every BS, 3 by some); returns the torch head."""
    import onnxruntime as ort

    _, stacked = joint_fingerprints(site, subsets=True)
    heard = np.abs(stacked.csi.reshape(len(stacked), 3, -1)).max(axis=2) > 0
    csi = stacked.csi[
        np.r_[np.flatnonzero(heard.all(axis=1))[:3], np.flatnonzero(~heard.all(axis=1))[:3]]
    ]
    assert len(csi) == 6
    path = repo.path("site", name, version) / JOINT_FILES[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pos_onnx, sigma_onnx = session.run(["position", "sigma"], {"csi": csi})
    model = _joint_model(repo, name, version, 3)
    with torch.no_grad():
        pos, sigma = model(torch.from_numpy(csi))
    assert sigma is not None
    np.testing.assert_allclose(pos_onnx, pos.numpy(), atol=1e-4)
    np.testing.assert_allclose(sigma_onnx, sigma.numpy(), rtol=1e-3)
    return model.head


def test_the_joint_ensemble_adds_members_to_the_single_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Member 0 is the head a one-member site trains (same seed, same copies); the
    others differ, and the ensemble is calibrated as one on validation."""
    import training.multibs as multibs

    site = toy_site(120, seed=4, drop=0.1)
    train, val, _ = split_site(site, CFG.val_fraction, 0.0, 1.0, CFG.seed)
    start = Backbone(seed=0).eval()
    monkeypatch.setattr(multibs, "JOINT_MEMBERS", 1)
    single = train_joint(start, train, val, CFG, quiet=True, progress=None)
    monkeypatch.setattr(multibs, "JOINT_MEMBERS", 3)
    ensemble = train_joint(start, train, val, CFG, quiet=True, progress=None)
    assert single is not None and ensemble is not None
    one, three = single.model.head, ensemble.model.head
    assert one.config.members == 1 and three.config.members == 3
    members = three.mlp
    assert isinstance(members, torch.nn.ModuleList)
    for key, value in one.mlp.state_dict().items():
        torch.testing.assert_close(members[0].state_dict()[key], value, rtol=0, atol=0)
    assert not torch.equal(members[0][0].weight, members[1][0].weight)
    assert ensemble.metrics["me"] > 0 and "sigma_scale_x" in ensemble.metrics
    assert ensemble.reason == "3 heads averaged"


@pytest.mark.parametrize("subsets", [False, True])
def test_joint_row_is_present_where_the_joint_head_answers(subsets: bool) -> None:
    site = toy_site(40, seed=1, drop=0.3)
    models = {bs: SiteModel(Backbone(seed=0), Head(HeadConfig(loss="nll"))) for bs in site.bs_ids}
    joint_bb = JointBackbone(Backbone(seed=0), 3, subsets=subsets)
    joint = SiteModel(joint_bb, Head(HeadConfig(loss="nll", in_features=joint_bb.config.features)))
    rmse = dict.fromkeys(site.bs_ids, (1.0, 1.0))
    means, covs, present = station_estimates(models, site, rmse, joint)
    assert means.shape == (4, len(site), 2) and covs.shape == (4, len(site), 2, 2)
    heard = present[:3].sum(axis=0)
    np.testing.assert_array_equal(present[3], heard >= 2 if subsets else heard == 3)
    assert ((heard == 2) & (present[3] == subsets)).any()
    np.testing.assert_array_equal(present[:3], site.mask().T)


def test_each_set_of_bss_gets_the_factor_of_its_own_fusion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`inflation_by_set`: fitted on the validation UEs that heard the set, fused from it
    alone; sets heard by too few UEs, and sites with too many BSs, get none."""
    torch.manual_seed(0)
    site = toy_site(60, seed=4, drop=0.3)
    models = {
        bs: SiteModel(Backbone(seed=k), Head(HeadConfig(loss="nll"))).eval()
        for k, bs in enumerate(site.bs_ids)
    }
    rmse = dict.fromkeys(site.bs_ids, (1.0, 1.0))
    by_set = inflation_by_set(models, site, rmse)
    mask = site.mask()
    every = {"bs0", "bs1", "bs2", "bs0+bs1", "bs0+bs2", "bs1+bs2", "bs0+bs1+bs2"}
    assert set(by_set) == every and mask.all(axis=1).sum() >= SET_MIN_VAL
    means, covs, present = station_estimates(models, site, rmse)
    one = present[1]  # bs1 alone: its own Gaussian
    assert by_set["bs1"] == pytest.approx(
        fit_inflation(means[1, one] - site.pos[one], covs[1, one])
    )
    two = present[0] & present[2]  # bs0 and bs2: their robust fusion on the UEs both heard
    mean, cov = fuse_by(FUSION, means[[0, 2]][:, two], covs[[0, 2]][:, two])
    assert by_set["bs0+bs2"] == pytest.approx(fit_inflation(mean - site.pos[two], cov))
    # each UE gets its set's factor
    factors = set_factors(present, site.bs_ids, by_set, default=7.0)
    assert factors[np.flatnonzero(one & ~present[0] & ~present[2])[0]] == by_set["bs1"]
    small = site.subset(np.arange(16))
    assert "bs0+bs1+bs2" not in inflation_by_set(models, small, rmse)
    assert set_factors(present[:, :1] & False, site.bs_ids, by_set, default=7.0)[0] == 7.0
    monkeypatch.setattr("training.multibs.SET_MAX_STATIONS", 2)
    assert inflation_by_set(models, site, rmse) == {}


@pytest.mark.parametrize(("loss", "scratch"), [("mse", False), ("nll", True)])
def test_no_joint_head_without_sigma_or_a_parent_backbone(
    repo: ModelRepository, loss: str, scratch: bool
) -> None:
    site = toy_site(80, seed=3, drop=0.1)
    mode = "finetune" if scratch else "head"
    result = adapt_site(repo, "n", site, mode=mode, loss=loss, config=CFG, scratch=scratch)
    manifest = repo.manifest("site", "n", result.version)
    assert "joint" not in manifest["metrics"]["fusion"] and "joint" not in manifest["config"]
    assert not set(JOINT_FILES) & set(manifest["files"])


def test_mse_multi_bs_site_fuses_with_validation_rmse(repo: ModelRepository) -> None:
    site = toy_site(80, seed=3, drop=0.1)
    result = adapt_site(repo, "m", site, mode="head", loss="mse", config=CFG)
    metrics = repo.manifest("site", "m", result.version)["metrics"]
    assert metrics["fusion"]["sigma_source"] == "validation_rmse"
    assert np.isfinite(metrics["me"]) and metrics["within_2sigma"] > 0


def test_unlabelled_tracks_train_the_bss_that_saw_them(repo: ModelRepository) -> None:
    """Each BS's own tracks (`training.unlabelled`) join its training, the instants two
    BSs saw together the joint head's; the manifest counts them per BS, for the joint
    head and for the site."""
    site = toy_site(90, seed=3, drop=0.0)
    seen = toy_site_tracks(3, 12, seed=5)
    walks = {bs: seen[bs] for bs in ("bs0", "bs1")}  # bs2 saw none of the walks
    result = adapt_site(repo, "walked", site, mode="finetune", config=CFG, unlabelled=walks)
    config = repo.manifest("site", "walked", result.version)["config"]
    per_bs = {bs: config["bs"][bs]["track_pairs"] for bs in site.bs_ids}
    assert per_bs["bs0"] == per_bs["bs1"] == 3 * 11 and per_bs["bs2"] == 0
    assert config["unlabelled_samples"] == 72 and config["unlabelled_tracks"] == 3  # 3 walks
    assert config["track_pairs"] == 66 and config["bs"]["bs0"]["unlabelled_samples"] == 36
    # a subset head answers for two BSs: every instant bs0 and bs1 both saw
    assert config["joint"]["unlabelled_samples"] == 36 and config["joint"]["track_pairs"] == 33
    choice = config["unlabelled_choice"]  # kept: the site fused no worse on validation
    assert choice["kept"] and choice["val_score_with"] <= choice["val_score_without"]
    assert choice["uploaded_samples"] == 72
    with pytest.raises(ValueError, match=r"base stations \['bs7'\] the site does not have"):
        adapt_site(repo, "walked", site, mode="head", config=CFG, unlabelled={"bs7": seen["bs0"]})
    with pytest.raises(ValueError, match="takes unlabelled tracks per base station"):
        adapt_site(repo, "walked", site, mode="head", config=CFG, unlabelled=seen["bs0"])


def test_tracks_the_site_fuses_worse_with_are_dropped(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where validation says the site fuses better without its tracks, the version is
    the one trained without them (the same numbers as an adaptation given none)."""
    import training.multibs

    site = toy_site(90, seed=3, drop=0.0)
    plain = adapt_site(repo, "plain", site, mode="finetune", config=CFG)

    def worse(*args: Any) -> dict[str, Any]:
        return {"kept": False, "criterion": "test"}

    monkeypatch.setattr(training.multibs, "_keep_tracks", worse)
    walks = toy_site_tracks(3, 12, seed=5)
    dropped = adapt_site(repo, "walked", site, mode="finetune", config=CFG, unlabelled=walks)
    config = repo.manifest("site", "walked", dropped.version)["config"]
    choice = config["unlabelled_choice"]
    assert choice == {"kept": False, "criterion": "test", "uploaded_samples": 108}
    assert config["track_pairs"] == 0 and config["joint"]["unlabelled_samples"] == 0
    assert dropped.metrics["me"] == plain.metrics["me"]


def test_joint_tracks_stack_the_bss_at_the_instants_they_saw_together() -> None:
    seen = toy_site_tracks(2, 5, seed=1)
    partial = {
        "bs0": seen["bs0"],
        "bs2": UnlabelledTracks(seen["bs2"].csi[:3], seen["bs2"].time[:3], seen["bs2"].track[:3]),
    }
    ids = ["bs0", "bs1", "bs2"]
    got = joint_tracks(partial, ids, subsets=True)  # two BSs heard: the first 3 instants
    assert got is not None and len(got) == 3 and got.csi.shape == (3, 24, 103, 2)
    np.testing.assert_array_equal(got.csi[:, :8], seen["bs0"].csi[:3])
    np.testing.assert_array_equal(got.csi[:, 16:], seen["bs2"].csi[:3])
    assert not got.csi[:, 8:16].any()  # bs1 saw nothing: zeros, as a subset head is fed
    np.testing.assert_array_equal(got.time, seen["bs0"].time[:3])
    assert joint_tracks(partial, ids, subsets=False) is None  # an every-BS head: none
    assert joint_tracks({"bs0": seen["bs0"]}, ids, subsets=True) is None


def test_fingerprints_without_tracks_never_reach_the_joint_head() -> None:
    """Row k of two BSs' untracked groups is not one UE at one instant (each sample is a
    track of its own, at time 0), so they are not stacked; tracks beside them still are."""
    seen = toy_site_tracks(2, 5, seed=1)
    alone = {bs: UnlabelledTracks.untracked(seen[bs].csi) for bs in ("bs0", "bs2")}
    ids = ["bs0", "bs1", "bs2"]
    assert joint_tracks(alone, ids, subsets=True) is None
    mixed = {bs: UnlabelledTracks.concat([seen[bs], alone[bs]]) for bs in alone}
    got = joint_tracks(mixed, ids, subsets=True)
    assert got is not None and len(got) == len(seen["bs0"])  # the tracked instants only
    # a walk one BS kept a single sample of still joins at that instant
    one = {"bs0": seen["bs0"], "bs2": UnlabelledTracks.untracked(seen["bs2"].csi[:1])}
    one["bs2"].track[:] = seen["bs2"].track[0]
    one["bs2"].time[:] = seen["bs2"].time[0]
    got = joint_tracks(one, ids, subsets=True)
    assert got is not None and len(got) == 1 and got.csi[:, 16:].any()


def test_one_bs_site_is_a_single_bs_site(repo: ModelRepository) -> None:
    site = toy_site(60, seed=4, stations={"only": (0.0, 0.0)}, drop=0.0)
    result = adapt_site(repo, "one", site, mode="head", config=CFG)
    manifest = repo.manifest("site", "one", result.version)
    assert "base_stations" not in manifest and "model.onnx" in manifest["files"]
    walks = toy_site_tracks(2, 6, seed=1, stations={"only": (0.0, 0.0)})
    result = adapt_site(repo, "one", site, mode="head", config=CFG, unlabelled=walks)
    assert repo.manifest("site", "one", result.version)["config"]["track_pairs"] == 10
    with pytest.raises(ValueError, match="this site has one base station"):
        adapt_site(repo, "one", site, mode="head", config=CFG, unlabelled={"bs7": walks["only"]})


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
            "--head-warmup-steps", "2", "--augment-copies", "0", "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "bs2 validation" in result.stdout and "published" in result.stdout
    assert "inflation by the BSs heard: bs0 " in result.stdout
    manifest = repo.manifest("site", "hall")
    assert manifest["base_stations"] == ["bs0", "bs1", "bs2"]
    assert manifest["config"]["data"] == str(data) and manifest["config"]["env"] == "hall"
    bad = CliRunner().invoke(
        app,
        ["train", "site", "--data", str(data), "--env", "nope", "--site", "x",
         "--out", str(repo.root), "--quiet"],
    )  # fmt: skip
    assert bad.exit_code != 0 and "holds no environments" in bad.output


def test_cli_train_site_reads_walks_per_bs(
    repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--unlabelled`` with a multi-BS site: the groups named by BS id; the output says
    what was used, or that the site fused better without."""
    from typer.testing import CliRunner

    import training.multibs
    from training.cli import app
    from training.data.site import write_site
    from training.data.unlabelled import write_unlabelled

    data, walks = tmp_path / "hall.h5", tmp_path / "walks.h5"
    write_site(data, "hall", toy_site(90, seed=8, drop=0.0))
    for bs, tracks in toy_site_tracks(2, 10, seed=2).items():
        write_unlabelled(walks, f"day0/{bs}", tracks, EnvironmentMeta(description="walk"))
    args = ["train", "site", "--data", str(data), "--env", "hall", "--site", "hall",
            "--out", str(repo.root), "--mode", "head", "--epochs", "2", "--min-steps", "0",
            "--head-warmup-steps", "2", "--augment-copies", "0", "--quiet",
            "--unlabelled", str(walks)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert repo.manifest("site", "hall")["config"]["unlabelled_choice"]["kept"]
    assert "60 samples on 2 tracks, 54 pairs" in result.stdout
    assert "base stations bs0, bs1, bs2" in result.stdout
    bad = CliRunner().invoke(app, [*args[:-1], str(data)])  # a file without tracks
    assert bad.exit_code != 0 and "no unlabelled tracks" in bad.output
    scores = {"val_score_with": 2.0, "val_score_without": 1.5, "criterion": "fused NLL"}
    monkeypatch.setattr(training.multibs, "_keep_tracks", lambda *a: {"kept": False, **scores})
    dropped = CliRunner().invoke(app, args)
    assert dropped.exit_code == 0, dropped.output
    assert "not used: the site fused better on validation without them" in dropped.stdout
    assert "(fused NLL 1.500 against 2.000 with)" in dropped.stdout


@pytest.mark.parametrize(
    ("cfg", "criterion"),
    [(CFG, "fused validation NLL"), (CFG.replace(loss="mse", select="me"), "fused validation ME")],
)
def test_auto_chooses_one_mode_for_every_bs_by_the_fused_validation_score(
    repo: ModelRepository, cfg: TrainConfig, criterion: str
) -> None:
    site = toy_site(120, seed=2, drop=0.15)
    result = adapt_site(repo, "a", site, mode="auto", loss=cfg.loss, config=cfg, holdout=0.2)
    config = repo.manifest("site", "a", result.version)["config"]
    choice = config["site_choice"]
    chosen = choice["chosen_mode"]
    assert set(choice["candidates"]) == {"finetune", "gradual", "head"}
    assert result.chosen_mode == ",".join(f"{bs}={chosen}" for bs in site.bs_ids)
    assert all(config["bs"][bs]["mode"] == "auto" for bs in site.bs_ids)
    assert criterion in choice["reason"]
    # the rule: the lowest fused score wins, unless within one SE of finetune
    scores = {m: c["val_score"] for m, c in choice["candidates"].items()}
    best = min(scores, key=lambda m: scores[m])
    if chosen != "finetune":
        assert chosen == best
        cand = choice["candidates"][chosen]
        assert -cand["diff_vs_finetune"] > cand["se_vs_finetune"]
    else:
        assert best == "finetune" or "within 1 SE" in choice["reason"]
    # the chosen candidates' fused score is the version's: the same models, the same data
    _, val, _ = split_site(site, config["val_fraction"], 0.2, 1.0, config["seed"])
    models = {bs: load_site_model(repo, "a", bs=bs) for bs in site.bs_ids}
    joint = _joint_model(repo, "a", result.version, 3) if cfg.loss == "nll" else None
    score, me = fused_scores(models, val, cfg, joint)
    assert float(score.mean()) == pytest.approx(scores[chosen], rel=1e-4)
    assert me == pytest.approx(choice["candidates"][chosen]["val_me"], rel=1e-4)
    if cfg.select == "me":  # the score is then the error itself
        assert scores[chosen] == pytest.approx(me, rel=1e-9)


def test_site_auto_weighs_the_large_site_candidates_and_each_bs_reports_the_choice(
    tmp_path: Path,
) -> None:
    """From `auto_scratch_min` labels the site-level `auto` also trains every BS from
    scratch and with a fresh `dense` layer. With a backbone whose `dense` layer is stuck
    (no gradient through it) only those two can fit, so one of them is kept, and every
    BS's manifest entry names it (not the `finetune` recipe it was trained with)."""
    repo = ModelRepository(tmp_path / "models")
    stuck = Backbone(seed=0)
    with torch.no_grad():
        stuck.dense.bias.fill_(-60.0)
    save_backbone(repo, "meml", stuck, loss="nll")
    site = toy_site(120, seed=2, drop=0.0)
    cfg = CFG.replace(epochs=6, auto_scratch_min=2)
    result = adapt_site(repo, "a", site, mode="auto", loss="nll", config=cfg)
    config = repo.manifest("site", "a", result.version)["config"]
    choice = config["site_choice"]
    assert set(choice["candidates"]) == {"finetune", "gradual", "head", "scratch", "fresh-dense"}
    chosen = choice["chosen_mode"]
    assert chosen in ("scratch", "fresh-dense"), choice
    assert all(config["bs"][bs]["chosen_mode"] == chosen for bs in site.bs_ids)
    assert result.chosen_mode == ",".join(f"{bs}={chosen}" for bs in site.bs_ids)


def test_fused_nll_is_the_gaussian_density() -> None:
    from scipy.stats import multivariate_normal

    from training.fusion import nll

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 2, 2))
    covs = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(2)
    errors = rng.normal(size=(5, 2))
    want = [
        -multivariate_normal(np.zeros(2), c).logpdf(e) for e, c in zip(errors, covs, strict=True)
    ]
    np.testing.assert_allclose(nll(errors, covs), want, rtol=1e-10)
