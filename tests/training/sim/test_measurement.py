"""Measurement realism: exact under a seed, and the SNR it records is the SNR it applies."""

from __future__ import annotations

import numpy as np
import pytest

from training.sim.measurement import MeasurementConfig, channel_power_db, measure


def _channels(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, 8, 103)) + 1j * rng.standard_normal((n, 8, 103))
    return (h * 1e-3).astype(np.complex64)


def test_same_seed_is_bit_exact() -> None:
    h = _channels(20)
    a = measure(h, MeasurementConfig(), np.random.default_rng(5))
    b = measure(h, MeasurementConfig(), np.random.default_rng(5))
    c = measure(h, MeasurementConfig(), np.random.default_rng(6))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_fixed_snr_gives_that_noise_power() -> None:
    h = _channels(200)
    cfg = MeasurementConfig(snr_db=10.0, common_phase_offset=False, timing_offset_std_s=0.0)
    csi, snr = measure(h, cfg, np.random.default_rng(1))
    assert csi.shape == (200, 8, 103, 2) and csi.dtype == np.float32
    np.testing.assert_array_equal(snr, 10.0)
    noise = csi[..., 0] + 1j * csi[..., 1] - h
    ratio_db = 10 * np.log10(np.mean(np.abs(h) ** 2) / np.mean(np.abs(noise) ** 2))
    assert abs(ratio_db - 10.0) < 0.2


def test_physical_snr_follows_power_and_is_capped() -> None:
    h = _channels(4)
    h[1] *= 1e-3  # 60 dB weaker
    cfg = MeasurementConfig(tx_power_dbm=0.0, noise_figure_db=9.0, max_snr_db=30.0)
    _, snr = measure(h, cfg, np.random.default_rng(1))
    gain = channel_power_db(h)
    assert snr[0] == pytest.approx(30.0)  # capped
    assert snr[1] == pytest.approx(gain[1] - cfg.noise_dbm, abs=1e-3)


def test_offsets_keep_power_but_change_phase() -> None:
    h = _channels(10)
    cfg = MeasurementConfig(snr_db=200.0)  # effectively noise free
    csi, _ = measure(h, cfg, np.random.default_rng(2))
    out = csi[..., 0] + 1j * csi[..., 1]
    np.testing.assert_allclose(np.abs(out), np.abs(h), rtol=1e-4)
    assert not np.allclose(out, h, rtol=1e-2)


def test_zero_csi_and_bad_settings_are_refused() -> None:
    h = _channels(3)
    h[2] = 0
    with pytest.raises(ValueError, match="zero CSI"):
        measure(h, MeasurementConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="timing_offset_std_s"):
        MeasurementConfig(timing_offset_std_s=-1.0)
