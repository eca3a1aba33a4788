"""docker-compose.yml, ops/Dockerfile and .env.example: the services, their health and their wiring.

No Docker engine is needed: the compose file is parsed as YAML; ``docker compose config`` runs
only where the compose plugin is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "ops" / "Dockerfile"
# Read by the code, but not by any deployed service: WorkerProcess (tests, demo, benchmarks).
NOT_DEPLOYED = {"KEEP_WORKER_LOGS"}
SERVICES = {
    "postgres",
    "rabbitmq",
    "migrate",
    "worker",
    "flower",
    "audit-api",
    "events-api",
    "emulator",
    "prometheus",
    "grafana",
    "rabbitmq-producer-user",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def variables_the_code_reads() -> set[str]:
    """Each NAME in ``os.environ.get("NAME")``, ``env.get("NAME")``, ``os.environ["NAME"]`` or a
    parser's ``(env, "NAME"`` in workers/."""
    pattern = re.compile(r"""(?:environ|env)(?:\.get\(|\[|,)\s*["']([A-Z][A-Z0-9_]+)["']""")
    names: set[str] = set()
    for path in (ROOT / "workers").rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    return names


def test_every_service_is_there(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in ("migrate", "rabbitmq-producer-user"):  # one-shot
            assert service["restart"] == "no"
            continue
        check = service.get("healthcheck")
        assert check is not None, name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("retries", 0) >= 3, name


def test_the_worker_runs_celery_with_threads_and_reports_ready_through_its_file(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    assert worker["entrypoint"] == ["celery", "-A", "workers", "worker"]
    assert "--pool=threads" in worker["command"]
    assert "--concurrency=${WORKER_CONCURRENCY:-32}" in worker["command"]
    assert "--hostname=worker@%h" in worker["command"]  # unique per replica: --scale worker=N
    assert "container_name" not in worker
    assert "ports" not in worker
    ready = worker["environment"]["WORKER_READY_FILE"]
    # Healthy once /readyz says so: the start-up checks passed, the ledger and RabbitMQ answer.
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])
    assert "WORKER_METRICS_PORT" in worker["environment"]
    assert any(mount.startswith(str(Path(ready).parent) + ":") for mount in worker["tmpfs"])
    assert worker["stop_signal"] == "SIGTERM"


def test_start_order_follows_health(compose: dict[str, Any]) -> None:
    services = compose["services"]

    def condition(service: str, dependency: str) -> str:
        return str(services[service]["depends_on"][dependency]["condition"])

    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("worker", "migrate") == "service_completed_successfully"
    assert condition("worker", "rabbitmq") == "service_healthy"
    assert condition("worker", "emulator") == "service_healthy"
    assert condition("audit-api", "migrate") == "service_completed_successfully"
    assert condition("events-api", "migrate") == "service_completed_successfully"
    assert condition("flower", "rabbitmq") == "service_healthy"


def test_named_volumes_keep_the_state(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert declared == {"postgres-data", "rabbitmq-data", "flower-data", "prometheus-data", "grafana-data"}
    used = {
        mount.split(":")[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))  # bind mounts of configuration
    }
    assert used == declared


