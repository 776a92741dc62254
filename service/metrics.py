"""Prometheus metrics of the service (names and labels as in docs/architecture.md).

With `PROMETHEUS_MULTIPROC_DIR` set (several uvicorn workers), every worker writes its
samples to that directory and `/metrics` merges them, so the numbers are right whichever
worker answers the scrape. Job metrics are read from the job records at scrape time: jobs
run in other processes (process pool, RQ workers) and their records are the one place
that all replicas share.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
UNKNOWN_SITE = "unknown"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_SIGMA_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
JOB_DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

HTTP_DURATION = Histogram(
    "csipos_http_request_duration_seconds",
    "Request duration by protocol (http, grpc), route template (gRPC: the method path), "
    "method and status (gRPC: the HTTP status of the same error).",
    ["protocol", "route", "method", "status"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "csipos_inference_duration_seconds",
    "onnxruntime inference duration per request batch.",
    ["site"],
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_BATCH = Histogram(
    "csipos_inference_batch_size",
    "Fingerprints per inference call.",
    ["site"],
    buckets=_BATCH_BUCKETS,
)
BATCH_QUEUE_DURATION = Histogram(
    "csipos_batch_queue_duration_seconds",
    "Time a request waited in the dynamic batcher before its model call started.",
    ["site"],
    buckets=(0.0001, 0.00025, 0.0005, *_LATENCY_BUCKETS),
)
BATCH_REQUESTS = Histogram(
    "csipos_batch_requests",
    "Requests coalesced into one model call by the dynamic batcher.",
    ["site"],
    buckets=_BATCH_BUCKETS[:8],
)
PREDICTIONS = Counter(
    "csipos_locate_predictions",
    "Positions predicted (one per fingerprint).",
    ["site"],
)
OUT_OF_SITE = Counter(
    "csipos_locate_out_of_site",
    "Fingerprints judged not from their site (novelty above the site's threshold); "
    "divided by csipos_locate_predictions_total it is the out-of-site share.",
    ["site"],
)
PREDICTED_SIGMA = Histogram(
    "csipos_predicted_sigma_meters",
    "Predicted 1-sigma position uncertainty per axis (nll models only).",
    ["site", "axis"],
    buckets=_SIGMA_BUCKETS,
)
SHED = Counter(
    "csipos_requests_shed",
    "Inference requests refused or dropped by admission control, by reason "
    "(overloaded: in-flight limit; deadline: no answer in time; client_gone: hung up).",
    ["reason"],
)
IN_FLIGHT = Gauge(
    "csipos_inference_in_flight",
    "Inference requests admitted and not yet answered.",
    multiprocess_mode="livesum",
)
MODELS_LOADED = Gauge(
    "csipos_models_loaded",
    "Site models loaded in this replica.",
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "csipos_model_info",
    "Active model of each loaded site (value 1).",
    ["site", "version", "loss"],
    multiprocess_mode="livemax",
)

TRACKED_UES = Gauge(
    "csipos_tracked_ues",
    "UE tracks held in this process's in-process store (sum over processes).",
    multiprocess_mode="livesum",
)
TRACKED_UES_SHARED = Gauge(
    "csipos_tracked_ues_shared",
    "UE tracks in the shared Redis store, as counted at this process's latest update "
    "(the same on every replica: aggregate with max).",
    multiprocess_mode="livemostrecent",
)
TRACK_SCORED = Counter(
    "csipos_track_scored_measurements",
    "Tracked measurements of sites with an out-of-site detector (stale repeats not counted).",
    ["site"],
)
TRACK_OUT_OF_SITE = Counter(
    "csipos_track_out_of_site",
    "Tracked measurements after which the UE's averaged out-of-site score says out of "
    "site (the answer's track.in_site false; stale repeats not counted).",
    ["site"],
)
TRACK_GATED = Counter(
    "csipos_track_gated_measurements",
    "Tracked measurements refused by the Mahalanobis gate (not applied to the track).",
    ["site"],
)
TRACK_STALE = Counter(
    "csipos_track_stale_measurements",
    "Tracked measurements at or before their track's time (repeats, out of order): ignored.",
    ["site"],
)
TRACK_RESETS = Counter(
    "csipos_track_restarts",
    "Tracks (re)started, by reason (new: no track; expired: idle too long; gated: too many "
    "consecutive gated measurements).",
    ["site", "reason"],
)

EXPOSE_SITES = True
"""Settings.expose_site_lists of this process: False folds every site label into `all`
and leaves out `csipos_model_info`, so the unauthenticated scrape names no site."""
HIDDEN_SITE = "all"


def site_label(site: str, known: Callable[[str], bool]) -> str:
    """Bound the `site` label: only sites the store knows, else `unknown`."""
    if not EXPOSE_SITES:
        return HIDDEN_SITE
    return site if known(site) else UNKNOWN_SITE


class JobCollector(Collector):
    """Adaptation job metrics computed from the job records at scrape time."""

    def __init__(self, records: Callable[[], Iterable[Any]]) -> None:
        self._records = records

    def collect(self) -> Iterator[Metric]:
        outcomes: Tally[str] = Tally()
        durations: dict[str, list[float]] = {"succeeded": [], "failed": []}
        running = 0
        for rec in self._records():
            if rec.state == "running":
                running += 1
            elif rec.state in durations:
                outcomes[rec.state] += 1
                if rec.started is not None and rec.finished is not None:
                    durations[rec.state].append(max(0.0, rec.finished - rec.started))
        total = CounterMetricFamily(
            "csipos_adapt_jobs", "Adaptation jobs finished, by outcome.", labels=["outcome"]
        )
        hist = HistogramMetricFamily(
            "csipos_adapt_job_duration_seconds",
            "Wall time of finished adaptation jobs, by outcome.",
            labels=["outcome"],
        )
        for outcome, values in durations.items():
            total.add_metric([outcome], outcomes[outcome])
            buckets = [(repr(b), float(sum(v <= b for v in values))) for b in JOB_DURATION_BUCKETS]
            buckets.append(("+Inf", float(len(values))))
            hist.add_metric([outcome], buckets, sum(values))
        yield total
        yield hist
        yield GaugeMetricFamily(
            "csipos_adapt_jobs_in_progress", "Adaptation jobs running now.", value=running
        )


def render(job_collector: JobCollector | None) -> tuple[bytes, str]:
    """The exposition text for `/metrics` (merged across workers in multiprocess mode)."""
    registry: CollectorRegistry
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    if job_collector is not None:
        registry.register(job_collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Forward(Collector):
    """Exposes the default registry inside a per-scrape registry (with the job collector)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.collect()


def mark_process_dead(pid: int) -> None:
    """Drop a finished worker's live gauges (uvicorn's process manager calls on exit)."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
