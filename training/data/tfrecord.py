"""TFRecord files, `tf.train.Example` and `TensorProto`, read and written without TensorFlow.

TFRecord framing per record: uint64 length (little-endian), uint32 masked
crc32c of the length bytes, the data, uint32 masked crc32c of the data. Both
checksums are verified so that a truncated or corrupt download fails loudly with
the file and record number instead of feeding garbage into training.

The protobuf messages are small enough to hand-code their wire format
(varints, length-delimited fields, packed repeated scalars); this avoids a
TensorFlow dependency of several hundred megabytes.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FeatureValue",
    "ProtobufError",
    "TFRecordError",
    "crc32c",
    "decode_example",
    "decode_tensor",
    "encode_example",
    "encode_tensor",
    "masked_crc32c",
    "read_records",
    "scalar_feature",
    "tensor_feature",
    "write_records",
]

FeatureValue = list[bytes] | npt.NDArray[np.float32] | npt.NDArray[np.int64]
"""A decoded Example feature: a bytes list, a float32 array or an int64 array."""


class TFRecordError(ValueError):
    """A TFRecord file is truncated or fails its checksum."""

    def __init__(self, path: str, record: int, problem: str) -> None:
        self.path = path
        self.record = record
        self.problem = problem
        super().__init__(f"{path}: record {record}: {problem}")


class ProtobufError(ValueError):
    """Bytes that do not decode as the expected protobuf message."""


# --------------------------------------------------------------------------- crc32c


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def _crc32c_table(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:  # The C implementation is ~1000x faster; the table keeps us working without it.
    import google_crc32c as _gcrc

    def crc32c(data: bytes) -> int:
        """CRC-32C (Castagnoli) of `data`."""
        return int(_gcrc.value(bytes(data)))

except ImportError:  # pragma: no cover - depends on the environment
    logging.getLogger(__name__).warning(
        "google-crc32c is not installed: TFRecord checksums use a slow pure-Python CRC"
    )

    def crc32c(data: bytes) -> int:
        """CRC-32C (Castagnoli) of `data` (pure-Python table; slow for large files)."""
        return _crc32c_table(bytes(data))


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 and add a constant (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------- framing


def write_records(path: str | Path, records: Iterable[bytes]) -> int:
    """Write `records` as a TFRecord file; return how many were written."""
    count = 0
    with Path(path).open("wb") as f:
        for data in records:
            header = struct.pack("<Q", len(data))
            f.write(header)
            f.write(struct.pack("<I", masked_crc32c(header)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))
            count += 1
    return count


def read_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes]:
    """Yield the records of a TFRecord file, checking both CRCs unless `verify=False`."""
    spath = str(path)
    with Path(path).open("rb") as f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(spath, index, "truncated length header (file cut short?)")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify and masked_crc32c(header[:8]) != length_crc:
                raise TFRecordError(spath, index, "length checksum mismatch (corrupt file)")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(
                    spath, index, f"truncated data: expected {length} bytes (file cut short?)"
                )
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(spath, index, "data checksum mismatch (corrupt file)")
            yield data
            index += 1


# --------------------------------------------------------------------------- wire format

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Yield (field number, wire type, value) of one message; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == _LEN:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == _I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire} for field {number}")
        if pos > len(buf):
            raise ProtobufError(f"field {number} runs past the end of the message")
        yield number, wire, value


def _field(number: int, wire: int, payload: bytes | int) -> bytes:
    key = _varint((number << 3) | wire)
    if wire == _VARINT:
        assert isinstance(payload, int)
        return key + _varint(payload)
    assert isinstance(payload, bytes)
    return key + _varint(len(payload)) + payload


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed_varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        value, pos = _read_varint(buf, pos)
        out.append(_signed64(value))
    return out


# --------------------------------------------------------------------------- tf.train.Example
# Example{features=1: Features{feature=1: map<string, Feature>}}
# Feature{bytes_list=1 | float_list=2 | int64_list=3}, each List{value=1 repeated}


def _decode_feature(buf: bytes) -> FeatureValue:
    kind: int | None = None
    strings: list[bytes] = []
    floats: list[npt.NDArray[np.float32]] = []
    ints: list[int] = []
    for number, _, body in _fields(buf):
        if number not in (1, 2, 3):
            continue
        kind = number
        for vnum, vwire, value in _fields(body):
            if vnum != 1:
                continue
            if number == 1:
                strings.append(bytes(value))
            elif number == 2:
                # Packed (length-delimited) or one fixed32: both are raw little-endian floats.
                floats.append(np.frombuffer(value, dtype="<f4").astype(np.float32))
            elif vwire == _LEN:
                ints.extend(_packed_varints(value))
            else:
                ints.append(_signed64(value))
    if kind == 2:
        return np.concatenate(floats) if floats else np.zeros(0, np.float32)
    if kind == 3:
        return np.asarray(ints, dtype=np.int64)
    return strings


def decode_example(buf: bytes) -> dict[str, FeatureValue]:
    """Decode a serialized `tf.train.Example` into {name: value}."""
    out: dict[str, FeatureValue] = {}
    for number, wire, features in _fields(buf):
        if number != 1 or wire != _LEN:
            continue
        for fnum, fwire, entry in _fields(features):
            if fnum != 1 or fwire != _LEN:
                continue
            key: str | None = None
            value: FeatureValue = []
            for enum, _, body in _fields(entry):
                if enum == 1:
                    key = bytes(body).decode("utf-8")
                elif enum == 2:
                    value = _decode_feature(body)
            if key is None:
                raise ProtobufError("Example feature map entry without a key")
            out[key] = value
    return out


def _encode_feature(value: Any) -> bytes:
    if isinstance(value, bytes | str):
        value = [value]
    if isinstance(value, list | tuple) and all(isinstance(v, bytes | str) for v in value):
        items = b"".join(
            _field(1, _LEN, v.encode("utf-8") if isinstance(v, str) else v) for v in value
        )
        return _field(1, _LEN, items)
    array = np.atleast_1d(np.asarray(value))
    if array.ndim != 1:
        raise ValueError(f"Example features are flat lists; got shape {array.shape}")
    if array.dtype.kind == "f":
        packed = array.astype("<f4").tobytes()
        return _field(2, _LEN, _field(1, _LEN, packed) if array.size else b"")
    if array.dtype.kind in "iub":
        packed = b"".join(_varint(int(v)) for v in array)
        return _field(3, _LEN, _field(1, _LEN, packed) if array.size else b"")
    raise ValueError(f"cannot encode a feature of dtype {array.dtype}")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize {name: bytes | str | list of those | float or int array/scalar} as an Example.

    Floats become a float_list (float32), ints/bools an int64_list, bytes a bytes_list.
    """
    entries = b"".join(
        _field(1, _LEN, _field(1, _LEN, name.encode("utf-8")) + _field(2, _LEN, _encode_feature(v)))
        for name, v in features.items()
    )
    return _field(1, _LEN, entries)