def test_flower_has_basic_auth_and_the_management_api(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    # As the README starts it: our configuration without --conf (workers/flowerconfig.py).
    assert flower["entrypoint"] == ["celery", "-A", "workers", "flower"]
    env = flower["environment"]
    assert env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert env["FLOWER_ALLOW_CONTROL"] == "${FLOWER_ALLOW_CONTROL:-false}"
    assert re.fullmatch(r"http://\S+@rabbitmq:15672/api/", env["FLOWER_BROKER_API"])
    # Flower gets the broker and nothing else: no ledger, PII or Twilio secrets.
    assert set(env) == {
        "CELERY_BROKER_URL", "FLOWER_BASIC_AUTH", "FLOWER_BROKER_API", "FLOWER_ALLOW_CONTROL",
        "FLOWER_ADDRESS", "FLOWER_PORT", "FLOWER_PERSISTENT", "FLOWER_DB",
    }  # fmt: skip
    assert env["FLOWER_PERSISTENT"] == "true"
    assert env["FLOWER_DB"].startswith("/var/lib/flower/")
    assert compose["services"]["rabbitmq"]["image"].endswith("-management")
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_the_audit_api_needs_its_token(compose: dict[str, Any]) -> None:
    api = compose["services"]["audit-api"]
    assert api["command"][0] == "audit-api"
    assert api["environment"]["AUDIT_API_TOKEN"].startswith("${AUDIT_API_TOKEN:?")
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


def test_published_ports_bind_to_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_every_variable_the_code_reads_is_wired_and_documented(compose: dict[str, Any]) -> None:
    read = variables_the_code_reads() - NOT_DEPLOYED
    assert {"CELERY_BROKER_URL", "DATABASE_URL", "RETRY_MAX_RETRIES", "WORKER_READY_FILE"} <= read
    app_env = set(compose["x-app"]["environment"]) | set(compose["services"]["worker"]["environment"])
    app_env |= set(compose["services"]["audit-api"]["environment"])
    app_env |= set(compose["services"]["events-api"]["environment"])
    app_env |= set(compose["services"]["flower"]["environment"])  # FLOWER_ADDRESS, FLOWER_PORT (doctor)
    documented = ENV_EXAMPLE.read_text()
    for name in sorted(read):
        assert name in app_env, f"{name} is read by the code but not set in docker-compose.yml"
        assert re.search(rf"\b{name}\b", documented), f"{name} is not documented in .env.example"


def test_every_variable_compose_interpolates_has_a_line_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE.read_text()))
    assert used - set(env_example()) == set()


def test_the_example_holds_no_secret_that_would_let_compose_start() -> None:
    """``${NAME:?...}`` refuses an unset or empty NAME: every such value is empty in .env.example,
    so a copied example starts nothing until the operator sets each secret."""
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", COMPOSE.read_text()))
    assert {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "LEDGER_PII_KEY", "AUDIT_API_TOKEN"} <= required
    assert {"FLOWER_BASIC_AUTH", "RABBITMQ_PRODUCER_PASSWORD", "TWILIO_ACCOUNT_SID"} <= required
    example = env_example()
    assert {name: example[name] for name in required if example[name]} == {}
    assert "change-me" not in ENV_EXAMPLE.read_text()


def test_the_emulator_runs_only_under_the_dev_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["emulator"]["profiles"] == ["dev"]
    assert [name for name, service in services.items() if "profiles" in service] == ["emulator"]
    # Nothing points at it by default: the real Twilio, with credentials the operator sets.
    app_env = compose["x-app"]["environment"]
    assert app_env["TASKROUTER_BASE_URL"] == "${TASKROUTER_BASE_URL:-https://taskrouter.twilio.com}"
    assert app_env["TWILIO_ACCOUNT_SID"].startswith("${TWILIO_ACCOUNT_SID:?")
    assert "emulator-auth-token" not in str(app_env)
    assert services["worker"]["depends_on"]["emulator"]["required"] is False


def test_one_small_image_running_as_a_user_not_root() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    assert all(stage.endswith("-slim") or stage.startswith("python") for stage in stages)
    user = re.findall(r"^USER (\S+)", text, flags=re.MULTILINE)
    assert user
    assert user[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["reservations"]' in text
    # The build context is only what the image needs: never the virtualenv, caches or an .env.
    entries = [line for line in (ROOT / "ops" / "Dockerfile.dockerignore").read_text().splitlines() if line]
    entries = [line for line in entries if not line.startswith("#")]
    assert entries[0] == "*"
    allowed = [entry[1:].rstrip("/") for entry in entries if entry.startswith("!")]
    assert ".env" not in allowed
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.MULTILINE):
        assert any(copied == entry or copied.startswith(f"{entry}/") for entry in allowed), copied
    assert "flower" in text  # the flower service runs the same image


REQUIRED_SECRETS = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", COMPOSE.read_text()))


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


def test_docker_compose_accepts_the_file() -> None:
    if not docker_compose_works():
        pytest.skip(
            "`docker compose version` fails here (no compose plugin): the file was only parsed as YAML"
        )

    def config(env_file: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE), "config", "--quiet"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    refused = config(ENV_EXAMPLE)  # the example as it is: a secret is missing
    assert refused.returncode != 0
    assert "in .env" in refused.stderr
    filled = ENV_EXAMPLE.parent / ".env.test-filled"
    try:
        filled.write_text(
            "\n".join(
                f"{name}={value or 'set-' + name.lower()}" if name in REQUIRED_SECRETS else f"{name}={value}"
                for name, value in env_example().items()
            )
        )
        done = config(filled)
    finally:
        filled.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
