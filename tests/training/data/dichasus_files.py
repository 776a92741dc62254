"""Synthetic DICHASUS files in the real format: TFRecord of tf.train.Example records.

CSI values encode (antenna, FFT bin) so a test can check exactly which antennas
and subcarriers the importer picked: real = antenna * 10000 + bin, imag = -record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.data.tfrecord import encode_example, encode_tensor, write_records

# Array 0: a 2x4 array; array 1: 4 rows x 8 columns with one unused slot (-1).
ARRAY0 = [[3, 0, 5, 1], [7, 2, 6, 4]]
ARRAY1 = [list(range(8 + 8 * r, 16 + 8 * r)) for r in range(4)]
ARRAY1[3][7] = -1
N_ANT = 8 + 31


def write_spec(path: Path) -> Path:
    spec = {
        "frequency": 1.272e9,
        "bandwidth": 50e6,
        "antennas": [
            {"assignments": ARRAY0, "location": [1.0, -2.0, 1.5]},
            {"assignments": ARRAY1},
        ],
    }
    path.write_text(json.dumps(spec))
    return path


def record(
    index: int, time: float, *, csi_shape: tuple[int, ...] = (N_ANT, 1024, 2), snr: bool = True
) -> bytes:
    csi = np.zeros(csi_shape, np.float32)
    if csi_shape == (N_ANT, 1024, 2):
        csi[..., 0] = np.arange(N_ANT)[:, None] * 10000 + np.arange(1024)[None, :]
        csi[..., 1] = -index
    features: dict[str, Any] = {
        "csi": [encode_tensor(csi)],
        "pos-tachy": [encode_tensor(np.array([index, 2.0 * index, 1.1], np.float64))],
        "time": np.float32(time),
        "cfo": [encode_tensor(np.zeros(N_ANT, np.float32))],
        "gt-interp-age-tachy": np.float32(0.01),
    }
    if snr:
        features["snr"] = [encode_tensor(np.full(N_ANT, 100.0, np.float32))]
    return encode_example(features)


def write_file(path: Path, times: list[float], first_index: int = 0, **kwargs: Any) -> Path:
    write_records(path, [record(first_index + i, t, **kwargs) for i, t in enumerate(times)])
    return path
