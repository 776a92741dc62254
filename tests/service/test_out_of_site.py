"""Out-of-site detection in the service: `in_site` and `novelty` per position, the sigma
of out-of-site answers, the out-of-site counter, and versions without a novelty model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import publish_novelty_site
from tests.training.toychannel import toy_fingerprints, toy_site
from training.checkpoint import save_multi_bs_site_model, save_site_model
from training.consistency import Consistency, fit_consistency
from training.data.site import SiteFingerprints
from training.nets import Backbone, Head, SiteModel
from training.novelty import fit_site_novelty, spatial_statistics
from training.repository import ModelRepository
from training.tracking import track

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


def _v2_outputs(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["name"]: o for o in body["outputs"]}


def test_v2_http_answers_novelty_and_in_site_like_locate(ood_client: TestClient) -> None:
    csi = np.concatenate([OWN.csi[:4], csi_batch(2, seed=3)])
    want = locate(ood_client, "toy", csi)
    meta = ood_client.get("/v2/models/toy", headers=LOCATE).json()
    outs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outs["novelty"] == ("FP32", [-1]) and outs["in_site"] == ("BOOL", [-1])
    tensor = {"name": "csi", "datatype": "FP32", "shape": list(csi.shape)}
    r = ood_client.post(
        "/v2/models/toy/infer",
        json={"inputs": [{**tensor, "data": csi.reshape(-1).tolist()}]},
        headers=LOCATE,
    )
    assert r.status_code == 200, r.text
    got = _v2_outputs(r.json())
    assert got["in_site"]["datatype"] == "BOOL" and got["in_site"]["shape"] == [6]
    assert got["in_site"]["data"] == [p["in_site"] for p in want]
    assert got["in_site"]["data"][4:] == [False, False]
    np.testing.assert_allclose(got["novelty"]["data"], [p["novelty"] for p in want], rtol=1e-5)
    # binary outputs: BOOL is one byte per element, after the FP32 novelty
    r = ood_client.post(
        "/v2/models/toy/infer",
        json={
            "inputs": [{**tensor, "data": csi.reshape(-1).tolist()}],
            "outputs": [
                {"name": "novelty", "parameters": {"binary_data": True}},
                {"name": "in_site", "parameters": {"binary_data": True}},
            ],
        },
        headers=LOCATE,
    )
    assert r.status_code == 200, r.text
    head = int(r.headers["inference-header-content-length"])
    blob = r.content[head:]
    assert len(blob) == 6 * 4 + 6
    assert np.frombuffer(blob[24:], dtype=np.bool_).tolist() == [p["in_site"] for p in want]


def test_v2_sites_without_a_detector_list_no_novelty_output(client: TestClient) -> None:
    meta = client.get("/v2/models/lab-nll", headers=LOCATE).json()
    assert [o["name"] for o in meta["outputs"]] == ["position", "sigma"]
    csi = csi_batch(1)
    r = client.post(
        "/v2/models/lab-nll/infer",
        json={
            "inputs": [
                {
                    "name": "csi",
                    "datatype": "FP32",
                    "shape": list(csi.shape),
                    "data": csi.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "in_site"}],
        },
        headers=LOCATE,
    )
    assert r.status_code == 422 and "unknown output 'in_site'" in r.json()["error"]


@pytest.mark.timeout(60)
def test_v2_grpc_answers_in_site(repo: ModelRepository, start_server: Callable[..., Any]) -> None:
    import tritonclient.grpc as triton

    from tests.service.conftest import free_port

    publish_toy_site(repo, "toy")
    port = free_port()
    start_server(grpc_port=port)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    csi = np.concatenate([OWN.csi[:3], csi_batch(2, seed=3)])
    inp = triton.InferInput("csi", list(csi.shape), "FP32")
    inp.set_data_from_numpy(csi)
    grpc_key = {k.lower(): v for k, v in LOCATE.items()}  # gRPC metadata keys are lower case
    result = client.infer("toy", [inp], headers=grpc_key)
    in_site, novelty = result.as_numpy("in_site"), result.as_numpy("novelty")
    assert in_site.dtype == np.bool_ and in_site.shape == (5,)
    assert in_site[3:].tolist() == [False, False] and in_site[:3].sum() >= 2
    assert ((novelty <= 1.0) == in_site).all()


def _publish_multi_bs_with_detectors(
    repo: ModelRepository,
    client: TestClient,
    *,
    consistency: bool = False,
    check: Consistency | None = None,
    load: bool = True,
    metrics: dict[str, Any] | None = None,
) -> SiteFingerprints:
    """`hall-ood`: 3 BSs on one untrained backbone, a novelty model each (toy site; with
    ``consistency`` the cross-BS check fitted on it, or ``check`` as given), published
    and (``load``) loaded by the client's store; returns 30 fingerprints it never saw."""
    site = toy_site(330, seed=4, drop=0.0)
    train, val = site.subset(np.arange(200)), site.subset(np.arange(200, 300))
    models, novelty = {}, {}
    for k, bs in enumerate(site.bs_ids):
        head = Head(loss="nll", seed=k)
        head.fit_position_normalisation(train.station(bs).pos)
        models[bs] = SiteModel(Backbone(seed=0), head).eval()
        found = fit_site_novelty(models[bs].backbone, train.station(bs), val.station(bs))
        assert found is not None
        novelty[bs] = found
    if consistency and check is None:
        check = fit_consistency([train, val])
    save_multi_bs_site_model(
        repo, "hall-ood", models, parent=None, novelty=novelty, consistency=check, metrics=metrics
    )
    if load:
        client.app.state.store.refresh()  # type: ignore[attr-defined]
    return site.subset(np.arange(300, 330))


