"""The ray tracer's own arithmetic (no solver): the first detectable path's delay."""

from __future__ import annotations

import numpy as np

from training.sim.raytrace import _first_detectable_delay


def test_first_detectable_delay_per_receiver_and_without_paths() -> None:
    # rx 0: a weak early path (-40 dB) and a strong later one; rx 1: no valid path.
    a = np.zeros((2, 8, 2), dtype=np.complex128)
    a[0, :, 0], a[0, :, 1] = 0.01, 1.0
    tau = np.array([[10e-9, 30e-9], [5e-9, 7e-9]])
    assert np.allclose(_first_detectable_delay(a, tau), [30e-9, 0.0])
    # A chunk in which the solver kept no path at all (zero-size path axis) gives 0s.
    empty = _first_detectable_delay(np.zeros((3, 8, 0), np.complex128), np.zeros((3, 0)))
    assert empty.shape == (3,) and not empty.any()
