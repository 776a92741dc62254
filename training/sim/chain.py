"""Domain randomisation of the measurement chain: each (scene, BS) gets its own radio.

Real sites differ in more than geometry: the array's element pattern, the SNR
distribution, the receiver's timing convention, oscillator phases, an array
mounted slightly off. A backbone that has seen only one chain may lean on its
quirks (the simulator's absolute time of arrival is one: see docs/data.md). A
`RadioChain` is one draw of all of these, plain data recorded in the output's
`source` attribute; `sample_chain` draws it from a seeded generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.data.schema import CARRIER_HZ, N_ANTENNAS
from training.sim.measurement import MeasurementConfig
from training.sim.raytrace import BSRadio

PATTERNS = ("tr38901", "iso", "dipole")
TIMINGS = ("absolute", "first-path", "random")


@dataclass(frozen=True)
class RadioChain:
    """The radio of one BS: what is traced (`radio`) and how it is measured (`measurement`)."""

    radio: BSRadio = field(default_factory=BSRadio)
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RadioChain:
        radio = dict(data.get("radio", {}))
        radio["orientation_jitter_deg"] = tuple(radio.get("orientation_jitter_deg", (0, 0, 0)))
        meas = dict(data.get("measurement", {}))
        meas["antenna_phase_deg"] = tuple(meas.get("antenna_phase_deg", ()))
        return cls(radio=BSRadio(**radio), measurement=MeasurementConfig(**meas))


@dataclass(frozen=True)
class ChainRandomisation:
    """The ranges a randomised chain is drawn from (uniform unless said otherwise)."""

    patterns: tuple[str, ...] = PATTERNS
    timings: tuple[str, ...] = TIMINGS
    """Drawn with equal probability: absolute, first-path synchronised, random offset."""
    carrier_jitter: float = 0.05
    """Carrier = 1.272 GHz x (1 + U(-j, j)); the array stays half-wavelength at it."""
    orientation_jitter_std_deg: float = 5.0
    """Gaussian yaw, pitch and roll error of the mount."""
    tx_power_dbm: tuple[float, float] = (-15.0, 15.0)
    noise_figure_db: tuple[float, float] = (5.0, 12.0)
    max_snr_db: tuple[float, float] = (15.0, 35.0)
    timing_offset_std_s: tuple[float, float] = (0.0, 5e-9)
    timing_window_s: tuple[float, float] = (50e-9, 400e-9)
    common_phase_probability: float = 0.8
    """Share of BSs whose samples get a random common phase (most real sounders)."""
    antenna_phase_probability: float = 0.5
    """Share of BSs with an uncalibrated array: fixed per-antenna phase errors ..."""
    antenna_phase_std_deg: tuple[float, float] = (0.0, 20.0)
    """... Gaussian with a standard deviation drawn from this range."""
    min_snr_db: float = -10.0
    """Detection limit: weaker samples are dropped (~29 dB of processing gain over the
    824 pilots lets a receiver synchronise down to about this SNR per pilot)."""


def nominal_chain() -> RadioChain:
    """The chain of the fixed scenes and presets: what `generate` uses without one."""
    return RadioChain()


def sample_chain(rng: np.random.Generator, spec: ChainRandomisation) -> RadioChain:
    """One randomised chain; the draws happen in a fixed order, so a seed fixes the chain."""
    pattern = str(spec.patterns[int(rng.integers(len(spec.patterns)))])
    carrier = CARRIER_HZ * (1.0 + float(rng.uniform(-spec.carrier_jitter, spec.carrier_jitter)))
    yaw, pitch, roll = (float(v) for v in rng.normal(0.0, spec.orientation_jitter_std_deg, 3))
    timing = str(spec.timings[int(rng.integers(len(spec.timings)))])
    tx_power = float(rng.uniform(*spec.tx_power_dbm))
    noise_figure = float(rng.uniform(*spec.noise_figure_db))
    max_snr = float(rng.uniform(*spec.max_snr_db))
    timing_std = float(rng.uniform(*spec.timing_offset_std_s))
    window = float(rng.uniform(*spec.timing_window_s))
    common_phase = bool(rng.uniform() < spec.common_phase_probability)
    uncalibrated = bool(rng.uniform() < spec.antenna_phase_probability)
    std = float(rng.uniform(*spec.antenna_phase_std_deg))
    errors = rng.normal(0.0, std, N_ANTENNAS)
    return RadioChain(
        radio=BSRadio(
            pattern=pattern,
            carrier_hz=round(carrier, 0),
            orientation_jitter_deg=(round(yaw, 3), round(pitch, 3), round(roll, 3)),
        ),
        measurement=MeasurementConfig(
            tx_power_dbm=round(tx_power, 3),
            noise_figure_db=round(noise_figure, 3),
            max_snr_db=round(max_snr, 3),
            common_phase_offset=common_phase,
            timing_offset_std_s=timing_std,
            timing=timing,
            timing_window_s=window,
            antenna_phase_deg=tuple(round(float(v), 3) for v in errors) if uncalibrated else (),
            min_snr_db=spec.min_snr_db,
        ),
    )
