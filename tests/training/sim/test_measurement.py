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


def _delayed(delays_s: np.ndarray) -> np.ndarray:
    """Single-path channels with the given delays: a pure phase ramp over the subcarriers."""
    from training.sim.raytrace import subcarrier_offsets_hz

    f = subcarrier_offsets_hz()
    ramp = np.exp(-2j * np.pi * delays_s[:, None] * f[None, :])
    return np.broadcast_to(ramp[:, None, :], (len(delays_s), 8, 103)).astype(np.complex64) * 1e-3


def _delay_estimate(csi: np.ndarray) -> np.ndarray:
    from training.data.schema import SUBCARRIER_SPACING_HZ

    h = csi[..., 0] + 1j * csi[..., 1]
    slope = np.angle(np.sum(h[:, :, 1:] * np.conj(h[:, :, :-1]), axis=(1, 2)))
    return -slope / (2 * np.pi * SUBCARRIER_SPACING_HZ)


def test_timing_conventions() -> None:
    delays = np.linspace(20e-9, 300e-9, 50)
    h = _delayed(delays)
    quiet = {"snr_db": 200.0, "timing_offset_std_s": 0.0}
    absolute, _ = measure(h, MeasurementConfig(**quiet), np.random.default_rng(0))
    np.testing.assert_allclose(_delay_estimate(absolute), delays, atol=1e-11)
    first, _ = measure(
        h,
        MeasurementConfig(timing="first-path", **quiet),
        np.random.default_rng(0),
        first_delay_s=delays,
    )
    np.testing.assert_allclose(_delay_estimate(first), 0.0, atol=1e-11)  # no time of arrival
    cfg = MeasurementConfig(timing="random", timing_window_s=100e-9, **quiet)
    rand, _ = measure(h, cfg, np.random.default_rng(0), first_delay_s=delays)
    offsets = _delay_estimate(rand)
    assert offsets.min() >= 0.0 and offsets.max() < 100e-9 and offsets.std() > 20e-9
    assert abs(np.corrcoef(offsets, delays)[0, 1]) < 0.5
    with pytest.raises(ValueError, match="first path"):
        measure(h, MeasurementConfig(timing="first-path"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="timing"):
        MeasurementConfig(timing="gps")


def test_antenna_phase_errors_are_fixed_per_antenna() -> None:
    h = _channels(30)
    errors = (0.0, 10.0, -20.0, 30.0, 0.0, 5.0, 90.0, -90.0)
    base = {"snr_db": 200.0, "common_phase_offset": False, "timing_offset_std_s": 0.0}
    plain, _ = measure(h, MeasurementConfig(**base), np.random.default_rng(0))
    skewed, _ = measure(
        h, MeasurementConfig(antenna_phase_deg=errors, **base), np.random.default_rng(0)
    )
    a = plain[..., 0] + 1j * plain[..., 1]
    b = skewed[..., 0] + 1j * skewed[..., 1]
    got = np.degrees(np.angle(np.mean(b * np.conj(a), axis=(0, 2))))
    np.testing.assert_allclose(got, errors, atol=1e-3)
    with pytest.raises(ValueError, match="antenna_phase_deg"):
        MeasurementConfig(antenna_phase_deg=(1.0, 2.0))


def test_default_config_keeps_the_historic_draws() -> None:
    # The fixed presets' data must not change: the default draws phase, timing, noise only.
    h = _channels(5)
    csi, _ = measure(h, MeasurementConfig(), np.random.default_rng(9))
    rng = np.random.default_rng(9)
    phase = rng.uniform(0.0, 2 * np.pi, 5)
    dt = rng.normal(0.0, 2e-9, 5)
    from training.sim.raytrace import subcarrier_offsets_hz

    rot = np.exp(1j * (phase[:, None] - 2 * np.pi * dt[:, None] * subcarrier_offsets_hz()))
    expect = h.astype(np.complex128) * rot[:, None, :]
    noise = csi[..., 0] + 1j * csi[..., 1] - expect
    assert np.sqrt(np.mean(np.abs(noise) ** 2)) < 0.1 * np.sqrt(np.mean(np.abs(h) ** 2))
