"""Transfer validation: how well a frozen backbone serves scenes it never trained on.

MEML's own validation loss measures the fit to its *source* environments, and
the product question is a different one: does the backbone help a new site? On
small pilots the two disagreed (removing the timing ramp made the source error
worse and the held-out error better), so a source-loss checkpoint can be the
wrong one. The probe asks the product question directly, cheaply enough to ask
at every validation: on each held-out environment it fits a fresh linear head
(ridge regression from the backbone's 128 features to the position, the
regulariser chosen by exact leave-one-out on the labelled part) on a few
labelled samples and measures the mean error on the rest.

A linear head is not the MLP head a site gets, but it is deterministic, has no
training loop to tune and takes milliseconds, and what it ranks, how linearly
the features lay out position, is what the MLP head builds on. The held-out
environments must come from scenes that are neither sources nor test targets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from training.data.fingerprints import Fingerprints
from training.data.splits import fraction_subset

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Ridge strengths tried (on standardised features, per sample): the LOO error picks one."""


@dataclass(frozen=True)
class ProbeSet:
    """One held-out environment: a few labelled samples to fit on, the rest to score on."""

    name: str
    labelled: Fingerprints
    test: Fingerprints


class TransferProbe:
    """Mean ME of fresh linear heads on held-out environments, as a function of a backbone."""

    def __init__(self, sets: list[ProbeSet], *, batch_size: int = 1024) -> None:
        if not sets:
            raise ValueError("a transfer probe needs at least one held-out environment")
        for s in sets:
            if len(s.labelled) < 4 or len(s.test) < 1:
                raise ValueError(
                    f"probe environment {s.name!r}: {len(s.labelled)} labelled and "
                    f"{len(s.test)} test samples; expected at least 4 and 1"
                )
        self.sets = sets
        self.batch_size = batch_size

    @classmethod
    def from_fingerprints(
        cls, envs: Mapping[str, Fingerprints], labels: int, seed: int, *, max_test: int = 500
    ) -> TransferProbe:
        """Per environment: a seeded `labels` samples to fit on, up to `max_test` of the rest."""
        if labels < 4:
            raise ValueError(f"probe labels={labels}: expected at least 4")
        sets = []
        for k, (name, data) in enumerate(sorted(envs.items())):
            n = len(data)
            if n <= labels:
                raise ValueError(
                    f"probe environment {name!r} has {n} samples; expected more than "
                    f"the {labels} labelled ones"
                )
            order = np.random.default_rng(seed + k).permutation(n)
            rest = order[labels:]
            if len(rest) > max_test:
                rest = np.asarray(fraction_subset(rest, max_test / len(rest), seed + k))
            sets.append(ProbeSet(name, data.subset(order[:labels]), data.subset(rest)))
        return cls(sets)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sets]

    @torch.no_grad()
    def __call__(self, backbone: nn.Module) -> dict[str, float]:
        """ME per held-out environment (metres); the backbone is left in eval mode."""
        backbone.eval()
        dev = next(backbone.parameters()).device
        out: dict[str, float] = {}
        for s in self.sets:
            fit_x = self._features(backbone, s.labelled, dev)
            test_x = self._features(backbone, s.test, dev)
            pred = ridge_predict(fit_x, s.labelled.pos.astype(np.float64), test_x)
            err = np.linalg.norm(pred - s.test.pos.astype(np.float64), axis=1)
            out[s.name] = float(err.mean())
        return out

    def score(self, backbone: nn.Module) -> float:
        """Mean ME over the held-out environments: the selector `training.fit` minimises."""
        return float(np.mean(list(self(backbone).values())))

    def _features(self, backbone: nn.Module, data: Fingerprints, dev: torch.device) -> np.ndarray:
        csi = torch.from_numpy(data.csi)
        parts = [
            backbone(csi[i : i + self.batch_size].to(dev)).double().cpu()
            for i in range(0, len(csi), self.batch_size)
        ]
        return torch.cat(parts).numpy()


def ridge_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Ridge regression of y on standardised x, strength chosen by exact leave-one-out.

    LOO residuals of ridge are closed-form, ``(y - ŷ) / (1 - h_ii)`` with the hat
    matrix's diagonal, so choosing the strength costs one eigendecomposition.
    """
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z, z_new = (x - mu) / sd, (x_new - mu) / sd
    y_mu = y.mean(0)
    yc = y - y_mu
    n = len(z)
    # Kernel form (n x n): cheap for the few hundred labels a probe has.
    gram = z @ z.T
    evals, evecs = np.linalg.eigh(gram)
    evals = np.clip(evals, 0.0, None)
    proj = evecs.T @ yc
    best: tuple[float, np.ndarray] | None = None
    for lam in RIDGE_GRID:
        shrink = evals / (evals + lam * n)
        fitted = evecs @ (shrink[:, None] * proj)
        hat_diag = (evecs**2) @ shrink
        loo = (yc - fitted) / np.clip(1.0 - hat_diag, 1e-6, None)[:, None]
        err = float(np.linalg.norm(loo, axis=1).mean())
        if best is None or err < best[0]:
            alpha = evecs @ (proj / (evals + lam * n)[:, None])
            best = (err, alpha)
    assert best is not None
    return np.asarray(z_new @ (z.T @ best[1]) + y_mu)
