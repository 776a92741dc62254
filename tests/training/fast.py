"""The small target-training recipe the training tests start from: a few passes over toy
data and no augmented copies (`tests/training/test_augment.py` covers those), so a test
adapts in seconds."""

from __future__ import annotations

from training.config import TrainConfig

FAST = TrainConfig(
    loss="nll",
    epochs=2,
    min_steps=0,
    patience=1,
    batch_size=32,
    lr=2e-3,
    val_fraction=0.25,
    augment_copies=0,
)
