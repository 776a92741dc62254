"""The cross-BS consistency check: each BS's view is the site's, together they are not."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.toychannel import toy_site
from training.consistency import (
    MIN_REFS,
    consistency_bytes,
    fit_consistency,
    read_consistency,
    spatial_by_bs,
)
from training.novelty import fit_novelty, spatial_statistics

SITE = toy_site(500, seed=0, drop=0.1)
FRESH = toy_site(400, seed=1, drop=0.0)


def _shuffled(spatial: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """Every BS's view of a different UE of the site: each alone is the site's."""
    rng = np.random.default_rng(seed)
    return {bs: z[rng.permutation(len(z))] for bs, z in spatial.items()}


def test_views_of_different_places_are_out_of_site_and_the_sites_own_are_not() -> None:
    n = len(SITE)
    model = fit_consistency([SITE.subset(np.arange(400)), SITE.subset(np.arange(400, n))])
    assert model is not None and len(model.refs) == n
    own = spatial_by_bs(FRESH)
    false_alarms = np.mean(model.score(own) > 1.0)
    detected = np.mean(model.score(_shuffled(own, seed=2)) > 1.0)
    assert false_alarms <= 0.02
    # the toy channel's spatial statistic is one steering vector per BS (its angle only),
    # so many shuffled triples still lie near some place: a third at least, not all
    assert detected >= 0.3
    # what a per-BS detector sees: one BS's shuffled views are its own distribution
    bs0 = spatial_statistics(SITE.station("bs0").csi)
    alone = fit_novelty(bs0[:400], bs0[400:], false_alarm=0.01)
    shuffled_bs0 = _shuffled(own, seed=2)["bs0"]
    assert np.mean(alone.distance(shuffled_bs0) > alone.threshold) <= 0.05


def test_each_set_of_two_or_more_bss_gets_a_threshold_and_one_bs_no_score() -> None:
    model = fit_consistency([SITE])
    assert model is not None
    assert sorted(model.thresholds) == ["bs0+bs1", "bs0+bs1+bs2", "bs0+bs2", "bs1+bs2"]
    own = spatial_by_bs(FRESH)
    assert (model.score({"bs1": own["bs1"]}) == 0.0).all()  # one BS: its own detector judges
    two = model.score({"bs0": own["bs0"], "bs2": own["bs2"]})
    assert (two > 0).all() and np.mean(two > 1.0) <= 0.03
    # rows where a BS did not hear (NaN) are scored with the BSs that did
    partial = {bs: z.copy() for bs, z in own.items()}
    partial["bs1"][:50] = np.nan
    np.testing.assert_allclose(model.score(partial)[:50], two[:50])
    assert model.summary()["sets"] == sorted(model.thresholds)


def test_the_same_upload_gives_the_same_thresholds() -> None:
    a, b = fit_consistency([SITE]), fit_consistency([SITE])
    assert a is not None and b is not None and a.thresholds == b.thresholds


def test_no_model_for_one_bs_or_too_few_ues() -> None:
    assert fit_consistency([SITE.only(["bs0"])]) is None
    assert fit_consistency([SITE.subset(np.arange(MIN_REFS - 10))]) is None
    two = toy_site(100, seed=3, stations={"bs0": (0.0, 0.0), "bs1": (8.0, 0.0)})
    with pytest.raises(ValueError, match="same base stations"):
        fit_consistency([SITE, two])


def test_bytes_round_trip_and_bad_files_are_refused() -> None:
    model = fit_consistency([SITE])
    assert model is not None
    back = read_consistency(consistency_bytes(model))
    own = spatial_by_bs(FRESH)
    np.testing.assert_allclose(back.score(own), model.score(own))
    assert back.stations == ("bs0", "bs1", "bs2") and back.neighbours == model.neighbours
    with pytest.raises(ValueError, match=r"x\.npz: not a consistency file"):
        read_consistency(b"not a zip", "x.npz")
    bad = model.__class__(model.stations, model.refs, model.center, model.scale, {"bs0+bs1": -1.0})
    with pytest.raises(ValueError, match="inconsistent"):
        read_consistency(consistency_bytes(bad))
    other = model.__class__(("bs0", "bs1"), model.refs, model.center, model.scale, {"bs0+bs1": 1.0})
    with pytest.raises(ValueError, match="inconsistent"):
        read_consistency(consistency_bytes(other))
    nan_center = model.__class__(
        model.stations, model.refs, model.center * np.nan, model.scale, model.thresholds
    )
    with pytest.raises(ValueError, match="inconsistent"):
        read_consistency(consistency_bytes(nan_center))
    # a file naming many stations is refused before its 2^K sets are enumerated
    many = tuple(f"bs{i}" for i in range(40))
    huge = model.__class__(many, model.refs, model.center, model.scale, {})
    with pytest.raises(ValueError, match="40 base stations"):
        read_consistency(consistency_bytes(huge))


def test_unknown_stations_and_bad_shapes_are_refused() -> None:
    model = fit_consistency([SITE])
    assert model is not None
    own = spatial_by_bs(FRESH)
    with pytest.raises(ValueError, match="unknown base stations"):
        model.score({**own, "bs9": own["bs0"]})
    with pytest.raises(ValueError, match=r"\[B, 64\]"):
        model.score({"bs0": own["bs0"][:, :10], "bs1": own["bs1"]})
    with pytest.raises(ValueError, match="one B"):
        model.score({"bs0": own["bs0"][:5], "bs1": own["bs1"]})