# --------------------------------------------------------------------------- TensorProto
# TensorProto{dtype=1, tensor_shape=2: TensorShapeProto{dim=2: {size=1}}, tensor_content=4,
#             float_val=5, double_val=6, int_val=7, int64_val=10}

_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}
_DTYPE_CODES = {dt.newbyteorder("<") if dt.itemsize > 1 else dt: c for c, dt in _DTYPES.items()}


def decode_tensor(buf: bytes) -> npt.NDArray[Any]:
    """Decode a serialized `TensorProto` (what `tf.io.serialize_tensor` writes) to numpy."""
    dtype_code = 0
    shape: list[int] = []
    content: bytes | None = None
    scalars: list[Any] = []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype_code = value
        elif number == 2:
            for snum, _, dim in _fields(value):
                if snum == 2:
                    size = next((v for n, _, v in _fields(dim) if n == 1), 0)
                    shape.append(_signed64(size))
        elif number == 4:
            content = bytes(value)
        elif number in (5, 6):
            fmt = "<f4" if number == 5 else "<f8"
            scalars.extend(np.frombuffer(value, dtype=fmt).tolist())
        elif number in (7, 10):
            scalars.extend(_packed_varints(value) if wire == _LEN else [_signed64(value)])
    if dtype_code not in _DTYPES:
        raise ProtobufError(f"TensorProto dtype code {dtype_code} is not supported")
    dtype = _DTYPES[dtype_code]
    if any(s < 0 for s in shape):
        raise ProtobufError(f"TensorProto has an unknown dimension: shape {shape}")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        if len(content) != count * dtype.itemsize:
            raise ProtobufError(
                f"TensorProto content has {len(content)} bytes, expected {count * dtype.itemsize} "
                f"for shape {shape} of {dtype}"
            )
        flat = np.frombuffer(content, dtype=dtype)
    elif len(scalars) == count:
        flat = np.asarray(scalars, dtype=dtype)
    elif len(scalars) == 1:  # TF stores a constant-filled tensor as a single value
        flat = np.full(count, scalars[0], dtype=dtype)
    elif count == 0:
        flat = np.zeros(0, dtype=dtype)
    else:
        raise ProtobufError(f"TensorProto holds {len(scalars)} values for shape {shape}")
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def encode_tensor(array: npt.ArrayLike) -> bytes:
    """Serialize an array as a `TensorProto` (`tensor_content`), like `tf.io.serialize_tensor`."""
    values = np.asarray(array)
    dtype = values.dtype.newbyteorder("<") if values.dtype.itemsize > 1 else values.dtype
    if dtype not in _DTYPE_CODES:
        raise ValueError(f"cannot encode a tensor of dtype {values.dtype}")
    dims = b"".join(_field(2, _LEN, _field(1, _VARINT, int(s))) for s in values.shape)
    return (
        _field(1, _VARINT, _DTYPE_CODES[dtype])
        + _field(2, _LEN, dims)
        + _field(4, _LEN, np.ascontiguousarray(values, dtype=dtype).tobytes())
    )


def tensor_feature(example: Mapping[str, FeatureValue], name: str) -> npt.NDArray[Any]:
    """The tensor stored (serialized) in bytes feature `name` of a decoded Example."""
    value = example.get(name)
    if value is None:
        raise KeyError(name)
    if not isinstance(value, list) or len(value) != 1:
        raise ProtobufError(f"feature '{name}' is not a single serialized tensor")
    return decode_tensor(value[0])


def scalar_feature(example: Mapping[str, FeatureValue], name: str) -> float:
    """A scalar stored as a one-element float/int list, or as a serialized scalar tensor."""
    value = example.get(name)
    if value is None:
        raise KeyError(name)
    array: npt.NDArray[Any] = (
        decode_tensor(value[0])
        if isinstance(value, list) and len(value) == 1
        else np.asarray(value)
    )
    if array.size != 1:
        raise ProtobufError(f"feature '{name}' has {array.size} values, expected one")
    return float(array.reshape(()))
