"""Perturbed copies of a site's labelled fingerprints (`training.augment`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import training.calibration as calibration
from tests.training.fast import FAST
from tests.training.toychannel import toy_fingerprints
from training.augment import SNR_DB, augmented, site_copies
from training.config import AUGMENT_MAX_COPIES, TrainConfig
from training.data.fingerprints import Fingerprints
from training.data.splits import split_train_val
from training.fit import Task
from training.nets import Backbone
from training.transfer import train_target

TARGET = toy_fingerprints(120, (5.0, -2.0), seed=7, size=(8.0, 6.0))


def _complex(csi: np.ndarray) -> np.ndarray:
    return csi[..., 0].astype(np.float64) + 1j * csi[..., 1].astype(np.float64)


def test_copies_follow_the_originals_at_their_positions() -> None:
    data = dataclasses.replace(TARGET, snr_db=np.full(len(TARGET), 20.0, np.float32))
    out = augmented(data, 3, seed=0)
    n = len(data)
    assert len(out) == 4 * n and out.csi.dtype == np.float32
    assert np.array_equal(out.csi[:n], data.csi)  # the originals first, untouched
    assert np.array_equal(out.pos, np.tile(data.pos, (4, 1)))
    assert out.snr_db is not None and len(out.snr_db) == 4 * n  # other fields repeated
    for k in range(1, 4):
        assert not np.allclose(out.csi[k * n : (k + 1) * n], data.csi)
    assert augmented(data, 0, seed=0) is data


def test_the_perturbation_is_as_documented() -> None:
    h = _complex(TARGET.csi)
    g = _complex(augmented(TARGET, 1, seed=3).csi[len(TARGET) :])
    rel_db = 10 * np.log10(
        np.mean(np.abs(g - h) ** 2, axis=(1, 2)) / np.mean(np.abs(h) ** 2, axis=(1, 2))
    )
    # the noise alone spans -30..-10 dB of the fingerprint's power; the gain and phase
    # errors (0.5 dB, 5 degrees per antenna) add about -21 dB
    assert -SNR_DB[1] - 1 < rel_db.min() and rel_db.max() < -SNR_DB[0] + 1
    assert np.median(rel_db) < -15.0


def test_the_same_seed_gives_the_same_copies() -> None:
    a, b = augmented(TARGET, 2, seed=5), augmented(TARGET, 2, seed=5)
    assert np.array_equal(a.csi, b.csi)
    assert not np.array_equal(a.csi, augmented(TARGET, 2, seed=6).csi)


def test_copies_outside_the_range_are_refused() -> None:
    with pytest.raises(ValueError, match="copies"):
        augmented(TARGET, -1, seed=0)
    with pytest.raises(ValueError, match="copies"):
        augmented(TARGET, AUGMENT_MAX_COPIES + 1, seed=0)
    with pytest.raises(ValueError, match="augment_copies"):
        TrainConfig(augment_copies=AUGMENT_MAX_COPIES + 1)


def _trained_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The training-set size of every task built from here on (appended as they come)."""
    sizes: list[int] = []
    from_fingerprints = Task.from_fingerprints

    def spy(name: str, head: Any, train: Fingerprints, val: Fingerprints) -> Task:
        sizes.append(len(train))
        return from_fingerprints(name, head, train, val)

    monkeypatch.setattr(Task, "from_fingerprints", staticmethod(spy))
    return sizes


def test_target_training_sees_the_copies_and_the_head_keeps_the_originals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    train, val = split_train_val(TARGET, 0.45, 0)
    monkeypatch.setattr(calibration, "REF_MIN_VAL", 1)  # the neighbour terms on
    monkeypatch.setattr(calibration, "REF_BLENDS", (0.5,))
    sizes = _trained_sizes(monkeypatch)
    cfg = FAST.replace(patience=2, augment_copies=2)
    budget = cfg.budget(len(train))  # two passes over the labelled fingerprints
    for backbone in (Backbone(seed=0), None):  # a site's modes and scratch
        sizes.clear()
        r = train_target(backbone, train, val, cfg, mode="finetune", quiet=True)
        assert set(sizes) == {3 * len(train)}  # the copies were trained on
        # ... for the labelled set's budget (over the copies: the same error, 3.3x the time)
        assert budget.max_steps < cfg.budget(3 * len(train)).max_steps
        assert sum(r.report.steps.values()) <= budget.max_steps
        assert r.model.head.ref_features.shape[0] == len(train)  # the originals alone


def test_sites_with_many_labels_train_without_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(augment_copies=3, augment_max_labels=100)
    assert site_copies(cfg, 99) == 3 and site_copies(cfg, 100) == 0
    assert site_copies(cfg.replace(augment_max_labels=None), 10**6) == 3
    with pytest.raises(ValueError, match="augment_max_labels"):
        TrainConfig(augment_max_labels=0)
    train, val = split_train_val(TARGET, 0.45, 0)
    many = FAST.replace(patience=2, augment_copies=2, augment_max_labels=len(train) + len(val))
    sizes = _trained_sizes(monkeypatch)
    for backbone in (Backbone(seed=0), None):
        sizes.clear()
        train_target(backbone, train, val, many, mode="finetune", quiet=True)
        assert set(sizes) == {len(train)}  # the labelled set alone
