"""Model repository: layout, versions, activation/rollback, names, atomicity and crash safety."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from training.repository import (
    Invalid,
    InvalidName,
    ModelRepository,
    NotFound,
    RepositoryError,
    parse_ref,
)


def _publish(repo: ModelRepository, site: str = "lab", payload: bytes = b"m1", **kw: object) -> str:
    return repo.publish_site(
        site,
        {"model.onnx": payload},
        loss="nll",
        parent=("meml", "v1"),
        config={"lr": 1e-3},
        data_fingerprint="ab" * 32,
        metrics={"val_me": 1.5},
        **kw,  # type: ignore[arg-type]
    )


def test_publish_layout_and_manifest(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert _publish(repo) == "v1"
    vdir = tmp_path / "sites" / "lab" / "versions" / "v1"
    assert (vdir / "model.onnx").read_bytes() == b"m1"
    m = repo.manifest("site", "lab", "v1")
    assert m["kind"] == "site" and m["name"] == "lab" and m["version"] == "v1"
    assert m["parent"] == {"backbone": "meml", "version": "v1"}
    assert m["loss"] == "nll" and m["config"] == {"lr": 1e-3} and m["metrics"] == {"val_me": 1.5}
    assert m["files"]["model.onnx"]["bytes"] == 2 and len(m["files"]["model.onnx"]["sha256"]) == 64
    assert m["created"].endswith("+00:00") and m["csipos_version"]
    assert json.loads((tmp_path / "sites" / "lab" / "active.json").read_text())["version"] == "v1"
    assert repo.path("site", "lab") == vdir
    assert repo.list_sites() == ["lab"] and repo.list_backbones() == []


def test_versions_increase_numerically_and_rollback(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    versions = [_publish(repo, payload=bytes([i])) for i in range(11)]
    assert versions[-1] == "v11"
    assert repo.site_versions("lab") == [f"v{i}" for i in range(1, 12)]  # v10 after v9
    assert repo.active_version("site", "lab") == "v11"
    repo.activate("site", "lab", "v2")
    assert repo.active_version("site", "lab") == "v2"
    assert (repo.path("site", "lab") / "model.onnx").read_bytes() == bytes([1])
    with pytest.raises(NotFound, match="no version 'v99'"):
        repo.activate("site", "lab", "v99")
    assert repo.active_version("site", "lab") == "v2"
    assert _publish(repo, activate=False) == "v12"
    assert repo.active_version("site", "lab") == "v2"


def test_writer_callback_gets_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)

    def writer(directory: Path, version: str) -> None:
        (directory / "backbone.pt").write_text(version)

    assert repo.publish_backbone("meml", writer, loss="mse") == "v1"
    assert (repo.path("backbone", "meml", "v1") / "backbone.pt").read_text() == "v1"
    assert repo.manifest("backbone", "meml")["parent"] is None


@pytest.mark.parametrize("bad", ["", "Lab", "../etc", "a/b", "-x", "a" * 64, "lab.v1", " lab"])
def test_bad_names_are_refused(tmp_path: Path, bad: str) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(InvalidName, match="invalid site name"):
        _publish(repo, site=bad)
    with pytest.raises(InvalidName):
        repo.active_version("site", bad)
    with pytest.raises(InvalidName):
        repo.activate("site", bad, "v1")
    assert not any(tmp_path.rglob("*etc*"))


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(InvalidName, match="invalid version"):
        repo.activate("site", "lab", "1")
    with pytest.raises(Invalid, match="invalid kind"):
        repo.active_version("model", "lab")
    with pytest.raises(Invalid, match="invalid loss"):
        repo.publish_site("lab", {"a": b""}, loss="l1", parent=None)
    with pytest.raises(InvalidName, match="invalid file name"):
        repo.publish_site("lab", {"../x": b""}, loss="mse", parent=None)
    with pytest.raises(InvalidName, match=r"manifest\.json"):
        repo.publish_site("lab", {"manifest.json": b""}, loss="mse", parent=None)
    with pytest.raises(Invalid, match="JSON-serialisable"):
        repo.publish_site("lab", {"a": b""}, loss="mse", parent=None, metrics={"me": float("nan")})
    with pytest.raises(Invalid, match="nothing to publish"):
        repo.publish_site("lab", {}, loss="mse", parent=None)
    assert repo.list_sites() == [] and repo.gc(max_age_s=0) == []
    assert issubclass(InvalidName, RepositoryError) and issubclass(NotFound, RepositoryError)


def test_not_found_messages(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    assert repo.active_version("site", "nope") is None
    with pytest.raises(NotFound, match="does not exist"):
        repo.manifest("site", "nope")
    with pytest.raises(NotFound, match="does not exist"):
        repo.delete_site("nope")
    _publish(repo, activate=False)
    with pytest.raises(NotFound, match="no active version"):
        repo.path("site", "lab")


def test_parse_ref() -> None:
    assert parse_ref("meml") == ("meml", None)
    assert parse_ref("meml:v3") == ("meml", "v3")
    with pytest.raises(InvalidName):
        parse_ref("meml:3")


def test_default_backbone(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(NotFound, match="no backbone"):
        repo.default_backbone()
    repo.publish_backbone("a", {"backbone.pt": b"a"}, loss="mse")
    assert repo.default_backbone() == "a"
    repo.publish_backbone("b", {"backbone.pt": b"b"}, loss="mse")
    with pytest.raises(NotFound, match="no default_backbone"):
        repo.default_backbone()
    repo.set_default_backbone("b")
    assert repo.default_backbone() == "b"
    with pytest.raises(NotFound):
        repo.set_default_backbone("c")


def test_delete_site(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    _publish(repo)
    _publish(repo, site="other")
    repo.delete_site("lab")
    assert repo.list_sites() == ["other"]
    assert not (tmp_path / "sites" / "lab").exists()
    assert [p.name for p in (tmp_path / "sites").iterdir()] == ["other"]


def test_failed_rename_leaves_active_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = ModelRepository(tmp_path)
    _publish(repo, payload=b"good")

    def boom(self: Path, target: Path) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(Path, "rename", boom)
    with pytest.raises(OSError, match="disk on fire"):
        _publish(repo, payload=b"bad")
    monkeypatch.undo()
    assert repo.site_versions("lab") == ["v1"]
    assert (repo.path("site", "lab") / "model.onnx").read_bytes() == b"good"
    assert not [p for p in (tmp_path / "sites" / "lab").iterdir() if p.name.startswith(".tmp")]


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from training.repository import ModelRepository

    root, stage = sys.argv[1], sys.argv[2]
    repo = ModelRepository(root)

    def writer(directory: Path, version: str) -> None:
        (directory / "model.onnx").write_bytes(b"half-written")
        if stage == "writing":
            os.kill(os.getpid(), signal.SIGKILL)

    if stage == "rename":
        real_rename = Path.rename
        def rename(self, target):
            os.kill(os.getpid(), signal.SIGKILL)
        Path.rename = rename
    if stage == "activate":
        real_replace = Path.replace
        def replace(self, target):
            os.kill(os.getpid(), signal.SIGKILL)
        Path.replace = replace
    repo.publish_site("lab", writer, loss="mse", parent=None)
    """
)


