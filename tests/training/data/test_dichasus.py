from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.data import dichasus_files as dfiles
from training.data.dichasus import (
    DichasusError,
    import_dichasus,
    import_dichasus_to_file,
    load_spec,
    parse_subcarriers,
    select_antennas,
)
from training.data.fingerprints import open_environment, read_environment
from training.data.tfrecord import TFRecordError, write_records

DEFAULT_BINS = np.arange(0, 1024, 10)


def _expected_real(antennas: list[int], bins: np.ndarray, fftshift: bool = True) -> np.ndarray:
    raw_bins = (bins + 512) % 1024 if fftshift else bins
    real: np.ndarray = np.asarray(antennas)[:, None] * 10000 + raw_bins[None, :]
    return real.astype(np.float32)


def test_round_trip_sorted_by_time_across_files(tmp_path: Path) -> None:
    spec = dfiles.write_spec(tmp_path / "spec.json")
    a = dfiles.write_file(tmp_path / "a.tfrecords", [5.0, 1.0, 3.0], first_index=0)
    b = dfiles.write_file(tmp_path / "b.tfrecords", [2.0, 4.0], first_index=3)
    out = tmp_path / "out.h5"
    n = import_dichasus_to_file([a, b], spec, out, "dichasus/a0")
    assert n == 5
    data = read_environment(out, "dichasus/a0")
    # time order 1, 2, 3, 4, 5 -> records 1, 3, 2, 4, 0
    order = [1, 3, 2, 4, 0]
    np.testing.assert_array_equal(data.pos, np.array([[i, 2 * i] for i in order], np.float32))
    np.testing.assert_array_equal(data.csi[:, 0, 0, 1], -np.array(order, np.float32))
    antennas = [3, 0, 5, 1, 7, 2, 6, 4]  # array 0, row by row
    for m in range(5):
        np.testing.assert_array_equal(data.csi[m, :, :, 0], _expected_real(antennas, DEFAULT_BINS))
    assert data.snr_db is not None
    np.testing.assert_allclose(data.snr_db, 20.0)  # linear 100 -> 20 dB
    assert data.los is None
    with open_environment(out, "dichasus/a0") as env:
        assert env.meta.bs_position == (1.0, -2.0, 1.5)
        assert env.meta.array == "4x2"
        assert env.meta.subcarrier_spacing_hz == pytest.approx(10 * 50e6 / 1024)
        assert env.meta.source["files"] == ["a.tfrecords", "b.tfrecords"]
        assert env.meta.source["antennas"] == antennas
        assert env.meta.source["time_range"] == [1.0, 5.0]


def test_subarray_of_larger_array_and_custom_subcarriers(tmp_path: Path) -> None:
    spec = dfiles.write_spec(tmp_path / "spec.json")
    f = dfiles.write_file(tmp_path / "a.tfrecords", [0.0, 1.0], snr=False)
    bins = list(range(1, 1031, 10))[:103]
    data, meta = import_dichasus(
        [f], spec, array=1, subarray=(1, 2), subcarriers=bins, fftshift=False
    )
    antennas = [18, 19, 20, 21, 26, 27, 28, 29]
    np.testing.assert_array_equal(
        data.csi[0, :, :, 0], _expected_real(antennas, np.array(bins), False)
    )
    assert data.snr_db is None
    assert meta.bs_position == (0.0, 0.0, 0.0) and meta.source["bs_position_known"] is False


def test_wrong_shape_record_names_file_and_record(tmp_path: Path) -> None:
    spec = dfiles.write_spec(tmp_path / "spec.json")
    path = tmp_path / "bad.tfrecords"
    records = [dfiles.record(i, float(i)) for i in range(3)]
    records.append(dfiles.record(3, 3.0, csi_shape=(dfiles.N_ANT, 512, 2)))
    write_records(path, records)
    with pytest.raises(DichasusError, match=rf"{path}: record 3: csi has shape \[39, 512, 2\]"):
        import_dichasus([path], spec)


def test_missing_feature_and_corrupt_file(tmp_path: Path) -> None:
    from training.data.tfrecord import encode_example, encode_tensor

    spec = dfiles.write_spec(tmp_path / "spec.json")
    path = tmp_path / "nopos.tfrecords"
    write_records(path, [encode_example({"csi": [encode_tensor(np.zeros(3, np.float32))]})])
    with pytest.raises(DichasusError, match="record 0: feature 'pos-tachy' is missing"):
        import_dichasus([path], spec)
    good = dfiles.write_file(tmp_path / "good.tfrecords", [0.0])
    raw = bytearray(good.read_bytes())
    raw[100] ^= 0xFF
    good.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match="record 0: data checksum"):
        import_dichasus([good], spec)


def test_spec_and_window_errors(tmp_path: Path) -> None:
    spec = load_spec(dfiles.write_spec(tmp_path / "spec.json"))
    assert spec.n_antennas == dfiles.N_ANT
    assert spec.arrays[1].shape == (4, 8)
    with pytest.raises(DichasusError, match="unused antenna slots"):
        select_antennas(spec, 1, (2, 4))
    with pytest.raises(DichasusError, match="does not fit"):
        select_antennas(spec, 0, (1, 0))
    with pytest.raises(DichasusError, match="array 5 does not exist"):
        select_antennas(spec, 5, (0, 0))
    broken = tmp_path / "broken.json"
    broken.write_text('{"antennas": [{"assignments": "nope"}]}')
    with pytest.raises(DichasusError, match="assignments"):
        load_spec(broken)


def test_parse_subcarriers() -> None:
    assert parse_subcarriers("0:1024:10") == list(range(0, 1024, 10))
    assert parse_subcarriers(",".join(str(i) for i in range(103))) == list(range(103))
    with pytest.raises(DichasusError, match="205 subcarriers selected"):
        parse_subcarriers("0:1024:5")
    with pytest.raises(DichasusError, match="start:stop:step"):
        parse_subcarriers("every tenth")