def _locate_hall(client: TestClient, csi: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """`/locate` on `hall-ood` with CSI per BS: the positions answered."""
    body = {"site": "hall-ood", "csi": {bs: v.tolist() for bs, v in csi.items()}}
    r = client.post("/locate", json=body, headers=LOCATE)
    assert r.status_code == 200, r.text
    positions: list[dict[str, Any]] = r.json()["positions"]
    return positions


def test_multi_bs_in_site_is_the_majority_of_the_bs_that_heard_the_ue(
    repo: ModelRepository, client: TestClient
) -> None:
    own = _publish_multi_bs_with_detectors(repo, client)
    n = 6

    mine = {bs: own.station(bs).csi[:n] for bs in own.bs_ids}
    foreign = {bs: csi_batch(n, seed=30 + k) for k, bs in enumerate(own.bs_ids)}
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get("hall-ood").predict_bs_scored("bs0", mine["bs0"]).spatial is None  # no check
    at_home = _locate_hall(client, mine)
    assert sum(p["in_site"] is True for p in at_home) >= n - 1
    for p in at_home:
        assert sorted(p["bs"]) == ["bs0", "bs1", "bs2"]
        assert isinstance(p["novelty"], float) and isinstance(p["bs"]["bs0"]["novelty"], float)
        votes = sorted(b["novelty"] for b in p["bs"].values())
        assert p["novelty"] == pytest.approx(votes[1])  # the median of three
    away = _locate_hall(client, foreign)
    assert all(p["in_site"] is False for p in away)
    assert all(b["in_site"] is False for p in away for b in p["bs"].values())
    # an out-of-site UE's fused answer is at least as wide as the site
    spread = client.app.state.store.get("hall-ood").site_spread  # type: ignore[attr-defined]
    assert spread is not None and spread.min() > 0
    assert all(p["sigma_x"] >= spread[0] * 0.999 for p in away)
    assert all(p["sigma_y"] >= spread[1] * 0.999 for p in away)
    # one BS hears a foreign fingerprint, two hear the site's: in site, by majority; the
    # odd one out says so, and keeps its own sigma (the robust fusion weighs it)
    mixed = _locate_hall(client, {**mine, "bs0": foreign["bs0"]})
    for p, home in zip(mixed, at_home, strict=True):
        assert p["bs"]["bs0"]["in_site"] is False
        if home["bs"]["bs1"]["in_site"] and home["bs"]["bs2"]["in_site"]:
            assert p["in_site"] is True
            assert p["sigma_x"] < spread[0] and p["sigma_y"] < spread[1]
    # only the foreign BS heard the UE: out
    assert all(p["in_site"] is False for p in _locate_hall(client, {"bs0": foreign["bs0"]}))


def test_multi_bs_v2_answers_the_ues_novelty_and_in_site_like_locate(
    repo: ModelRepository, client: TestClient
) -> None:
    own = _publish_multi_bs_with_detectors(repo, client, consistency=True)
    n = 4
    # UEs 0-1 from the site at every BS, UEs 2-3 foreign at every BS
    csi = {
        bs: np.concatenate([own.station(bs).csi[:2], csi_batch(n - 2, seed=40 + k)])
        for k, bs in enumerate(own.bs_ids)
    }
    want = _locate_hall(client, csi)
    meta = client.get("/v2/models/hall-ood", headers=LOCATE).json()
    outs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outs["in_site"] == ("BOOL", [-1]) and outs["covariance"] == ("FP32", [-1, 2, 2])
    inputs = [
        {
            "name": f"csi_{bs}",
            "datatype": "FP32",
            "shape": list(v.shape),
            "data": v.ravel().tolist(),
        }
        for bs, v in csi.items()
    ]
    r = client.post("/v2/models/hall-ood/infer", json={"inputs": inputs}, headers=LOCATE)
    assert r.status_code == 200, r.text
    got = _v2_outputs(r.json())
    assert got["in_site"]["data"] == [p["in_site"] for p in want]
    assert got["in_site"]["data"][2:] == [False, False]
    np.testing.assert_allclose(got["novelty"]["data"], [p["novelty"] for p in want], rtol=1e-5)


def test_views_of_different_places_of_the_site_are_out_of_site(
    repo: ModelRepository, client: TestClient
) -> None:
    """Each BS hears one of the site's own fingerprints, but of different UEs: every BS
    says in site, the cross-BS check (`training.consistency`) says out."""
    own = _publish_multi_bs_with_detectors(repo, client, consistency=True)
    store = client.app.state.store  # type: ignore[attr-defined]
    assert store.get("hall-ood").consistency is not None
    mine = {bs: own.station(bs).csi for bs in own.bs_ids}
    at_home = _locate_hall(client, mine)
    assert sum(p["in_site"] is False for p in at_home) <= 2
    rng = np.random.default_rng(5)
    mixed = {bs: c[rng.permutation(len(c))] for bs, c in mine.items()}
    away = _locate_hall(client, mixed)
    each_bs_in = [all(b["in_site"] for b in p["bs"].values()) for p in away]
    caught = [p["in_site"] is False for p, ok in zip(away, each_bs_in, strict=True) if ok]
    # without the check none would be out (every BS says in site); the toy channel's
    # views are one angle per BS, so some mixed triples still fit a place
    assert len(caught) >= 20 and sum(caught) >= 3
    for p in away:  # the UE's score is never below the median of its BSs'
        assert p["novelty"] >= sorted(b["novelty"] for b in p["bs"].values())[1] - 1e-6
    # one BS heard: no cross-BS check, the median rule (that BS's own score) decides
    alone = _locate_hall(client, {"bs0": mixed["bs0"]})
    assert all(p["novelty"] == pytest.approx(p["bs"]["bs0"]["novelty"]) for p in alone)
    # each BS's spatial statistic comes with its score (computed once for both)
    answer = store.get("hall-ood").predict_bs_scored("bs1", mine["bs1"][:5])
    assert answer.spatial is not None
    np.testing.assert_allclose(answer.spatial, spatial_statistics(mine["bs1"][:5]))


def test_a_consistency_model_for_other_base_stations_is_not_served(
    repo: ModelRepository, client: TestClient
) -> None:
    """A check fitted on other BSs would judge UEs by the wrong views: the version is
    broken and the last good one keeps serving."""
    _publish_multi_bs_with_detectors(repo, client, consistency=True)
    store = client.app.state.store  # type: ignore[attr-defined]
    good = store.get("hall-ood").version
    other = toy_site(120, seed=6, drop=0.0, stations={"bs0": (0.0, 0.0), "bs9": (8.0, 0.0)})
    check = fit_consistency([other])
    assert check is not None
    # published whole (the store watches every 0.2 s: a file swapped in after the
    # publish could be loaded first, a race no real publish has)
    _publish_multi_bs_with_detectors(repo, client, check=check, load=False)
    new = repo.resolve("site", "hall-ood")
    assert new != good
    store.refresh()
    assert store.get("hall-ood").version == good


def test_the_ues_rule_is_over_the_scales_fitted_on_the_sites_walks(
    repo: ModelRepository, client: TestClient
) -> None:
    """`training.walk_alarm`: the median of the BSs' scores is divided by the manifest's
    ``metrics.ue_novelty.scale``, the cross-BS check's by ``check_scale``; each BS's own
    score is not. A scale that is not a positive number makes the version broken: the
    last good one serves on."""
    store = client.app.state.store  # type: ignore[attr-defined]
    answers = {}
    for scale, check_scale, check in ((1.0, None, False), (0.5, None, False), (1.0, None, True),
                                      (0.5, 2.0, True)):  # fmt: skip
        own = _publish_multi_bs_with_detectors(
            repo, client, consistency=check, metrics=_scale(scale, check_scale)
        )
        served = store.get("hall-ood")
        assert (served.ue_scale, served.check_scale) == (scale, check_scale or 1.0)
        csi = {bs: own.station(bs).csi for bs in own.bs_ids}
        answers[scale, check] = _locate_hall(client, csi)
    for b, a in zip(answers[1.0, False], answers[0.5, False], strict=True):
        assert a["novelty"] == pytest.approx(2.0 * b["novelty"], rel=1e-5)  # the median
        assert a["in_site"] is (a["novelty"] <= 1.0)
        assert a["bs"]["bs0"]["novelty"] == pytest.approx(b["bs"]["bs0"]["novelty"], rel=1e-5)
    for m, b, a in zip(answers[1.0, False], answers[1.0, True], answers[0.5, True], strict=True):
        # b is max(median, check); a is max(median / 0.5, check / 2)
        want = max(2.0 * m["novelty"], b["novelty"] / 2.0)
        assert a["novelty"] == pytest.approx(want, rel=1e-5)
    decided = [
        b["novelty"] > m["novelty"] * 1.01
        for m, b in zip(answers[1.0, False], answers[1.0, True], strict=True)
    ]
    assert any(decided)  # the check, not the median, scores some UEs
    good = store.get("hall-ood").version
    for bad in (_scale(0.0), _scale(-1.0), _scale("half"), _scale(1.0, 0.0)):
        _publish_multi_bs_with_detectors(repo, client, consistency=True, metrics=bad, load=False)
        store.refresh()
        assert store.get("hall-ood").version == good


def _scale(value: object, check: object = None) -> dict[str, Any]:
    return {"ue_novelty": {"scale": value, "check_scale": check}}


def test_a_tracked_out_of_site_answer_reaches_the_filter_as_foreign(
    ood_client: TestClient,
) -> None:
    # own, own, foreign, own fingerprints of one UE at 10 Hz: the service's track is the
    # offline filter's with the third measurement passed as foreign (white noise alone)
    frames = [OWN.csi[0], OWN.csi[1], csi_batch(1, seed=3)[0], OWN.csi[2]]
    answers = []
    for i, csi in enumerate(frames):
        body = {"site": "toy", "csi": csi.tolist(), "ue": "walker", "timestamp": 10.0 + 0.1 * i}
        r = ood_client.post("/locate", json=body, headers=LOCATE)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    shown = [a["positions"][0] for a in answers]
    assert [p["in_site"] for p in shown] == [True, True, False, True]
    config = ood_client.app.state.tracker.config  # type: ignore[attr-defined]
    t = 10.0 + 0.1 * np.arange(4)
    z = np.array([[p["x"], p["y"]] for p in shown])
    r = np.array([np.diag([p["sigma_x"] ** 2, p["sigma_y"] ** 2]) for p in shown])
    flags = np.array([not p["in_site"] for p in shown])
    scores = np.array([p["novelty"] for p in shown])
    want = track(t, z, r, config, flags, scores)
    got = answers[-1]["track"]
    assert np.allclose([got["x"], got["y"]], want.position[-1], atol=1e-4)
    assert np.allclose(got["cov"], want.cov[-1], rtol=1e-4, atol=1e-9)
    unflagged = track(t, z, r, config)  # the widened sigma taken as the site's error field
    assert not np.allclose(unflagged.cov[-1], want.cov[-1], rtol=1e-3)
    # the UE's score is the fingerprints' average over time, as the offline filter has it
    assert want.novelty is not None
    for answer, average in zip(answers, want.novelty, strict=True):
        assert answer["track"]["novelty"] == pytest.approx(average, rel=1e-6)
        assert answer["track"]["in_site"] == (average <= 1.0)


def track_out_of_site_count(client: TestClient, site: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'csipos_track_out_of_site_total{{site="{site}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_a_ue_that_stays_out_of_site_is_out_of_site_on_its_track(
    ood_client: TestClient,
) -> None:
    # a UE sending another room's fingerprints at 10 Hz: its track says out of site and
    # is counted; a stale repeat is not counted again
    before = track_out_of_site_count(ood_client, "toy")
    away = csi_batch(5, seed=8)
    for i in range(5):
        body = {"site": "toy", "csi": away[i].tolist(), "ue": "stranger", "timestamp": 1.0 + i / 10}
        r = ood_client.post("/locate", json=body, headers=LOCATE)
        assert r.status_code == 200, r.text
        assert r.json()["track"]["in_site"] is False and r.json()["track"]["novelty"] > 1.0
    r = ood_client.post("/locate", json=body, headers=LOCATE)
    assert r.json()["track"]["stale"]
    assert track_out_of_site_count(ood_client, "toy") == before + 5


def test_with_an_averaging_time_one_odd_fingerprint_does_not_flip_the_tracked_ue(
    repo: ModelRepository, make_settings: Callable[..., Settings]
) -> None:
    # CSIPOS_TRACK_NOVELTY_TIME_S 10: the snapshot of the foreign frame says out of site,
    # the UE's track (the scores' geometric mean over ~10 s) stays in site; the default
    # (0) judges the latest fingerprint, as the snapshot does
    publish_toy_site(repo, "toy")
    frames = [OWN.csi[0], OWN.csi[1], csi_batch(1, seed=3)[0], OWN.csi[2]]
    for time_s, expect in ((10.0, [True, True, True, True]), (0.0, [True, True, False, True])):
        settings = make_settings(track_novelty_time_s=time_s)
        with TestClient(create_app(settings), raise_server_exceptions=False) as c:
            answers = []
            for i, csi in enumerate(frames):
                body = {"site": "toy", "csi": csi.tolist(), "ue": "w", "timestamp": 1.0 + i / 10}
                r = c.post("/locate", json=body, headers=LOCATE)
                assert r.status_code == 200, r.text
                answers.append(r.json())
        assert [a["positions"][0]["in_site"] for a in answers] == [True, True, False, True]
        assert [a["track"]["in_site"] for a in answers] == expect, time_s


def test_a_tracked_multi_bs_ue_out_of_site_reaches_the_filter_as_foreign(
    repo: ModelRepository, client: TestClient
) -> None:
    own = _publish_multi_bs_with_detectors(repo, client)
    mine = {bs: own.station(bs).csi[:3] for bs in own.bs_ids}
    away = {bs: csi_batch(1, seed=40 + k) for k, bs in enumerate(own.bs_ids)}
    frames = [{bs: v[i] for bs, v in mine.items()} for i in range(2)]
    frames.insert(1, {bs: v[0] for bs, v in away.items()})
    answers = []
    for i, csi in enumerate(frames):
        body = {
            "site": "hall-ood",
            "csi": {bs: v.tolist() for bs, v in csi.items()},
            "ue": "forklift",
            "timestamp": 5.0 + 0.1 * i,
        }
        r = client.post("/locate", json=body, headers=LOCATE)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    shown = [a["positions"][0] for a in answers]
    assert shown[1]["in_site"] is False
    config = client.app.state.tracker.config  # type: ignore[attr-defined]
    t = 5.0 + 0.1 * np.arange(3)
    z = np.array([[p["x"], p["y"]] for p in shown])
    r = np.array([p["cov"] for p in shown])
    flags = np.array([not p["in_site"] for p in shown])
    want = track(t, z, r, config, flags, np.array([p["novelty"] for p in shown]))
    got = answers[-1]["track"]
    assert np.allclose([got["x"], got["y"]], want.position[-1], atol=1e-4)
    assert np.allclose(got["cov"], want.cov[-1], rtol=1e-4, atol=1e-9)
    assert not np.allclose(track(t, z, r, config).cov[-1], want.cov[-1], rtol=1e-3)
    assert want.novelty is not None  # the UE's score (the fused rule's) averaged over time
    assert got["novelty"] == pytest.approx(want.novelty[-1], rel=1e-6)
