"""The transfer probe: ridge heads on frozen features, scored on held-out samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.training.toychannel import toy_fingerprints
from training.nets import Backbone, BackboneConfig
from training.probe import TransferProbe, ridge_predict


def test_ridge_recovers_a_linear_map_and_ignores_noise_features() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 30))
    w = np.zeros((30, 2))
    w[:3] = rng.standard_normal((3, 2))
    y = x @ w + 5.0 + 0.01 * rng.standard_normal((200, 2))
    x_new = rng.standard_normal((50, 30))
    pred = ridge_predict(x, y, x_new)
    assert np.abs(pred - (x_new @ w + 5.0)).max() < 0.1


def test_ridge_on_pure_noise_falls_back_to_the_mean() -> None:
    """Leave-one-out picks the strongest ridge when features carry nothing: ~ the mean."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((60, 40)), rng.standard_normal((60, 2))
    pred = ridge_predict(x, y, rng.standard_normal((20, 40)))
    assert np.abs(pred - y.mean(0)).max() < 0.2


class _Identityish(nn.Module):
    """Features = the raw first 64 CSI values: a backbone that keeps the geometry."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        return csi.flatten(1)[:, :64] * 100 + self.p


class _Blind(_Identityish):
    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(csi), 64, generator=torch.Generator().manual_seed(0)) + self.p


def test_probe_ranks_an_informative_backbone_above_a_blind_one() -> None:
    envs = {
        "a": toy_fingerprints(300, (0.0, 0.0), seed=1),
        "b": toy_fingerprints(300, (20.0, 10.0), seed=2),
    }
    probe = TransferProbe.from_fingerprints(envs, labels=150, seed=0)
    assert probe.names == ["a", "b"]
    good, blind = probe(_Identityish()), probe(_Blind())
    assert set(good) == {"a", "b"}
    assert probe.score(_Identityish()) < 0.8 * probe.score(_Blind())
    assert all(good[k] < blind[k] for k in good)
    # Deterministic: the same backbone gets the same score.
    assert probe(_Identityish()) == good


def test_probe_on_a_real_backbone_and_bad_sizes() -> None:
    envs = {"a": toy_fingerprints(80, (0.0, 0.0), seed=1)}
    probe = TransferProbe.from_fingerprints(envs, labels=40, seed=0, max_test=20)
    assert len(probe.sets[0].test) == 20
    me = probe(Backbone(BackboneConfig(block_channels=((4, 4), (4, 4))), seed=0))
    assert 0.0 < me["a"] < 30.0
    with pytest.raises(ValueError, match="has 80 samples; expected more than the 80"):
        TransferProbe.from_fingerprints(envs, labels=80, seed=0)
    with pytest.raises(ValueError, match="at least one held-out"):
        TransferProbe([])
