"""UE tracking on /locate: the answer's track, bad input, bounded stores, Redis with 2 replicas."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.errors import Unavailable
from service.tracking import MemoryTrackStore, RedisTrackStore, Tracker, mse_sigma
from tests.service.conftest import LOCATE, Server, csi_batch, free_port
from tests.service.models import expected, publish_linear
from training.repository import ModelRepository
from training.tracking import TrackerConfig, TrackState, step, track

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed (Debian package)"
)


def _locate(client: TestClient, csi: np.ndarray, **fields: Any) -> dict[str, Any]:
    r = client.post(
        "/locate", json={"site": "lab-nll", "csi": csi.tolist(), **fields}, headers=LOCATE
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_locate_with_ue_answers_the_filtered_track(client: TestClient) -> None:
    csi = csi_batch(3, seed=7)
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    first = _locate(client, csi[0], ue="forklift-7", timestamp=100.0)
    t0 = first["track"]
    assert t0["reset"] == "new" and t0["updates"] == 1 and t0["age_s"] == 0.0
    assert np.allclose([t0["x"], t0["y"]], pos[0], atol=1e-4) and t0["vx"] == 0.0
    assert np.allclose(t0["cov"], np.diag(sigma[0].astype(np.float64) ** 2), rtol=1e-4)
    assert t0["measurement_noise"] == "predicted" and not t0["gated"] and not t0["stale"]
    assert t0["novelty"] is None and t0["in_site"] is None  # this site has no detector
    assert first["positions"][0]["x"] == pytest.approx(pos[0, 0], abs=1e-4)  # snapshot kept

    second = _locate(client, csi[1], ue="forklift-7", timestamp=100.5)["track"]
    # the same filter, offline
    covs = np.stack([np.diag(s.astype(np.float64) ** 2) for s in sigma[:2]])
    want = track([100.0, 100.5], pos[:2].astype(np.float64), covs)
    assert np.allclose([second["x"], second["y"]], want.position[1], atol=1e-4)
    assert np.allclose(second["cov"], want.cov[1], rtol=1e-4)
    assert second["updates"] == 2 and second["age_s"] == pytest.approx(0.5)

    # a repeat (a retried request) is stale: not applied twice
    again = _locate(client, csi[1], ue="forklift-7", timestamp=100.5)["track"]
    assert again["stale"] and again["updates"] == 2 and again["x"] == second["x"]
    # another UE has its own track; without a timestamp the server's clock stamps it
    other = _locate(client, csi[2], ue="walker-1")["track"]
    assert other["reset"] == "new" and other["time"] > 1e9


def test_npy_requests_take_ue_and_timestamp_from_the_query(client: TestClient) -> None:
    import io

    buf = io.BytesIO()
    np.save(buf, csi_batch(1, seed=3))
    r = client.post(
        "/locate?site=lab-nll&ue=tag.01&timestamp=5.25",
        content=buf.getvalue(),
        headers={**LOCATE, "Content-Type": "application/x-npy"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["track"]["ue"] == "tag.01" and r.json()["track"]["time"] == 5.25


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"ue": "x" * 65}, "invalid ue id"),
        ({"ue": "a b"}, "invalid ue id"),
        ({"ue": ""}, "invalid ue id"),
        ({"ue": 12}, "invalid ue id"),
        ({"ue": "u1", "timestamp": "soon"}, "timestamp"),
        ({"ue": "u1", "timestamp": -1}, "timestamp"),
        ({"ue": "u1", "timestamp": 1.7e12}, "timestamp"),  # milliseconds
        ({"ue": "u1", "timestamp": True}, "timestamp"),
        ({"timestamp": 1.0}, "timestamp needs a ue"),
    ],
)
def test_bad_tracking_input_is_a_clear_422(
    client: TestClient, fields: dict[str, Any], message: str
) -> None:
    one = csi_batch(1)[0].tolist()
    r = client.post("/locate", json={"site": "lab-nll", "csi": one, **fields}, headers=LOCATE)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_input" and message in err["message"]


def test_a_batch_with_one_ue_is_refused(client: TestClient) -> None:
    r = client.post(
        "/locate",
        json={"site": "lab-nll", "csi": csi_batch(2).tolist(), "ue": "u1"},
        headers=LOCATE,
    )
    assert r.status_code == 422 and "one fingerprint" in r.json()["error"]["message"]
    assert r.json()["error"]["detail"]["got"] == 2


def test_mse_sites_use_the_validation_error_as_noise(
    repo: ModelRepository, make_settings: Callable[..., Settings]
) -> None:
    publish_linear(repo, "mse-me", "mse", seed=4, metrics={"me": 0.5})
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as c:
        one = csi_batch(1)[0].tolist()
        r = c.post("/locate", json={"site": "mse-me", "csi": one, "ue": "u"}, headers=LOCATE)
        t = r.json()["track"]
        assert t["measurement_noise"] == "validation_me"
        assert t["cov"][0][0] == pytest.approx(0.25 * 2 / np.pi)
        r = c.post("/locate", json={"site": "lab-mse", "csi": one, "ue": "u"}, headers=LOCATE)
        assert r.json()["track"]["measurement_noise"] == "setting"
        assert r.json()["track"]["cov"][0][0] == pytest.approx(1.0)
    assert mse_sigma({"metrics": {"me": float("nan")}}, 2.0) == (2.0, "setting")


def test_a_site_is_tracked_with_the_error_length_of_its_label_spacing(
    repo: ModelRepository, make_settings: Callable[..., Settings]
) -> None:
    """The manifest's ``metrics.label_spacing_m`` sets the version's error length
    (`TrackerConfig.for_site`); one that is not a positive number makes the version
    broken, and the last good one tracks on."""
    csi = csi_batch(3, seed=7)
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    t = 100.0 + 0.5 * np.arange(3)
    covs = np.stack([np.diag(s.astype(np.float64) ** 2) for s in sigma])
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as c:
        store = c.app.state.store  # type: ignore[attr-defined]
        config = c.app.state.tracker.config  # type: ignore[attr-defined]
        for spacing in (0.1, 2.0):
            metrics = {"val_me": 1.0, "label_spacing_m": spacing}
            publish_linear(repo, "spaced", "nll", seed=1, bias=(1.0, 2.0), metrics=metrics)
            store.refresh()
            assert store.get("spaced").label_spacing_m == spacing
            for i in range(3):
                body = {"site": "spaced", "csi": csi[i].tolist(), "ue": f"u{spacing}"}
                r = c.post("/locate", json={**body, "timestamp": t[i]}, headers=LOCATE)
                assert r.status_code == 200, r.text
            want = track(t, pos.astype(np.float64), covs, config.for_site(spacing))
            assert np.allclose(r.json()["track"]["cov"], want.cov[-1], rtol=1e-4)
            default = track(t, pos.astype(np.float64), covs, config)  # L from the setting
            assert not np.allclose(default.cov[-1], want.cov[-1], rtol=1e-3)
        good = store.get("spaced").version
        for bad in (0.0, -1.0, "far"):
            metrics = {"val_me": 1.0, "label_spacing_m": bad}
            publish_linear(repo, "spaced", "nll", seed=1, bias=(1.0, 2.0), metrics=metrics)
            store.refresh()
            assert store.get("spaced").version == good


def test_the_track_answers_its_adaptive_noise_scale(
    make_settings: Callable[..., Settings],
) -> None:
    """`CSIPOS_TRACK_NOISE_TIME_S` turns the scale on: the answer's ``noise_scale`` is the
    offline filter's with the same settings (1 with the setting's default, 0)."""
    csi = csi_batch(4, seed=7)
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    t = 100.0 + 0.1 * np.arange(4)
    covs = np.stack([np.diag(s.astype(np.float64) ** 2) for s in sigma])
    for time_s in (0.0, 0.5):
        # the setting's noise scale 0.2 makes each measurement claim under half its sigma
        # (not so little that a measurement is gated: the gated counter is shared)
        settings = make_settings(track_noise_time_s=time_s, track_noise_scale=0.2)
        with TestClient(create_app(settings)) as c:
            config = c.app.state.tracker.config  # type: ignore[attr-defined]
            assert config.noise_time_s == time_s
            for i in range(4):
                answer = _locate(c, csi[i], ue="u1", timestamp=float(t[i]))["track"]
        want = track(t, pos.astype(np.float64), covs, config)
        assert want.scale is not None and not want.gated.any()
        assert answer["noise_scale"] == pytest.approx(want.scale[-1], rel=1e-6)
        assert np.allclose(answer["cov"], want.cov[-1], rtol=1e-4)
        if time_s == 0.0:
            assert answer["noise_scale"] == 1.0
        else:  # points a metre apart claiming ~0.5 m: the track learns they understate
            assert answer["noise_scale"] > 1.0


def test_gated_measurements_are_counted_by_site(client: TestClient) -> None:
    tracker: Tracker = client.app.state.tracker  # type: ignore[attr-defined]
    cov = 0.04 * np.eye(2)

    async def feed() -> list[dict[str, Any]]:
        out = []
        for i, x in enumerate([1.0, 1.0, 1.0, 51.0]):
            out.append(
                await tracker.update(
                    "lab-nll", "lab-nll", "g", float(i), np.array([x, 0.0]), cov, "predicted"
                )
            )
        return out

    answers = asyncio.run(feed())
    assert answers[-1]["gated"] and answers[-1]["x"] == pytest.approx(1.0, abs=0.1)
    text = client.get("/metrics").text
    assert 'csipos_track_gated_measurements_total{site="lab-nll"} 1.0' in text
    assert 'csipos_track_restarts_total{reason="new",site="lab-nll"}' in text
    assert "csipos_tracked_ues " in text


def test_memory_store_never_holds_more_than_its_limit_and_expires() -> None:
    now = [0.0]
    store = MemoryTrackStore(max_tracks=10, ttl_s=5.0, clock=lambda: now[0])
    config = TrackerConfig()

    def put(key: str, t: float) -> None:
        asyncio.run(store.apply(key, lambda prior: step(prior, t, [1.0, 2.0], np.eye(2), config)))

    for i in range(50):
        put(f"ue{i}", float(i))
        assert len(store) <= 10
    assert len(store) == 10
    put("ue40", 100.0)  # touched: now the most recent
    put("new", 101.0)
    kept = set(store._tracks)
    assert "ue40" in kept and "ue41" not in kept and len(kept) == 10
    now[0] = 6.0  # past the TTL: everything expires on the next write
    put("late", 200.0)
    assert list(store._tracks) == ["late"]
    seen: list[TrackState | None] = []

    def spy(prior: TrackState | None) -> Any:
        seen.append(prior)
        return step(prior, 300.0, [1.0, 2.0], np.eye(2), config)

    now[0] = 12.0
    asyncio.run(store.apply("late", spy))
    assert seen == [None]  # an expired entry reads as no track


def _replay(clients: list[TestClient], csi: np.ndarray, ue: str) -> list[dict[str, Any]]:
    return [
        _locate(clients[i % len(clients)], csi[i], ue=ue, timestamp=10.0 + 0.1 * i)["track"]
        for i in range(len(csi))
    ]


@needs_redis
@pytest.mark.timeout(120)
def test_two_replicas_on_one_redis_track_like_one_replica(
    redis_url: str, make_settings: Callable[..., Settings]
) -> None:
    csi = csi_batch(12, seed=11)
    with TestClient(create_app(make_settings())) as single:
        alone = _replay([single], csi, "ue-1")
    shared = make_settings(redis_url=redis_url)
    with TestClient(create_app(shared)) as a, TestClient(create_app(shared)) as b:
        both = _replay([a, b], csi, "ue-1")
        for got, want in zip(both, alone, strict=True):
            assert got["updates"] == want["updates"] and got["reset"] == want["reset"]
            assert np.allclose(
                [got["x"], got["y"], got["vx"], got["vy"]],
                [want["x"], want["y"], want["vx"], want["vy"]],
                atol=1e-9,
            )
            assert np.allclose(got["cov"], want["cov"], atol=1e-12)
        assert both[-1]["updates"] == 12
        # concurrent, server-stamped requests for one UE on both replicas: none is lost
        one = csi[0].tolist()

        def post(i: int) -> int:
            c = (a, b)[i % 2]
            r = c.post(
                "/locate", json={"site": "lab-nll", "csi": one, "ue": "busy"}, headers=LOCATE
            )
            assert r.status_code == 200, r.text
            return int(r.json()["track"]["updates"])

        with ThreadPoolExecutor(8) as pool:
            counts = sorted(pool.map(post, range(40)))
        assert counts == list(range(1, 41))
        from redis import Redis

        conn = Redis.from_url(redis_url)
        assert conn.zcard(RedisTrackStore.INDEX) == 2
        ttl = conn.pttl(RedisTrackStore.PREFIX + "lab-nll:busy")
        assert 0 < ttl <= 10_000


@needs_redis
def test_redis_store_is_trimmed_to_the_limit(redis_url: str) -> None:
    from redis import Redis

    config = TrackerConfig()

    async def run() -> None:
        store = RedisTrackStore(redis_url, max_tracks=3, ttl_s=30.0)
        for i in range(6):
            await store.apply(f"s:u{i}", lambda p: step(p, 1.0, [0.0, 0.0], np.eye(2), config))
        await store.aclose()

    asyncio.run(run())
    conn = Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in conn.scan_iter(RedisTrackStore.PREFIX + "*"))
    assert keys == [RedisTrackStore.PREFIX + f"s:u{i}" for i in (3, 4, 5)]
    assert conn.zcard(RedisTrackStore.INDEX) == 3


@needs_redis
def test_an_old_or_broken_redis_record_restarts_the_track(redis_url: str) -> None:
    from redis import Redis

    conn = Redis.from_url(redis_url)
    old = {  # a record of the 4-D filter before the correlated-error state (no version)
        "mean": [1.0, 2.0, 0.5, 0.0],
        "cov": np.eye(4).tolist(),
        "time": 1.0,
        "started": 0.0,
        "gated_run": 0,
        "updates": 7,
    }
    conn.set(RedisTrackStore.PREFIX + "s:old", orjson.dumps(old))
    conn.set(RedisTrackStore.PREFIX + "s:junk", b"{not json")
    config = TrackerConfig()

    async def run() -> list[Any]:
        store = RedisTrackStore(redis_url, max_tracks=10, ttl_s=30.0)
        out = [
            await store.apply(key, lambda p: step(p, 2.0, [3.0, 4.0], np.eye(2), config))
            for key in ("s:old", "s:junk")
        ]
        again = await store.apply("s:old", lambda p: step(p, 2.5, [3.0, 4.0], np.eye(2), config))
        await store.aclose()
        return [*out, again]

    old_step, junk_step, again = asyncio.run(run())
    assert old_step.reset == "new" and junk_step.reset == "new" and old_step.state.updates == 1
    assert again.reset is None and again.state.updates == 2  # the new record is read back
    assert orjson.loads(conn.get(RedisTrackStore.PREFIX + "s:old"))["version"] == 2


def test_an_unreachable_redis_is_a_503() -> None:
    store = RedisTrackStore(f"redis://127.0.0.1:{free_port()}/0", max_tracks=3, ttl_s=30.0)
    transition = lambda p: step(p, 1.0, [0.0, 0.0], np.eye(2), TrackerConfig())  # noqa: E731
    with pytest.raises(Unavailable, match="track store"):
        asyncio.run(store.apply("s:u", transition))


@needs_redis
@pytest.mark.timeout(120)
def test_two_live_servers_share_tracks_through_redis(
    redis_url: str, start_server: Callable[..., Server], client: TestClient
) -> None:
    csi = csi_batch(8, seed=21)
    alone = _replay([client], csi, "walker")
    servers = [start_server(redis_url=redis_url), start_server(redis_url=redis_url)]
    answers = []
    for i in range(len(csi)):
        body = {
            "site": "lab-nll",
            "csi": csi[i].tolist(),
            "ue": "walker",
            "timestamp": 10.0 + 0.1 * i,
        }
        r = httpx.post(servers[i % 2].url + "/locate", json=body, headers=LOCATE, timeout=10)
        assert r.status_code == 200, r.text
        answers.append(r.json()["track"])
    for got, want in zip(answers, alone, strict=True):
        assert got["updates"] == want["updates"]
        assert np.allclose(
            [got["x"], got["y"], got["vx"], got["vy"]],
            [want["x"], want["y"], want["vx"], want["vy"]],
            atol=1e-9,
        )
    assert answers[-1]["updates"] == 8
