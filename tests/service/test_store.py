"""The model store follows the repository's active versions without a restart."""

from __future__ import annotations

import numpy as np
import pytest

from service.store import ModelStore
from tests.service.conftest import csi_batch
from tests.service.models import expected, publish_linear, publish_linear_multi_bs
from training.repository import ModelRepository


def test_refresh_swaps_versions_and_drops_deleted_sites(repo: ModelRepository) -> None:
    store = ModelStore(repo.root)
    store.load()
    assert set(store.snapshot()) == {"lab-nll", "lab-mse"}
    publish_linear(repo, "lab-mse", "mse", seed=9)
    repo.delete_site("lab-nll")
    store.refresh()
    assert set(store.snapshot()) == {"lab-mse"}
    assert store.get("lab-mse").version == "v2"


def test_site_recreated_between_polls_is_reloaded(repo: ModelRepository) -> None:
    """Delete + publish again restarts at v1: the store must not keep the old model."""
    store = ModelStore(repo.root)
    store.load()
    csi = csi_batch(2)
    old_pos, _ = store.get("lab-mse").predict(csi)
    np.testing.assert_allclose(old_pos, expected(csi, 3, (-1.0, -2.0))[0], rtol=1e-4, atol=1e-4)

    repo.delete_site("lab-mse")
    assert publish_linear(repo, "lab-mse", "mse", seed=4, bias=(10.0, 20.0)) == "v1"
    store.refresh()  # one poll sees only the new v1, never the deletion

    served = store.get("lab-mse")
    assert served.version == "v1"
    new_pos, _ = served.predict(csi)
    np.testing.assert_allclose(new_pos, expected(csi, 4, (10.0, 20.0))[0], rtol=1e-4, atol=1e-4)


def test_a_version_naming_a_missing_joint_head_is_not_served(repo: ModelRepository) -> None:
    """The manifest promises a joint head (`training.multibs`): without its graph the
    version is broken, and the last good one keeps serving."""
    stations = {"bs0": (1, (0.0, 0.0)), "bs1": (2, (1.0, 1.0))}
    publish_linear_multi_bs(repo, "hall", "nll", stations, joint=(3, (0.0, 0.0)))
    store = ModelStore(repo.root)
    store.load()
    assert store.get("hall").has_joint
    publish_linear_multi_bs(repo, "hall", "nll", stations, joint=(3, (0.0, 0.0)), joint_file=False)
    store.refresh()
    assert store.get("hall").version == "v1" and store.get("hall").has_joint


@pytest.mark.parametrize(
    "by_set",
    [
        {"bs0+bs9": 1.5},  # a BS the site does not have
        {"bs1+bs0": 1.5},  # not in the site's order: no UE would ever get it
        {"bs0": 0.0},  # an ellipse of no size
        {"bs0": -1.0},
        {"bs0": "wide"},
    ],
)
def test_a_version_with_bad_factors_per_set_is_not_served(
    repo: ModelRepository, by_set: dict[str, object]
) -> None:
    stations = {"bs0": (1, (0.0, 0.0)), "bs1": (2, (1.0, 1.0))}
    publish_linear_multi_bs(repo, "hall", "nll", stations, inflation_by_set={"bs0": 1.2})
    store = ModelStore(repo.root)
    store.load()
    assert store.get("hall").inflation_for(["bs0"]) == 1.2
    publish_linear_multi_bs(repo, "hall", "nll", stations, inflation_by_set=by_set)
    store.refresh()
    assert store.get("hall").version == "v1"


@pytest.mark.parametrize("inflation", [0.0, -2.0, "wide"])
def test_a_version_with_a_bad_fused_inflation_is_not_served(
    repo: ModelRepository, inflation: object
) -> None:
    """A factor that is not a positive number would serve no ellipse (or a negative one)."""
    stations = {"bs0": (1, (0.0, 0.0)), "bs1": (2, (1.0, 1.0))}
    publish_linear_multi_bs(repo, "hall", "nll", stations, inflation=1.4)
    store = ModelStore(repo.root)
    store.load()
    publish_linear_multi_bs(repo, "hall", "nll", stations, inflation=inflation)  # type: ignore[arg-type]
    store.refresh()
    assert store.get("hall").version == "v1" and store.get("hall").inflation == 1.4


def test_a_factor_below_one_is_served(repo: ModelRepository) -> None:
    """A set fitted to the coverage on many validation UEs may narrow its ellipse."""
    stations = {"bs0": (1, (0.0, 0.0)), "bs1": (2, (1.0, 1.0))}
    publish_linear_multi_bs(repo, "hall", "nll", stations, inflation_by_set={"bs0": 0.8})
    store = ModelStore(repo.root)
    store.load()
    assert store.get("hall").inflation_for(["bs0"]) == 0.8


def test_a_joint_head_for_another_number_of_bss_is_not_served(repo: ModelRepository) -> None:
    from tests.service.models import linear_site_onnx
    from training.fusion import JOINT_FILES

    stations = {"bs0": (1, (0.0, 0.0)), "bs1": (2, (1.0, 1.0))}
    publish_linear_multi_bs(repo, "hall", "nll", stations, joint=(3, (0.0, 0.0)))
    store = ModelStore(repo.root)
    store.load()
    v2 = publish_linear_multi_bs(repo, "hall", "nll", stations, joint=(3, (0.0, 0.0)))
    three = linear_site_onnx("hall", v2, "nll", seed=3, antennas=24)  # a 3-BS joint head
    (repo.path("site", "hall", v2) / JOINT_FILES[0]).write_bytes(three)
    store.refresh()
    assert store.get("hall").version == "v1"
