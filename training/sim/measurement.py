"""Measurement realism on top of ray-traced channels: what a real channel sounder adds.

Noise-free ray-traced CSI is easier to fit than measured CSI; training on it would
flatter every method. Each effect is a parameter with a sensible default, and all
randomness comes from the caller's seeded `numpy.random.Generator`, so the same
seed gives bit-identical noise, offsets and SNRs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from training.data.schema import BANDWIDTH_HZ, N_ANTENNAS
from training.sim.raytrace import subcarrier_offsets_hz

BOLTZMANN_DBM_PER_HZ = -174.0
"""Thermal noise density at room temperature."""

TIMING_CONVENTIONS = {
    "absolute": "the propagation delay stays in the CSI: a receiver locked to the "
    "transmitter's clock (the simulator's default; the phase ramp over subcarriers "
    "carries the time of arrival)",
    "first-path": "the delay of the first detectable path is removed: a receiver that "
    "synchronises to the first arriving path (no absolute time of arrival in the CSI)",
    "random": "first path removed, then a uniform offset in [0, timing_window_s) per "
    "sample: a receiver whose FFT window starts anywhere before the first path",
}
"""Receiver timing conventions: what delay the linear phase over subcarriers encodes."""


@dataclass(frozen=True)
class MeasurementConfig:
    """How the sounder corrupts the channel.

    SNR: with `snr_db` unset, each sample's SNR follows from its received power
    (`tx_power_dbm` + path gain) against thermal noise over the band plus
    `noise_figure_db`, capped at `max_snr_db` (real front ends never get cleaner
    than their own distortion); with `snr_db` set, every sample gets that SNR.
    """

    tx_power_dbm: float = 0.0
    noise_figure_db: float = 9.0
    max_snr_db: float = 30.0
    snr_db: float | None = None
    common_phase_offset: bool = True
    """Uniform random phase per sample: unsynchronised oscillators."""
    timing_offset_std_s: float = 2e-9
    """Gaussian sync error per sample, a linear phase across the subcarriers."""
    height_jitter_std_m: float = 0.0
    """Gaussian spread of the UE antenna height around the area height (applied before tracing)."""
    timing: str = "absolute"
    """Timing convention of the receiver (see TIMING_CONVENTIONS); the Gaussian
    `timing_offset_std_s` error comes on top of each."""
    timing_window_s: float = 200e-9
    """`timing="random"`: the uniform offset's range [0, window) after the first path."""
    antenna_phase_deg: tuple[float, ...] = ()
    """Fixed per-antenna phase errors (an uncalibrated array), 8 values or none."""
    min_snr_db: float | None = None
    """Samples below this SNR are not detected (a receiver cannot synchronise to them)
    and are dropped by the generator; None keeps every sample."""

    def __post_init__(self) -> None:
        if self.timing not in TIMING_CONVENTIONS:
            raise ValueError(
                f"timing: expected one of {sorted(TIMING_CONVENTIONS)}, got {self.timing!r}"
            )
        if not 0 <= self.timing_window_s < 2e-6 or not math.isfinite(self.timing_window_s):
            raise ValueError(
                f"timing_window_s: expected in [0, 2e-6) s (the subcarrier spacing's "
                f"unambiguous range), got {self.timing_window_s}"
            )
        if len(self.antenna_phase_deg) not in (0, N_ANTENNAS) or not all(
            math.isfinite(v) for v in self.antenna_phase_deg
        ):
            raise ValueError(
                f"antenna_phase_deg: expected {N_ANTENNAS} finite degrees or none, "
                f"got {self.antenna_phase_deg}"
            )
        for name in ("noise_figure_db", "timing_offset_std_s", "height_jitter_std_m"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite value >= 0, got {getattr(self, name)}")
        for name in ("tx_power_dbm", "max_snr_db"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)}")
        for name in ("snr_db", "min_snr_db"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number or None, got {value}")

    @property
    def noise_dbm(self) -> float:
        """Noise power over the 50 MHz band at the receiver input."""
        return BOLTZMANN_DBM_PER_HZ + 10 * math.log10(BANDWIDTH_HZ) + self.noise_figure_db

    def to_dict(self) -> dict[str, Any]:
        """All settings, for the output file's `source` attribute."""
        return asdict(self)


def channel_power_db(cfr: npt.NDArray[np.complexfloating[Any, Any]]) -> npt.NDArray[np.float64]:
    """Mean |H|^2 over antennas and subcarriers per sample, in dB (path gain; -inf for zero CSI)."""
    power = np.mean(np.abs(cfr.astype(np.complex128)) ** 2, axis=(1, 2))
    with np.errstate(divide="ignore"):
        return np.asarray(10 * np.log10(power), dtype=np.float64)


def measure(
    cfr: npt.NDArray[np.complex64],
    config: MeasurementConfig,
    rng: np.random.Generator,
    first_delay_s: npt.NDArray[np.float64] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Noise, phase and timing offsets applied to channels [n, 8, 103].

    Returns `csi` float32 [n, 8, 103, 2] (real, imag) and the per-sample `snr_db` float32 [n].
    Samples with zero CSI are refused: the caller must not place UEs where no path arrives.
    `first_delay_s` [n] (the first detectable path's delay) is needed unless
    `config.timing` is ``absolute``.
    """
    if cfr.ndim != 3:
        raise ValueError(f"cfr: expected [n, antennas, subcarriers], got shape {cfr.shape}")
    n = cfr.shape[0]
    if config.timing != "absolute" and (first_delay_s is None or len(first_delay_s) != n):
        raise ValueError(f"timing {config.timing!r}: needs the first path's delay of each sample")
    gain_db = channel_power_db(cfr)
    if np.any(~np.isfinite(gain_db)):
        bad = np.flatnonzero(~np.isfinite(gain_db))
        raise ValueError(f"cfr: samples {bad[:10].tolist()} have zero CSI (no path reached the UE)")
    if config.snr_db is None:
        snr_db = np.minimum(config.tx_power_dbm + gain_db - config.noise_dbm, config.max_snr_db)
    else:
        snr_db = np.full(n, config.snr_db)
    # Fixed draw order (phase, timing, noise) so the stream maps to the same effects every run.
    phase: npt.NDArray[np.float64] = (
        np.asarray(rng.uniform(0.0, 2 * np.pi, n)) if config.common_phase_offset else np.zeros(n)
    )
    dt: npt.NDArray[np.float64] = (
        np.asarray(rng.normal(0.0, config.timing_offset_std_s, n))
        if config.timing_offset_std_s > 0
        else np.zeros(n)
    )
    if config.timing != "absolute":
        assert first_delay_s is not None
        dt = dt - np.asarray(first_delay_s, dtype=np.float64)
    if config.timing == "random":  # drawn only here, so the other conventions' streams stay
        dt = dt + rng.uniform(0.0, config.timing_window_s, n)
    freqs = subcarrier_offsets_hz()
    rot = np.exp(1j * (phase[:, None] - 2 * np.pi * dt[:, None] * freqs[None, :]))  # [n, sc]
    h = cfr.astype(np.complex128) * rot[:, None, :]
    if config.antenna_phase_deg:
        h = h * np.exp(1j * np.radians(np.asarray(config.antenna_phase_deg)))[None, :, None]
    noise_var = 10 ** ((gain_db - snr_db) / 10)  # per complex entry
    noise = rng.standard_normal((*h.shape, 2)) * np.sqrt(noise_var / 2)[:, None, None, None]
    csi = np.stack([h.real, h.imag], axis=-1) + noise
    return csi.astype(np.float32), snr_db.astype(np.float32)
