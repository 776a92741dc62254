from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.data.tfrecord import (
    ProtobufError,
    TFRecordError,
    crc32c,
    decode_example,
    decode_tensor,
    encode_example,
    encode_tensor,
    masked_crc32c,
    read_records,
    scalar_feature,
    write_records,
)


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    assert masked_crc32c(b"") == 0xA282EAD8


def test_records_round_trip(tmp_path: Path) -> None:
    records = [b"", b"a", bytes(range(256)) * 40]
    path = tmp_path / "r.tfrecords"
    assert write_records(path, records) == 3
    assert list(read_records(path)) == records


@pytest.mark.parametrize(
    ("offset", "problem"),
    [(3, "length checksum mismatch"), (12 + 16 + 1, "data checksum mismatch")],
)
def test_corruption_is_detected(tmp_path: Path, offset: int, problem: str) -> None:
    path = tmp_path / "r.tfrecords"
    write_records(path, [b"x" * 16, b"y" * 16])
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(TFRecordError, match=f"{path}: record 0: {problem}"):
        list(read_records(path))


def test_corruption_in_second_record_names_it(tmp_path: Path) -> None:
    path = tmp_path / "r.tfrecords"
    write_records(path, [b"x" * 16, b"y" * 16])
    raw = bytearray(path.read_bytes())
    raw[32 + 12 + 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    reader = read_records(path)
    assert next(reader) == b"x" * 16
    with pytest.raises(TFRecordError, match="record 1: data checksum"):
        next(reader)
    assert len(list(read_records(path, verify=False))) == 2


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "r.tfrecords"
    write_records(path, [b"z" * 100])
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TFRecordError, match="truncated data"):
        list(read_records(path))


def test_tensor_golden_bytes() -> None:
    # What tf.io.serialize_tensor(tf.constant([1.0, 2.0])) writes.
    golden = b'\x08\x01\x12\x04\x12\x02\x08\x02"\x08\x00\x00\x80?\x00\x00\x00@'
    assert encode_tensor(np.array([1.0, 2.0], np.float32)) == golden
    np.testing.assert_array_equal(decode_tensor(golden), [1.0, 2.0])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.array([1.5, -2.25, 1e300]),
        np.array([-(2**40), 7], dtype=np.int64),
        np.array(3.0, dtype=np.float32),
    ],
)
def test_tensor_round_trip(array: np.ndarray) -> None:
    out = decode_tensor(encode_tensor(array))
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)


def test_tensor_value_fields_and_errors() -> None:
    # dtype DT_FLOAT, shape [3], float_val = [2.0] (a constant-filled tensor)
    filled = b"\x08\x01\x12\x04\x12\x02\x08\x03" + b"\x2a\x04" + np.float32(2.0).tobytes()
    np.testing.assert_array_equal(decode_tensor(filled), [2.0, 2.0, 2.0])
    bad_length = encode_tensor(np.zeros(4, np.float32))[:-1]
    with pytest.raises(ProtobufError):
        decode_tensor(bad_length)
    with pytest.raises(ProtobufError, match="dtype code 7"):
        decode_tensor(b"\x08\x07")  # DT_STRING


def test_example_golden_bytes_and_round_trip() -> None:
    # Example{features{feature{key: "a" value{int64_list{value: [1]}}}}}
    assert encode_example({"a": np.array([1])}).hex() == "0a0c0a0a0a016112051a030a0101"
    tensor = encode_tensor(np.ones((2, 2), np.float64))
    decoded = decode_example(
        encode_example(
            {"csi": [tensor], "time": np.float32(12.5), "ids": np.array([-3, 2**40]), "s": "hi"}
        )
    )
    assert decoded["csi"] == [tensor]
    np.testing.assert_array_equal(decoded["time"], [12.5])
    np.testing.assert_array_equal(decoded["ids"], [-3, 2**40])
    assert decoded["s"] == [b"hi"]
    assert scalar_feature(decoded, "time") == 12.5


def test_example_unpacked_repeated_values() -> None:
    # int64_list with two unpacked values (field 1 varint twice), as older writers emit.
    int_list = b"\x08\x05\x08\x07"
    feature = b"\x1a" + bytes([len(int_list)]) + int_list
    entry = b"\x0a\x01k" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    example = b"\x0a" + bytes([len(features)]) + features
    np.testing.assert_array_equal(decode_example(example)["k"], [5, 7])


def test_matches_the_protobuf_library() -> None:
    """Cross-check our hand-coded wire format against protobuf's own encoder."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import (  # type: ignore[import-untyped]
        descriptor_pb2,
        descriptor_pool,
        message_factory,
    )

    fdp = descriptor_pb2.FileDescriptorProto(name="ex.proto", package="t", syntax="proto3")

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> Any:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            added = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                added.type_name = type_name
        return msg

    fd = descriptor_pb2.FieldDescriptorProto
    rep, opt = fd.LABEL_REPEATED, fd.LABEL_OPTIONAL
    message("BytesList", [("value", 1, fd.TYPE_BYTES, rep, "")])
    message("FloatList", [("value", 1, fd.TYPE_FLOAT, rep, "")])
    message("Int64List", [("value", 1, fd.TYPE_INT64, rep, "")])
    message(
        "Feature",
        [
            ("bytes_list", 1, fd.TYPE_MESSAGE, opt, ".t.BytesList"),
            ("float_list", 2, fd.TYPE_MESSAGE, opt, ".t.FloatList"),
            ("int64_list", 3, fd.TYPE_MESSAGE, opt, ".t.Int64List"),
        ],
    )
    features = message(
        "Features", [("feature", 1, fd.TYPE_MESSAGE, rep, ".t.Features.FeatureEntry")]
    )
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=fd.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=fd.TYPE_MESSAGE, label=opt, type_name=".t.Feature")
    message("Example", [("features", 1, fd.TYPE_MESSAGE, opt, ".t.Features")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    example_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Example"))

    ours = encode_example({"b": [b"xyz"], "f": np.array([1.5, -2.0]), "i": np.array([-1, 300])})
    theirs = example_cls.FromString(ours)
    assert list(theirs.features.feature["b"].bytes_list.value) == [b"xyz"]
    assert list(theirs.features.feature["f"].float_list.value) == [1.5, -2.0]
    assert list(theirs.features.feature["i"].int64_list.value) == [-1, 300]
    back = decode_example(theirs.SerializeToString())
    np.testing.assert_array_equal(back["i"], [-1, 300])
    np.testing.assert_array_equal(back["f"], [1.5, -2.0])


def test_table_fallback_matches_known_value() -> None:
    from training.data.tfrecord import _crc32c_table

    assert _crc32c_table(b"123456789") == 0xE3069283
    assert _crc32c_table(bytes(range(256))) == crc32c(bytes(range(256)))
