from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.training.data.conftest import MakeData, make_fingerprints
from training.data.fingerprints import (
    CHUNK_SAMPLES,
    EnvironmentMeta,
    EnvironmentWriter,
    Fingerprints,
    data_fingerprint,
    list_environments,
    open_environment,
    read_environment,
    read_environment_meta,
    write_environment,
)
from training.data.schema import SCHEMA_VERSION, SchemaError


def _assert_same(a: Fingerprints, b: Fingerprints) -> None:
    np.testing.assert_array_equal(a.csi, b.csi)
    np.testing.assert_array_equal(a.pos, b.pos)
    for name in ("los", "snr_db"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)


def _expect(exc: pytest.ExceptionInfo[SchemaError], path: object, group: str, field: str) -> None:
    message = str(exc.value)
    assert str(path) in message and f"'{group}'" in message and f"'{field}'" in message
    assert exc.value.group == group and exc.value.field == field


# ---------------------------------------------------------------- round trip


def test_round_trip_nested_groups_and_meta(
    tmp_path: Path, make_data: MakeData, meta: EnvironmentMeta
) -> None:
    path = tmp_path / "f.h5"
    a, b = make_data(40, seed=1), make_data(30, seed=2, optional=False)
    write_environment(path, "industrial/bs0", a, meta)
    write_environment(path, "industrial/bs1", b, meta)
    write_environment(path, "lab-los", a, EnvironmentMeta())
    assert list_environments(path) == ["industrial/bs0", "industrial/bs1", "lab-los"]
    _assert_same(read_environment(path, "industrial/bs0"), a)
    _assert_same(read_environment(path, "industrial/bs1"), b)
    with open_environment(path, "industrial/bs0") as env:
        assert env.meta == meta
        assert env.meta.source["params"] == {"seed": 0, "snr": [5, 30]}
        assert env.has_los and env.has_snr
    with h5py.File(path, "r") as f:
        assert int(f.attrs["schema_version"]) == SCHEMA_VERSION
        csi = f["industrial/bs0/csi"]
        assert csi.compression == "gzip" and csi.chunks is not None
        assert isinstance(f["industrial/bs0"].attrs["source"], str)


def test_existing_group_needs_overwrite(
    tmp_path: Path, make_data: MakeData, meta: EnvironmentMeta
) -> None:
    path = tmp_path / "f.h5"
    write_environment(path, "env", make_data(10, seed=1), meta)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_environment(path, "env", make_data(10, seed=2), meta)
    write_environment(path, "env", make_data(12, seed=2), meta, overwrite=True)
    assert len(read_environment(path, "env")) == 12


@pytest.mark.parametrize("name", ["", "/abs", "a//b", "../up", "a b", "bs0/"])
def test_bad_environment_names(tmp_path: Path, name: str, meta: EnvironmentMeta) -> None:
    with pytest.raises(ValueError, match="environment name"):
        write_environment(tmp_path / "f.h5", name, make_fingerprints(3), meta)


def test_writer_appends_in_batches_with_chunking(tmp_path: Path, meta: EnvironmentMeta) -> None:
    path = tmp_path / "f.h5"
    full = make_fingerprints(CHUNK_SAMPLES + 70, seed=3)
    with EnvironmentWriter(path, "big/bs2", meta) as writer:
        for start in range(0, len(full), 100):
            writer.append(full.subset(slice(start, start + 100)))
        assert writer.count == len(full)
    _assert_same(read_environment(path, "big/bs2"), full)
    with h5py.File(path, "r") as f:
        assert f["big/bs2/csi"].chunks == (CHUNK_SAMPLES, 8, 103, 2)


def test_writer_removes_partial_group_on_error(tmp_path: Path, meta: EnvironmentMeta) -> None:
    path = tmp_path / "f.h5"
    write_environment(path, "keep", make_fingerprints(5), meta)
    with pytest.raises(RuntimeError, match="boom"), EnvironmentWriter(path, "partial", meta) as w:
        w.append(make_fingerprints(5))
        raise RuntimeError("boom")
    assert list_environments(path) == ["keep"]


def test_a_file_cut_short_while_created_is_refused_clearly(
    tmp_path: Path, meta: EnvironmentMeta
) -> None:
    """A run killed while creating its output leaves a few bytes of HDF5 header: writing
    there again (a resumed `data simulate`) says what the file is and what to do, where
    h5py alone raised a bare OSError."""
    good = tmp_path / "good.h5"
    write_environment(good, "keep", make_fingerprints(5), meta)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:96])
    with pytest.raises(SchemaError, match=r"cannot be opened for writing.*killed.*delete it"):
        write_environment(cut, "env", make_fingerprints(5), meta)
    assert cut.stat().st_size == 96  # left as it was


