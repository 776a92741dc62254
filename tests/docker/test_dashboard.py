"""The Grafana dashboard and provisioning, checked offline (Grafana cannot run here).

- `tsc` type-checks the dashboard against `Dashboard` from the npm package
  @grafana/schema (installed in the git-ignored docker/.node, see NPM_HOW);
- every panel's PromQL names only metrics that docs/architecture.md documents
  and that a real /metrics scrape of the service contains;
- the structure Grafana needs: unique panel ids, a 24-column grid, the
  provisioned datasource, the panels the issue asks for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import DASHBOARD, DOCKER, dashboard, load_yaml, run
from tests.docker.promql import architecture_metrics, metric_names, series_names

NODE_DIR = DOCKER / ".node"
NPM_HOW = (
    "npm install --prefix docker/.node @grafana/schema@13.2.3 typescript@7.0.2 (git-ignored folder)"
)


def _panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # panels of collapsed rows
    return out


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query."""
    out = [
        (f"panel {p['title']!r} {t['refId']}", t["expr"])
        for p in _panels()
        for t in p.get("targets", [])
    ]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            out.append((f"variable {var['name']}", q["query"] if isinstance(q, dict) else q))
    return out


def _metrics_used() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for where, expr in _queries():
        for name in metric_names(expr) - {"up"}:
            used.setdefault(name, set()).add(where)
    return used


# ---------------------------------------------------------------- type check
def _tsc() -> Path:
    tsc = NODE_DIR / "node_modules" / ".bin" / "tsc"
    schema = NODE_DIR / "node_modules" / "@grafana" / "schema"
    if shutil.which("node") is None or not tsc.exists() or not schema.exists():
        pytest.skip(f"node, tsc or @grafana/schema missing: {NPM_HOW}")
    return tsc


def _typecheck(tsc: Path, dash: dict[str, Any], name: str) -> tuple[int, str]:
    # An object literal in place (not an imported .json) keeps string literal
    # types and gets TypeScript's excess-property check: unknown keys fail too.
    source = NODE_DIR / f".check-{name}.ts"
    source.write_text(
        'import type { Dashboard } from "@grafana/schema";\n\n'
        f"export const dashboard: Dashboard = {json.dumps(dash, indent=2)};\n"
    )
    try:
        out = run(
            [
                str(tsc),
                "--noEmit",
                "--strict",
                "--skipLibCheck",
                "--module",
                "nodenext",
                "--moduleResolution",
                "nodenext",
                "--target",
                "es2022",
                str(source),
            ],
            cwd=NODE_DIR,
        )
    finally:
        source.unlink(missing_ok=True)
    return out.returncode, out.stdout + out.stderr


def test_dashboard_type_checks_against_grafana_schema() -> None:
    rc, out = _typecheck(_tsc(), dashboard(), "ok")
    assert rc == 0, out


def test_type_check_rejects_a_broken_dashboard() -> None:
    tsc = _tsc()
    wrong_type = dashboard()
    wrong_type["graphTooltip"] = 7  # not a DashboardCursorSync
    wrong_type["templating"]["list"][0]["refresh"] = "sometimes"
    rc, out = _typecheck(tsc, wrong_type, "wrong-type")
    assert rc != 0 and "DashboardCursorSync" in out and "VariableRefresh" in out, out
    unknown_key = dashboard()
    unknown_key["panelz"] = []
    rc, out = _typecheck(tsc, unknown_key, "unknown-key")
    assert rc != 0 and "panelz" in out, out


# ---------------------------------------------------------------- metric names
def test_queries_use_documented_metrics() -> None:
    documented = series_names(architecture_metrics())
    unknown = {m: w for m, w in _metrics_used().items() if m not in documented}
    assert not unknown, f"not in docs/architecture.md's metrics table: {unknown}"


def test_queries_use_exported_metrics(scraped_series: set[str]) -> None:
    unknown = {m: w for m, w in _metrics_used().items() if m not in scraped_series}
    assert not unknown, f"not on the service's /metrics: {unknown}"


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (route, le) (rate(csipos_http_request_duration_seconds_"
        'bucket{route=~"$route", status!="200"}[$__rate_interval] offset 1d))) / on (route) '
        "max without (instance) (csipos_models_loaded) and absent(up == 1)"
    )
    assert metric_names(expr) == {
        "csipos_http_request_duration_seconds_bucket",
        "csipos_models_loaded",
        "up",
    }
    assert metric_names("label_values(csipos_locate_predictions_total, site)") == {
        "csipos_locate_predictions_total"
    }


# ---------------------------------------------------------------- structure
def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "csipos"
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "prometheus", p["title"]
            assert p["targets"], f"panel {p['title']!r} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), p["title"]
    # What the issue asks the dashboard to show, by the metric each panel reads.
    used = _metrics_used()
    for metric in (
        "csipos_http_request_duration_seconds_count",  # request and error rate by route
        "csipos_http_request_duration_seconds_bucket",  # latency quantiles
        "csipos_inference_batch_size_bucket",
        "csipos_locate_predictions_total",
        "csipos_predicted_sigma_meters_bucket",
        "csipos_locate_out_of_site_total",  # out-of-site share per site
        "csipos_tracked_ues",  # tracking: tracks held, gated measurements
        "csipos_track_gated_measurements_total",
        "csipos_adapt_jobs_total",
        "csipos_adapt_job_duration_seconds_bucket",
        "csipos_models_loaded",
    ):
        assert metric in used, f"no panel shows {metric}"
    exprs = " ".join(e for _, e in _queries())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(csipos_http_request_duration" in exprs


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    (ds,) = load_yaml(DOCKER / "grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    (prov,) = load_yaml(DOCKER / "grafana/provisioning/dashboards/csipos.yml")["providers"]
    grafana = load_yaml(DOCKER.parent / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./docker/grafana/dashboards"] == prov["options"]["path"]
    assert mounts["./docker/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert DASHBOARD.parent == DOCKER / "grafana" / "dashboards"
