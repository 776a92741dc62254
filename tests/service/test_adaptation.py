"""Adaptation uploads as untrusted HDF5: what is refused (422/413, naming the dataset),
that nothing reads outside the file, and that a decompression bomb is read in batches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, Server
from tests.service.jobs.test_adapt_jobs import labelled
from training.data.fingerprints import EnvironmentMeta, EnvironmentWriter, Fingerprints
from training.data.fingerprints import write_environment as write_env

pytestmark = pytest.mark.timeout(120)
H5 = {**ADMIN, "Content-Type": "application/x-hdf5"}


@pytest.fixture
def strict(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def good_file(path: Path, n: int = 24, **kwargs: Any) -> Path:
    csi, pos = labelled(n)
    write_env(path, "site", Fingerprints(csi=csi, pos=pos), EnvironmentMeta(), **kwargs)
    return path


def upload(client: TestClient, path: Path, site: str = "fresh") -> httpx.Response:
    return client.post(f"/sites/{site}/adapt?mode=head", content=path.read_bytes(), headers=H5)


def refused(r: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert "/tmp" not in r.text and "uploads" not in r.text  # no server paths
    return err


def _rewrite_csi(path: Path, **create: Any) -> None:
    """Replace /site/csi by a dataset made with `create` (h5py create_dataset kwargs)."""
    csi, _ = labelled(24)
    with h5py.File(path, "a") as f:
        del f["site/csi"]
        f["site"].create_dataset("csi", data=csi if "shape" not in create else None, **create)


def test_accepted_upload_is_stored_compressed(strict: TestClient, tmp_path: Path) -> None:
    r = upload(strict, good_file(tmp_path / "ok.h5"))
    assert r.status_code == 202, r.text
    data = tmp_path / "jobs" / r.json()["job_id"] / "data.h5"
    if data.exists():  # the job may have finished and removed it already
        with h5py.File(data, "r") as f:
            assert f["data/csi"].compression == "gzip"


def test_external_storage_is_refused(strict: TestClient, tmp_path: Path) -> None:
    path = good_file(tmp_path / "ext.h5")
    with h5py.File(path, "a") as f:
        del f["site/csi"]
        f["site"].create_dataset(
            "csi",
            shape=(24, 8, 103, 2),
            dtype="f4",
            external=[("/dev/zero", 0, h5py.h5f.UNLIMITED)],
        )
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/csi" and "external storage" in err["message"]


def test_missing_external_file_is_refused(strict: TestClient, tmp_path: Path) -> None:
    path = good_file(tmp_path / "missing.h5")
    with h5py.File(path, "a") as f:
        del f["site/pos"]
        f["site"].create_dataset(
            "pos", shape=(24, 2), dtype="f4", external=[("no-such-file.bin", 0, 24 * 8)]
        )
    assert refused(upload(strict, path))["detail"]["dataset"] == "site/pos"


def test_external_link_is_refused(strict: TestClient, tmp_path: Path) -> None:
    path = good_file(tmp_path / "link.h5")
    with h5py.File(path, "a") as f:
        f["site/leak"] = h5py.ExternalLink("/etc/passwd", "/x")
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/leak" and "external links" in err["message"]


def test_virtual_dataset_is_refused(strict: TestClient, tmp_path: Path) -> None:
    other = good_file(tmp_path / "other.h5")
    path = good_file(tmp_path / "vds.h5")
    layout = h5py.VirtualLayout(shape=(24, 8, 103, 2), dtype="f4")
    layout[:] = h5py.VirtualSource(str(other), "site/csi", shape=(24, 8, 103, 2))
    with h5py.File(path, "a") as f:
        del f["site/csi"]
        f["site"].create_virtual_dataset("csi", layout)
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/csi" and "virtual" in err["message"]


def test_unknown_filter_and_huge_chunks_are_refused(strict: TestClient, tmp_path: Path) -> None:
    path = good_file(tmp_path / "filter.h5")
    _rewrite_csi(path, chunks=(4, 8, 103, 2), scaleoffset=0)
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/csi" and "filter" in err["message"]
    path = good_file(tmp_path / "chunk.h5")
    with h5py.File(path, "a") as f:  # one chunk of all 4000 rows: 26 MB inflated at once
        del f["site/csi"], f["site/pos"]
        zeros = np.zeros((4000, 8, 103, 2), "f4")
        f["site"].create_dataset("csi", data=zeros, chunks=zeros.shape, compression="gzip")
        f["site"].create_dataset("pos", data=np.zeros((4000, 2), "f4"))
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/csi" and "chunks" in err["message"]


def test_corrupt_chunk_and_bad_attribute(strict: TestClient, tmp_path: Path) -> None:
    path = good_file(tmp_path / "corrupt.h5", n=600)
    with h5py.File(path, "r") as f:
        info = f["site/csi"].id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    mid = info.byte_offset + info.size // 2
    raw[mid : mid + 64] = b"\x00" * 64
    path.write_bytes(bytes(raw))
    err = refused(upload(strict, path))
    assert err["detail"]["dataset"] == "site/csi"
    path = good_file(tmp_path / "attr.h5")
    with h5py.File(path, "a") as f:
        f["site"].attrs["source"] = np.bytes_(b"\xff\xfe not utf-8")
    refused(upload(strict, path))
    refused(upload(strict, tmp_path / "attr.h5", site="other"))


def test_sample_and_decoded_size_caps(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = good_file(tmp_path / "many.h5", n=60)
    with TestClient(create_app(make_settings(max_adapt_samples=50))) as c:
        err = refused(upload(c, path), 413)
        assert err["detail"] == {"max_samples": 50, "got": 60}
    with TestClient(
        create_app(make_settings(max_adapt_samples=1000, max_upload_decoded_bytes=100_000))
    ) as c:
        err = refused(upload(c, path), 413)
        assert err["detail"]["max_decoded_bytes"] == 100_000


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_decompression_bomb_is_read_in_batches(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    """200k zero fingerprints in 1.4 MB of gzip HDF5 (1.3 GB decoded): the server's peak
    RSS stays within 200 MB of what it was before the upload."""
    bomb = tmp_path / "bomb.h5"
    zeros = Fingerprints(
        csi=np.zeros((4096, 8, 103, 2), np.float32), pos=np.zeros((4096, 2), np.float32)
    )
    with EnvironmentWriter(bomb, "site", EnvironmentMeta()) as w:
        for _ in range(49):
            w.append(zeros)
    assert w.count == 200_704 and bomb.stat().st_size < 2_000_000
    server = start_server(max_adapt_samples=300_000, max_upload_decoded_bytes=2 * 1024**3)
    before = _peak_rss_kib(server.proc.pid)
    start = time.monotonic()
    r = httpx.post(
        server.url + "/sites/bomb/adapt?mode=head",
        content=bomb.read_bytes(),
        headers=H5,
        timeout=200,
    )
    elapsed = time.monotonic() - start
    assert r.status_code == 202, r.text
    grown_mib = (_peak_rss_kib(server.proc.pid) - before) / 1024
    print(f"bomb upload: peak RSS +{grown_mib:.0f} MiB in {elapsed:.1f} s")
    assert grown_mib < 200
    server.stop()  # before the job's worker loads 1.3 GB