HOLD = """
import sys, time, h5py
f = h5py.File(sys.argv[1], "a")
print("open", flush=True)
time.sleep(60)
"""


def test_a_file_another_writer_holds_is_not_called_broken(
    tmp_path: Path, meta: EnvironmentMeta
) -> None:
    """HDF5 locks a file open for writing: a second writer is told to wait, never to
    delete a file that is fine."""
    path = tmp_path / "busy.h5"
    write_environment(path, "keep", make_fingerprints(5), meta)
    holder = subprocess.Popen(  # one process shares its own handles: the lock needs two
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(SchemaError) as err:
            write_environment(path, "env", make_fingerprints(5), meta)
    finally:
        holder.kill()
        holder.wait()
    assert "another process may be writing it" in str(err.value)
    assert "delete" not in str(err.value)
    assert list_environments(path) == ["keep"]


def test_writer_refuses_batches_with_different_fields(
    tmp_path: Path, meta: EnvironmentMeta
) -> None:
    path = tmp_path / "f.h5"
    with pytest.raises(SchemaError) as exc, EnvironmentWriter(path, "env", meta) as w:
        w.append(make_fingerprints(5, optional=True))
        w.append(make_fingerprints(5, optional=False))
    _expect(exc, path, "env", "los")
    assert list_environments(path) == []


def test_writer_with_no_samples_is_an_error(tmp_path: Path, meta: EnvironmentMeta) -> None:
    with (
        pytest.raises(SchemaError, match="no samples"),
        EnvironmentWriter(tmp_path / "f.h5", "env", meta),
    ):
        pass


# ---------------------------------------------------------------- validation of arrays


@pytest.mark.parametrize(
    ("field", "bad", "problem"),
    [
        ("csi", np.zeros((4, 8, 102, 2), np.float32), "expected \\[M, 8, 103, 2\\]"),
        ("csi", np.zeros((4, 8, 103, 2), np.float64), "dtype float64, expected float32"),
        ("pos", np.zeros((4, 3), np.float32), "expected \\[M, 2\\]"),
        ("pos", np.zeros((5, 2), np.float32), "5 samples but csi has 4"),
        ("los", np.zeros(4, np.int8), "expected bool"),
        ("snr_db", np.zeros((4, 1), np.float32), "expected \\[M\\]"),
    ],
)
def test_validate_names_field_and_expectation(
    field: str, bad: np.ndarray, problem: str, tmp_path: Path, meta: EnvironmentMeta
) -> None:
    data = make_fingerprints(4)
    setattr(data, field, bad)
    path = tmp_path / "f.h5"
    with pytest.raises(SchemaError, match=problem) as exc:
        write_environment(path, "site/bs0", data, meta)
    _expect(exc, path, "site/bs0", field)


@pytest.mark.parametrize("field", ["csi", "pos", "snr_db"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_validate_rejects_non_finite(field: str, value: float) -> None:
    data = make_fingerprints(6)
    getattr(data, field).reshape(6, -1)[3, 0] = value
    with pytest.raises(SchemaError, match="NaN/Inf values \\(first in sample 3\\)") as exc:
        data.validate()
    _expect(exc, "<memory>", "<memory>", field)


def test_validate_bad_meta(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    for meta, field in [
        (EnvironmentMeta(carrier_hz=-1.0), "carrier_hz"),
        (EnvironmentMeta(array="four by two"), "array"),
        (EnvironmentMeta(bs_position=(0.0, 1.0)), "bs_position"),  # type: ignore[arg-type]
        (EnvironmentMeta(source={"x": object()}), "source"),
    ]:
        with pytest.raises(SchemaError) as exc:
            write_environment(path, "env", make_fingerprints(2), meta)
        _expect(exc, path, "env", field)


# ---------------------------------------------------------------- validation of files


@pytest.fixture
def good_file(tmp_path: Path, meta: EnvironmentMeta) -> Path:
    path = tmp_path / "good.h5"
    write_environment(path, "site/bs0", make_fingerprints(20), meta)
    return path


def test_missing_group_lists_available(good_file: Path) -> None:
    with pytest.raises(SchemaError, match="environments in this file: site/bs0") as exc:
        read_environment(good_file, "site/bs9")
    _expect(exc, good_file, "site/bs9", "(group)")


@pytest.mark.parametrize("attr", ["carrier_hz", "bs_position", "source", "array"])
def test_missing_group_attr(good_file: Path, attr: str) -> None:
    with h5py.File(good_file, "a") as f:
        del f["site/bs0"].attrs[attr]
    with pytest.raises(SchemaError, match="missing group attribute") as exc:
        open_environment(good_file, "site/bs0")
    _expect(exc, good_file, "site/bs0", attr)


@pytest.mark.parametrize(
    "text", ["recorded by sounder X, run 7", "{not json", "42", '"quoted"', "", "[1, 2]"]
)
def test_plain_text_source_is_kept_as_text(good_file: Path, text: str, tmp_path: Path) -> None:
    # Other tools write a plain string there: keep it as {"text": ...} instead of refusing.
    with h5py.File(good_file, "a") as f:
        f["site/bs0"].attrs["source"] = text
    read_environment(good_file, "site/bs0")  # no error
    meta = read_environment_meta(good_file, "site/bs0")
    assert meta.source == {"text": text}
    # ... and it survives a rewrite as a JSON object
    again = tmp_path / "again.h5"
    write_environment(again, "x", make_fingerprints(3), meta)
    assert read_environment_meta(again, "x").source == {"text": text}
    with h5py.File(good_file, "a") as f:
        f["site/bs0"].attrs["source"] = np.bytes_("bytes from another tool")
    assert read_environment_meta(good_file, "site/bs0").source == {
        "text": "bytes from another tool"
    }


def test_missing_and_unknown_schema_version(good_file: Path) -> None:
    with h5py.File(good_file, "a") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1} is not supported") as exc:
        list_environments(good_file)
    _expect(exc, good_file, "/", "schema_version")
    with pytest.raises(SchemaError, match="schema_version"):
        write_environment(good_file, "other", make_fingerprints(2), EnvironmentMeta())
    with h5py.File(good_file, "a") as f:
        del f.attrs["schema_version"]
    with pytest.raises(SchemaError, match="missing root attribute") as exc:
        read_environment(good_file, "site/bs0")
    _expect(exc, good_file, "/", "schema_version")


@pytest.mark.parametrize(
    ("field", "replacement", "problem"),
    [
        ("csi", np.zeros((20, 8, 103, 2), np.float16), "dtype float16"),
        ("csi", np.zeros((20, 8, 103), np.float32), "shape \\[20, 8, 103\\]"),
        ("pos", np.zeros((19, 2), np.float32), "19 samples but csi has 20"),
        ("los", np.zeros(21, bool), "21 samples but csi has 20"),
        ("pos", None, "missing dataset"),
    ],
)
def test_bad_datasets_in_file(
    good_file: Path, field: str, replacement: np.ndarray | None, problem: str
) -> None:
    with h5py.File(good_file, "a") as f:
        del f[f"site/bs0/{field}"]
        if replacement is not None:
            f[f"site/bs0/{field}"] = replacement
    with pytest.raises(SchemaError, match=problem) as exc:
        open_environment(good_file, "site/bs0")
    _expect(exc, good_file, "site/bs0", field)


def test_nan_in_file_is_caught_on_read(good_file: Path) -> None:
    with h5py.File(good_file, "a") as f:
        f["site/bs0/csi"][7, 0, 0, 0] = np.nan
    with open_environment(good_file, "site/bs0") as env:
        env.read(slice(0, 5))  # the bad sample is not in this slice
        with pytest.raises(SchemaError, match="NaN/Inf") as exc:
            env.read(slice(5, 10))
    _expect(exc, good_file, "site/bs0", "csi")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such fingerprint file"):
        list_environments(tmp_path / "nope.h5")


# ---------------------------------------------------------------- lazy reads


def test_lazy_reads_of_slices_and_index_arrays(tmp_path: Path, meta: EnvironmentMeta) -> None:
    path = tmp_path / "f.h5"
    data = make_fingerprints(CHUNK_SAMPLES * 2 + 11, seed=5)
    write_environment(path, "env", data, meta)
    with open_environment(path, "env") as env:
        assert len(env) == len(data)
        _assert_same(env.read(slice(250, 270)), data.subset(slice(250, 270)))
        _assert_same(env.read(slice(None, None, 7)), data.subset(slice(None, None, 7)))
        sparse = np.array([0, 3, 300, len(data) - 1])
        _assert_same(env.read(sparse), data.subset(sparse))
        dense = np.arange(100, 140)
        _assert_same(env.read(dense), data.subset(dense))
        unsorted = np.array([9, 2, 2, 500])
        _assert_same(env.read(unsorted), data.subset(unsorted))
        assert len(env.read(np.array([], dtype=np.int64))) == 0
        with pytest.raises(IndexError, match="out of range"):
            env.read(np.array([len(data)]))
        with pytest.raises(ValueError, match="1-D int array"):
            env.read(np.array([0.5]))
        batches = list(env.iter_batches(200))
        assert [len(b) for b in batches] == [200, 200, 123]
        np.testing.assert_array_equal(env.read_field("pos"), data.pos)


def test_lazy_environment_pickles_and_reopens(good_file: Path) -> None:
    env = open_environment(good_file, "site/bs0")
    first = env.read(slice(0, 3))
    clone = pickle.loads(pickle.dumps(env))
    env.close()
    _assert_same(clone.read(slice(0, 3)), first)
    clone.close()


# ---------------------------------------------------------------- data fingerprint


def test_data_fingerprint_is_stable_and_sensitive(tmp_path: Path, meta: EnvironmentMeta) -> None:
    data = make_fingerprints(CHUNK_SAMPLES * 5 + 3, seed=8)
    digest = data_fingerprint(data)
    assert digest == data_fingerprint(make_fingerprints(CHUNK_SAMPLES * 5 + 3, seed=8))
    assert len(digest) == 64
    path = tmp_path / "f.h5"
    write_environment(path, "env", data, meta)
    with open_environment(path, "env") as env:
        assert data_fingerprint(env) == digest  # batched pass == in-memory hash
    changed = data.subset(slice(None))
    changed.pos[0, 0] += 1e-3
    assert data_fingerprint(changed) != digest
    no_snr = data.subset(slice(None))
    no_snr.snr_db = None
    assert data_fingerprint(no_snr) != digest


def test_concat_and_subset() -> None:
    a, b = make_fingerprints(3, seed=1), make_fingerprints(4, seed=2, optional=False)
    joined = Fingerprints.concat([a, b])
    assert len(joined) == 7 and joined.los is None and joined.snr_db is None
    np.testing.assert_array_equal(joined.csi[3:], b.csi)
    sub = a.subset(np.array([True, False, True]))
    assert len(sub) == 2 and sub.los is not None


# ---------------------------------------------------------------- trajectories


def _with_tracks(data: Fingerprints) -> Fingerprints:
    n = len(data)
    data.time = np.arange(n, dtype=np.float64) / 10.0
    data.track = (np.arange(n) // 10).astype(np.int32)
    return data


def test_time_and_track_round_trip_and_stay_optional(
    tmp_path: Path, make_data: MakeData, meta: EnvironmentMeta
) -> None:
    path = tmp_path / "tracks.h5"
    walked = _with_tracks(make_data(25, seed=3))
    write_environment(path, "walked", walked, meta)
    write_environment(path, "plain", make_data(5, seed=4), meta)
    back = read_environment(path, "walked")
    assert back.time is not None and back.track is not None
    np.testing.assert_array_equal(back.time, walked.time)  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.track, walked.track)  # type: ignore[arg-type]
    assert back.time.dtype == np.float64 and back.track.dtype == np.int32
    plain = read_environment(path, "plain")
    assert plain.time is None and plain.track is None
    with open_environment(path, "walked") as env:
        part = env.read(np.array([12, 3]))
        assert part.time is not None and part.time.tolist() == [1.2, 0.3]
        assert env.read_field("track") is not None
    with open_environment(path, "plain") as env:
        assert env.read_field("time") is None
    sub = back.subset(slice(10, 20))
    assert sub.track is not None and set(sub.track.tolist()) == {1}
    joined = Fingerprints.concat([back, plain])
    assert joined.time is None and len(joined) == 30  # only where every part has it
    assert data_fingerprint(back) != data_fingerprint(make_data(25, seed=3))


def test_time_and_track_are_validated(make_data: MakeData) -> None:
    data = _with_tracks(make_data(10, seed=5))
    data.time = data.time.astype(np.float32)  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match="float64"):
        data.validate()
    data = _with_tracks(make_data(10, seed=5))
    data.time[3] = np.nan  # type: ignore[index]
    with pytest.raises(SchemaError, match="NaN"):
        data.validate()
    data = _with_tracks(make_data(10, seed=5))
    data.track = data.track[:5]  # type: ignore[index]
    with pytest.raises(SchemaError, match="lengths must match"):
        data.validate()
