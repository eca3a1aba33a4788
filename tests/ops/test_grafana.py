"""ops/grafana: the dashboard compose provisions speaks only of metrics our processes export, over
the Prometheus data source compose provisions, and Grafana is not open to the world."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from workers import api_metrics, metrics  # noqa: F401 - importing them registers their metrics

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "ops" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "reservation-workers.json"
# Prometheus' own series (the process_* series come from prometheus_client's collector, in REGISTRY).
OTHERS = {"up"}


def exported() -> set[str]:
    names = set(OTHERS)
    for family in REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        for suffix in ("_total", "_bucket", "_count", "_sum"):
            names.add(family.name + suffix)
    return names


def targets() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target for panel in panels for target in panel.get("targets", [])]


def test_every_metric_the_dashboard_shows_is_exported() -> None:
    known = exported()
    shown: set[str] = set()
    for target in targets():
        # Metric names: identifiers followed by a selector or a range, not PromQL functions.
        names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[)", target["expr"]))
        assert names, target["expr"]
        assert names <= known, f"{target['expr']}: {names - known} is not exported"
        shown |= names
    for family in ("actions", "dead_letters", "retries", "conflicts", "ledger_errors"):
        assert f"reservations_{family}_total" in shown
    for histogram in (
        "taskrouter_request_duration_seconds",
        "ledger_write_duration_seconds",
        "queue_lag_seconds",
    ):
        assert any(name.startswith(f"reservations_{histogram}") for name in shown), histogram


def test_the_dashboard_uses_the_provisioned_data_source() -> None:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "reservation-workers"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_compose_provisions_it_and_grafana_needs_a_password() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    assert "./ops/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./ops/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "reservations.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    environment = grafana["environment"]
    assert environment["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert all(str(port).startswith("127.0.0.1:") for port in grafana["ports"])
    jobs = {
        job["job_name"]: job
        for job in yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs["audit-api"]["static_configs"][0]["targets"] == ["audit-api:8080"]
