"""Out-of-site detection in the service: `in_site` and `novelty` per position, the sigma
of out-of-site answers, the out-of-site counter, and versions without a novelty model."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import publish_novelty_site
from tests.training.toychannel import toy_fingerprints
from training.checkpoint import save_site_model
from training.nets import Backbone, Head, SiteModel
from training.repository import ModelRepository

SITE = toy_fingerprints(400, (5.0, -2.0), seed=7, size=(8.0, 6.0))
TRAIN = SITE.subset(np.arange(200))
OWN = SITE.subset(np.arange(300, 400))


def publish_toy_site(repo: ModelRepository, site: str) -> None:
    own = publish_novelty_site(repo, site)
    assert np.array_equal(own.csi, OWN.csi)  # the same room as TRAIN and OWN here


@pytest.fixture
def ood_client(repo: ModelRepository, settings: Settings) -> Iterator[TestClient]:
    publish_toy_site(repo, "toy")
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def locate(client: TestClient, site: str, csi: np.ndarray) -> list[dict[str, object]]:
    r = client.post("/locate", json={"site": site, "csi": csi.tolist()}, headers=LOCATE)
    assert r.status_code == 200, r.text
    positions: list[dict[str, object]] = r.json()["positions"]
    return positions


def out_of_site_count(client: TestClient, site: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'csipos_locate_out_of_site_total{{site="{site}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_own_fingerprints_are_in_site_and_foreign_ones_are_not(ood_client: TestClient) -> None:
    own = locate(ood_client, "toy", OWN.csi)
    assert sum(p["in_site"] is True for p in own) >= 90
    assert all(isinstance(p["novelty"], float) for p in own)
    assert all((p["novelty"] <= 1) == p["in_site"] for p in own)  # type: ignore[operator]

    foreign = locate(ood_client, "toy", csi_batch(20, seed=3))
    assert all(p["in_site"] is False for p in foreign)
    spread = TRAIN.pos.std(axis=0)
    # Out of site, the model's sigma means nothing: at least the site's spread is answered.
    assert all(p["sigma_x"] >= spread[0] * 0.999 for p in foreign)  # type: ignore[operator]
    assert all(p["sigma_y"] >= spread[1] * 0.999 for p in foreign)  # type: ignore[operator]


def test_the_out_of_site_counter_counts(ood_client: TestClient) -> None:
    before = out_of_site_count(ood_client, "toy")
    locate(ood_client, "toy", csi_batch(7, seed=4))
    assert out_of_site_count(ood_client, "toy") == before + 7
    (one,) = locate(ood_client, "toy", OWN.csi[:1])
    assert out_of_site_count(ood_client, "toy") == before + 7 + (one["in_site"] is False)


def test_batched_requests_keep_their_own_scores(
    repo: ModelRepository, make_settings: Callable[..., Settings]
) -> None:
    publish_toy_site(repo, "toy")
    settings = make_settings(batching_max_batch=64, batching_max_queue_delay_us=2000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        own = locate(c, "toy", OWN.csi[:4])
        foreign = locate(c, "toy", csi_batch(3, seed=5))
    assert sum(p["in_site"] is True for p in own) >= 3
    assert [p["in_site"] for p in foreign] == [False, False, False]


def test_a_version_without_a_novelty_model_still_serves(client: TestClient) -> None:
    positions = locate(client, "lab-nll", csi_batch(3))
    assert len(positions) == 3
    assert all(p["in_site"] is None and p["novelty"] is None for p in positions)
    assert all(p["sigma_x"] is not None for p in positions)


def test_a_real_model_without_a_novelty_model_answers_null(
    repo: ModelRepository, client: TestClient
) -> None:
    head = Head(loss="nll", seed=1)
    head.fit_position_normalisation(TRAIN.pos)
    save_site_model(repo, "bare", SiteModel(Backbone(seed=0), head).eval(), parent=None)
    client.app.state.store.refresh()  # type: ignore[attr-defined]
    positions = locate(client, "bare", OWN.csi[:2])
    assert [p["in_site"] for p in positions] == [None, None]
