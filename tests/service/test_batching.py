"""Dynamic batching: many concurrent distinct requests, each gets exactly its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.errors import SiteNotFound
from service.positioning import Positioner, Prediction
from service.store import ModelStore
from tests.service.conftest import csi_batch
from tests.service.models import expected
from training.repository import ModelRepository


@pytest.fixture
def store(repo: ModelRepository) -> Iterator[ModelStore]:
    s = ModelStore(repo.root)
    s.load()
    yield s
    s.unload()


def _sample(name: str, site: str) -> float:
    return REGISTRY.get_sample_value(name, {"site": site}) or 0.0


async def _locate_all(
    positioner: Positioner, site: str, inputs: list[np.ndarray]
) -> list[Prediction]:
    try:
        return await asyncio.gather(*(positioner.locate(site, x) for x in inputs))
    finally:
        await positioner.aclose()


@pytest.mark.parametrize("site", ["lab-mse", "lab-nll"])
def test_each_caller_gets_its_own_rows(store: ModelStore, site: str) -> None:
    # 96 concurrent requests of 1-3 fingerprints (and one over max_batch, which runs
    # alone), every one distinct; a long delay makes them share calls for certain.
    sizes = [1 + i % 3 for i in range(96)] + [20]
    inputs = [csi_batch(n, seed=100 + i) for i, n in enumerate(sizes)]
    positioner = Positioner(store, 2, max_batch=16, max_delay_us=20_000)
    calls = _sample("csipos_inference_batch_size_count", site)
    requests = _sample("csipos_batch_requests_sum", site)

    preds = asyncio.run(_locate_all(positioner, site, inputs))

    served = store.get(site)
    for x, pred in zip(inputs, preds, strict=True):
        # The reference: this request alone, one model call, no batcher.
        alone_pos, alone_sigma = served.predict(x)
        assert pred.version == served.version
        np.testing.assert_array_equal(pred.position, alone_pos)  # bit-equal
        if alone_sigma is None:
            assert pred.sigma is None
        else:
            # onnxruntime's Softplus takes a SIMD path over full vector packets and a scalar
            # one for the tail, so sigma's last bit depends on the call's batch length even
            # without batching (a B=64 request shows the same); positions are exact.
            assert pred.sigma is not None
            np.testing.assert_array_max_ulp(pred.sigma, alone_sigma, maxulp=1)
    # Distinct inputs, distinct answers: a mix-up could not pass the checks above.
    pos = np.concatenate([p.position for p in preds])
    assert len(np.unique(pos.round(4), axis=0)) == len(pos)
    # The numpy model agrees (same seed as the conftest repo).
    seed, bias = (3, (-1.0, -2.0)) if site == "lab-mse" else (1, (1.0, 2.0))
    np.testing.assert_allclose(pos, expected(np.concatenate(inputs), seed, bias)[0], atol=1e-4)
    # Fewer model calls than requests: they really were coalesced (96 small ones in
    # batches of at most 16 fingerprints, the big one alone).
    made = _sample("csipos_inference_batch_size_count", site) - calls
    assert made <= 20
    assert _sample("csipos_batch_requests_sum", site) - requests == 96


def test_batches_never_exceed_max_batch(store: ModelStore) -> None:
    positioner = Positioner(store, 1, max_batch=8, max_delay_us=50_000)
    seen: list[int] = []
    infer = positioner._infer

    async def spy(site: str, csi: np.ndarray) -> Prediction:
        seen.append(csi.shape[0])
        return await infer(site, csi)

    assert positioner._batcher is not None
    positioner._batcher._run = spy
    inputs = [csi_batch(3, seed=i) for i in range(10)]
    asyncio.run(_locate_all(positioner, "lab-mse", inputs))
    assert sum(seen) == 30
    assert max(seen) <= 8
    assert len(seen) == 5  # 3+3 per call: a third request of 3 would pass 8


def test_errors_reach_every_caller(store: ModelStore, repo: ModelRepository) -> None:
    positioner = Positioner(store, 2, max_batch=32, max_delay_us=20_000)

    async def run() -> list[object]:
        calls = [positioner.locate("lab-mse", csi_batch(1, seed=i)) for i in range(8)]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.005)  # queued, waiting for the batch to fill
        repo.delete_site("lab-mse")
        store.refresh_site("lab-mse")
        try:
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await positioner.aclose()

    results = asyncio.run(run())
    assert all(isinstance(r, SiteNotFound) for r in results)


def test_off_means_one_call_per_request(store: ModelStore) -> None:
    positioner = Positioner(store, 2)
    assert positioner._batcher is None
    before = _sample("csipos_inference_batch_size_count", "lab-nll")
    asyncio.run(_locate_all(positioner, "lab-nll", [csi_batch(1, seed=i) for i in range(6)]))
    assert _sample("csipos_inference_batch_size_count", "lab-nll") - before == 6
