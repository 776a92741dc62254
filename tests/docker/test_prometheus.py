"""Prometheus config and alert rules: promtool checks, rule unit tests, metric names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.docker.conftest import COMPOSE_FILE, PROMETHEUS, load_yaml, need, run
from tests.docker.promql import architecture_metrics, metric_names, series_names

HOW = "Debian package prometheus"


def test_promtool_check_config() -> None:
    promtool = need("promtool", HOW)
    out = run([promtool, "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 rule files found" in out.stdout + out.stderr


def test_promtool_rule_unit_tests() -> None:
    promtool = need("promtool", HOW)
    out = run([promtool, "test", "rules", str(PROMETHEUS / "alerts.test.yml")])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("find", "replace"),
    [
        (") > 0.05", ") > 0.5"),  # error-rate threshold
        ("> 1.5 * site:", "> 5 * site:"),  # sigma drift ratio
        ("== 0\n        for: 1m", "== 0\n        for: 10m"),  # replica down delay
        ("ratio_rate10m > 0.1", "ratio_rate10m > 0.3"),  # out-of-site share
    ],
)
def test_rule_unit_tests_catch_a_changed_rule(tmp_path: Path, find: str, replace: str) -> None:
    """The unit tests are not vacuous: loosening a rule makes them fail."""
    promtool = need("promtool", HOW)
    text = (PROMETHEUS / "alerts.yml").read_text()
    assert find in text
    (tmp_path / "alerts.yml").write_text(text.replace(find, replace))
    shutil.copy(PROMETHEUS / "alerts.test.yml", tmp_path / "alerts.test.yml")
    out = run([promtool, "test", "rules", str(tmp_path / "alerts.test.yml")])
    assert out.returncode != 0, "the rule unit tests pass a broken rule"


def _rules() -> list[dict[str, object]]:
    return [r for g in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"]]


def test_every_alert_has_a_firing_unit_test() -> None:
    alerts = {str(r["alert"]) for r in _rules() if "alert" in r}
    assert {
        "CsiposHighErrorRate",
        "CsiposHighLatencyP99",
        "CsiposSiteSigmaDrift",
        "CsiposAdaptJobsFailing",
        "CsiposReplicaDown",
        "CsiposSiteOutOfSite",
    } <= alerts
    tested = {
        case["alertname"]
        for t in load_yaml(PROMETHEUS / "alerts.test.yml")["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts <= tested, f"alerts never shown to fire in alerts.test.yml: {alerts - tested}"


def _rule_metrics() -> set[str]:
    recorded = {str(r["record"]) for r in _rules() if "record" in r}
    names: set[str] = set()
    for r in _rules():
        names |= metric_names(str(r["expr"]))
    return names - recorded - {"up"}


def test_rules_use_documented_metrics() -> None:
    documented = series_names(architecture_metrics())
    unknown = _rule_metrics() - documented
    assert not unknown, f"alerts.yml uses metrics not in docs/architecture.md: {unknown}"


def test_rules_use_exported_metrics(scraped_series: set[str]) -> None:
    unknown = _rule_metrics() - scraped_series
    assert not unknown, f"alerts.yml uses metrics the service does not export: {unknown}"


def test_scrape_jobs_match_the_compose_services() -> None:
    """Prometheus discovers the replicas by the compose service names and ports."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    services = load_yaml(COMPOSE_FILE)["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job, port in (("api", "8000"), ("worker", "9100")):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [job] and sd["type"] == "A"
        assert str(sd["port"]) == port
        assert port in services[job]["expose"]
    assert "--port" in services["api"]["command"]
    assert services["api"]["command"][services["api"]["command"].index("--port") + 1] == "8000"
    assert services["worker"]["environment"]["CSIPOS_WORKER_METRICS_PORT"] == "9100"
