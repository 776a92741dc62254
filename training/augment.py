"""Augmenting a site's labelled CSI: perturbed copies of each training fingerprint.

A new site's few hundred labels are a thin sample of its measurement chain: one SNR
distribution, one calibration state of the array. Each labelled fingerprint also enters
training as ``copies`` perturbed copies at the same position:

- white noise at an SNR drawn from U(10, 30) dB of the fingerprint's own mean power per
  entry (simulated and real front ends reach 15-35 dB at best; a site's SNR varies);
- a complex gain error per antenna, amplitude N(0, 0.5 dB) and phase N(0, 5 deg) (an
  array's calibration drifts; the phase-delay inputs remove only what all antennas share).

The values were set before they were measured, not tuned. With 3 copies at 500 labels the
shipped backbone's error fell to 0.86x (the labs, 10 of 10 target-seeds lower) and 0.87x
(8 held-out scenes, 7 of 8), 0.83x / 0.89x against exact copies of the same size (the
control for the longer budget a larger set then got); scratch gained more (0.78x / 0.75x),
so part of what augmentation gives, the backbone gave already
(docs/results/transfer/augment). The step budget (evaluation interval, epoch cap,
patience) counts passes over the labelled fingerprints, as without copies: counted over
the 4x set it gave the same error for 3.3x the time. Validation stays clean, and the
head's neighbour terms use the labelled fingerprints alone (copies would be each other's
nearest neighbours).
With many labels the noise costs more than it teaches (lab-los at 3,000 labels: 1.11-1.31x
the error), so sites with `TrainConfig.augment_max_labels` (1,000) or more train on their
labels alone (`site_copies`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.config import AUGMENT_MAX_COPIES, TrainConfig
from training.data.fingerprints import Fingerprints

__all__ = ["GAIN_DB", "PHASE_DEG", "SNR_DB", "augmented", "site_copies", "site_training_set"]

SNR_DB = (10.0, 30.0)
"""The added noise's SNR range (dB of each fingerprint's own mean power per entry)."""
GAIN_DB = 0.5
"""Standard deviation of each antenna's amplitude error (dB)."""
PHASE_DEG = 5.0
"""Standard deviation of each antenna's phase error (degrees)."""
_SEED_OFFSET = 7919
"""Keeps the perturbations' stream apart from the split's and the initialisation's."""


def augmented(train: Fingerprints, copies: int, seed: int) -> Fingerprints:
    """``train`` followed by ``copies`` perturbed copies of every fingerprint (module
    docstring), every other field repeated; ``copies`` 0 returns ``train`` itself. The
    same seed gives the same copies."""
    if not 0 <= copies <= AUGMENT_MAX_COPIES:
        raise ValueError(f"copies={copies}, expected 0-{AUGMENT_MAX_COPIES}")
    if copies == 0 or len(train) == 0:
        return train
    rng = np.random.default_rng(seed + _SEED_OFFSET)
    h = train.csi[..., 0].astype(np.float64) + 1j * train.csi[..., 1].astype(np.float64)
    n, antennas = h.shape[0], h.shape[1]
    power = np.mean(np.abs(h) ** 2, axis=(1, 2), keepdims=True)  # [n, 1, 1]
    parts = [train]
    for _ in range(copies):
        snr = 10 ** (rng.uniform(*SNR_DB, size=(n, 1, 1)) / 10)
        noise = rng.standard_normal(h.shape) + 1j * rng.standard_normal(h.shape)
        noise *= np.sqrt(power / snr / 2)
        gain = 10 ** (rng.normal(0.0, GAIN_DB, size=(n, antennas, 1)) / 20)
        phase = np.exp(1j * np.deg2rad(rng.normal(0.0, PHASE_DEG, size=(n, antennas, 1))))
        g = h * gain * phase + noise
        csi = np.stack([g.real, g.imag], axis=-1).astype(np.float32)
        parts.append(dataclasses.replace(train, csi=csi))
    return Fingerprints.concat(parts)


def site_copies(config: TrainConfig, labelled: int) -> int:
    """The copies a site with ``labelled`` fingerprints (training + validation) trains on:
    ``config.augment_copies`` below ``config.augment_max_labels``, else none."""
    cap = config.augment_max_labels
    return config.augment_copies if cap is None or labelled < cap else 0


def site_training_set(train: Fingerprints, val: Fingerprints, config: TrainConfig) -> Fingerprints:
    """What a site with these splits trains on: ``train`` and the copies `site_copies`
    gives it, drawn from ``config.seed`` (never ``val``: validation stays clean)."""
    return augmented(train, site_copies(config, len(train) + len(val)), config.seed)