@pytest.mark.parametrize("stage", ["writing", "rename", "activate"])
def test_killed_publisher_leaves_good_version(tmp_path: Path, stage: str) -> None:
    repo = ModelRepository(tmp_path)
    _publish(repo, payload=b"good")
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(tmp_path), stage], capture_output=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    # Readers see the old active version, whole.
    assert repo.active_version("site", "lab") == "v1"
    assert (repo.path("site", "lab") / "model.onnx").read_bytes() == b"good"
    assert repo.manifest("site", "lab")["version"] == "v1"
    site_dir = tmp_path / "sites" / "lab"
    stray = [p for p in site_dir.iterdir() if p.name.startswith(".tmp")]
    if stage == "activate":
        # The new version made it into versions/ but was never activated.
        assert repo.site_versions("lab") == ["v1", "v2"] and len(stray) == 1
    else:
        assert repo.site_versions("lab") == ["v1"] and len(stray) == 1
    assert repo.gc() == []  # fresh leftovers might belong to a live publisher
    assert sorted(repo.gc(max_age_s=0)) == sorted(stray)
    assert not [p for p in site_dir.iterdir() if p.name.startswith(".tmp")]
    # The lock died with the process: publishing works again.
    assert _publish(repo, payload=b"next") == ("v3" if stage == "activate" else "v2")


def _publish_in_process(root: str) -> list[str]:
    repo = ModelRepository(root)
    return [_publish(repo, payload=os.urandom(8)) for _ in range(5)]


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_publish_in_process, [str(tmp_path)] * 2))
    got = sorted(v for r in results for v in r)
    assert len(set(got)) == 10
    assert ModelRepository(tmp_path).site_versions("lab") == [f"v{i}" for i in range(1, 11)]


def _source_repo(root: Path, sites: int = 3) -> ModelRepository:
    src = ModelRepository(root)
    src.publish_backbone("meml", {"backbone.onnx": b"bb"}, loss="nll")
    for i in range(sites):
        _publish(src, f"site{i}", payload=bytes([i]) * 64)
    _publish(src, "site0", payload=b"second")  # a site with two versions, v2 active
    src.activate("site", "site0", "v1")
    src.set_default_backbone("meml")
    return src


