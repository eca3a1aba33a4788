"""ops/prometheus: the scrape config finds the workers and Flower where compose puts them, and the
alert rules speak only of metrics the workers export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import workers.metrics  # noqa: F401 - registers the workers' metrics

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def exported_names() -> set[str]:
    """Every sample name the workers' metrics produce (``_total``, ``_bucket``, ``_count`` ...)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        if family.name.startswith("reservations_"):
            names.update(sample.name for sample in family.samples)
            for suffix in ("_total", "_bucket", "_count", "_sum"):
                names.add(family.name + suffix)
    return names


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def test_prometheus_scrapes_every_worker_replica_and_flower() -> None:
    compose = load(ROOT / "docker-compose.yml")
    jobs = {job["job_name"]: job for job in load(CONFIG)["scrape_configs"]}
    workers_sd = jobs["reservation-workers"]["dns_sd_configs"][0]
    assert workers_sd["names"] == ["worker"]
    port = compose["services"]["worker"]["environment"]["WORKER_METRICS_PORT"]
    assert port == f"${{WORKER_METRICS_PORT:-{workers_sd['port']}}}"
    assert jobs["flower"]["static_configs"][0]["targets"] == ["flower:5555"]
    prometheus = compose["services"]["prometheus"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert load(CONFIG)["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_alerts_cover_dead_letters_conflicts_throttling_and_the_ledger() -> None:
    expressions = " ".join(rule["expr"] for rule in rules())
    for metric in (
        "reservations_dead_letters_total",
        "reservations_conflicts_total",
        'status="429"',
        "reservations_ledger_errors_total",
    ):
        assert metric in expressions


def test_every_metric_an_alert_uses_is_exported() -> None:
    exported = exported_names()
    for rule in rules():
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in {"warning", "critical"}
        for name in re.findall(r"\breservations_[a-z_]+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not a metric of workers/metrics.py"


def test_promtool_accepts_the_files() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: the files were only checked as YAML")
    for args in (["check", "config", str(CONFIG)], ["check", "rules", str(ALERTS)]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
