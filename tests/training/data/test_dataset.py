from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.training.data.conftest import make_fingerprints
from training.data.dataset import FingerprintDataset
from training.data.fingerprints import EnvironmentMeta, open_environment, write_environment


def test_in_memory_items_and_tensors() -> None:
    data = make_fingerprints(30, seed=1)
    ds = FingerprintDataset(data)
    assert len(ds) == 30
    csi, pos = ds[4]
    assert csi.shape == (8, 103, 2) and csi.dtype == torch.float32
    assert pos.shape == (2,) and pos.dtype == torch.float32
    np.testing.assert_array_equal(pos.numpy(), data.pos[4])
    all_csi, all_pos = ds.as_tensors()
    assert all_csi.data_ptr() == ds.as_tensors()[0].data_ptr()  # no copy without a subset
    assert all_csi.shape == (30, 8, 103, 2) and all_pos.shape == (30, 2)


def test_subset_indices_select_rows() -> None:
    data = make_fingerprints(30, seed=2)
    idx = np.array([3, 17, 5])
    ds = FingerprintDataset(data, idx)
    assert len(ds) == 3
    np.testing.assert_array_equal(ds[1][0].numpy(), data.csi[17])
    _, pos = ds.as_tensors()
    np.testing.assert_array_equal(pos.numpy(), data.pos[idx])
    assert set(ds.extras()) == {"los", "snr_db"}
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError, match="indices must lie"):
        FingerprintDataset(data, [0, 30])


def test_lazy_source_matches_memory_through_dataloader(tmp_path: Path) -> None:
    data = make_fingerprints(300, seed=3)
    path = tmp_path / "f.h5"
    write_environment(path, "env", data, EnvironmentMeta())
    idx = np.arange(0, 300, 3)
    with open_environment(path, "env") as env:
        lazy = FingerprintDataset(env, idx)
        memory = FingerprintDataset(data, idx)
        np.testing.assert_array_equal(lazy[7][0].numpy(), memory[7][0].numpy())
        loader = DataLoader(
            lazy, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        seen = torch.cat([pos for _, pos in loader])
        assert seen.shape == (100, 2)
        expected = torch.from_numpy(data.pos[idx])
        assert torch.equal(seen.sort(dim=0).values, expected.sort(dim=0).values)
        csi, _ = lazy.as_tensors()
        assert torch.equal(csi, memory.as_tensors()[0])


def test_rejects_wrong_source() -> None:
    with pytest.raises(TypeError, match="Fingerprints or LazyEnvironment"):
        FingerprintDataset(np.zeros((3, 8, 103, 2)))  # type: ignore[arg-type]