def test_seed_copies_every_model_once_and_keeps_existing(tmp_path: Path) -> None:
    src = _source_repo(tmp_path / "src")
    repo = ModelRepository(tmp_path / "dst")
    _publish(repo, "site1", payload=b"adapted here")  # already present: left alone
    copied = repo.seed(src.root)
    assert copied == ["backbone/meml", "site/site0", "site/site2"]
    assert repo.list_sites() == ["site0", "site1", "site2"]
    assert repo.site_versions("site0") == ["v1", "v2"]
    assert repo.active_version("site", "site0") == "v1"
    assert (repo.path("site", "site0") / "model.onnx").read_bytes() == bytes([0]) * 64
    assert (repo.path("site", "site1") / "model.onnx").read_bytes() == b"adapted here"
    assert repo.default_backbone() == "meml"
    assert repo.manifest("site", "site2") == src.manifest("site", "site2")
    marker = json.loads((repo.root / ".seeded.json").read_text())
    assert marker["copied"] == copied and marker["source"] == str(src.root)
    assert not list(repo.root.rglob(".tmp-*"))


def test_seeded_models_are_writable_even_from_a_read_only_source(tmp_path: Path) -> None:
    src = _source_repo(tmp_path / "src", sites=1)
    for path in src.root.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        repo = ModelRepository(tmp_path / "dst")
        repo.seed(src.root)
        for path in (repo.root / "sites").rglob("*"):
            assert path.stat().st_mode & (0o700 if path.is_dir() else 0o600) == (
                0o700 if path.is_dir() else 0o600
            ), path
        assert _publish(repo, "site0", payload=b"adapted") == "v3"
    finally:
        for path in src.root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_seed_happens_once_so_deletions_stay(tmp_path: Path) -> None:
    src = _source_repo(tmp_path / "src")
    repo = ModelRepository(tmp_path / "dst")
    assert repo.seed(src.root)
    repo.delete_site("site2")
    assert repo.seed(src.root) == []  # a restart: the marker says the volume was seeded
    assert repo.list_sites() == ["site0", "site1"]
    (repo.root / ".seeded.json").unlink()  # the operator asks for the defaults again
    assert repo.seed(src.root) == ["site/site2"]


def test_seed_skips_a_model_another_seeder_made_visible_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source_repo(tmp_path / "src", sites=1)
    repo = ModelRepository(tmp_path / "dst")
    real_rename = Path.rename

    def lose_the_race(self: Path, target: Path) -> Path:
        if self.name.startswith(".tmp-seed-"):  # another seeder renames its copy in first
            shutil.copytree(self, target)
            (Path(target) / "won").write_text("other seeder")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", lose_the_race)
    assert repo.seed(src.root) == []
    assert (repo.root / "sites" / "site0" / "won").exists()  # the winner's copy untouched
    assert repo.list_sites() == ["site0"] and repo.list_backbones() == ["meml"]
    assert not list(repo.root.rglob(".tmp-*"))


def _seed_in_process(args: tuple[str, str]) -> list[str]:
    return ModelRepository(args[0]).seed(args[1])


def test_concurrent_seeders_copy_each_model_exactly_once(tmp_path: Path) -> None:
    src = _source_repo(tmp_path / "src", sites=12)
    dst = tmp_path / "dst"
    with ProcessPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_seed_in_process, [(str(dst), str(src.root))] * 4))
    copied = sorted(c for r in results for c in r)
    expected = ["backbone/meml", *sorted(f"site/site{i}" for i in range(12))]
    assert copied == expected  # every model by exactly one seeder
    repo = ModelRepository(dst)
    for i in range(12):
        assert repo.manifest("site", f"site{i}") == src.manifest("site", f"site{i}")
    assert not list(dst.rglob(".tmp-*"))


def test_seed_creates_a_missing_repository_root(tmp_path: Path) -> None:
    src = ModelRepository(tmp_path / "src")
    src.publish_backbone("meml", {"backbone.onnx": b"bb"}, loss="nll")
    repo = ModelRepository(tmp_path / "new" / "models")
    assert repo.seed(src.root) == ["backbone/meml"]
    assert repo.list_backbones() == ["meml"] and (repo.root / ".seeded.json").exists()


def test_seed_refuses_a_missing_source_and_itself(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with pytest.raises(NotFound, match="not a directory"):
        repo.seed(tmp_path / "nope")
    with pytest.raises(Invalid, match="is this repository"):
        repo.seed(tmp_path)
    assert not (tmp_path / ".seeded.json").exists()


def test_gc_removes_a_crashed_seeds_temp_folder(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    stale = tmp_path / "sites" / ".tmp-seed-lab-0123"
    (stale / "versions").mkdir(parents=True)
    os.utime(stale, (0, 0))
    assert repo.gc(max_age_s=60) == [stale] and not stale.exists()
