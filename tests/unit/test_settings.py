"""Settings from the environment: the broker heartbeat reaches Celery's configuration, or stays Celery's."""

from __future__ import annotations

import pytest

from workers.composition import celery_config
from workers.config import Settings
from workers.errors import ConfigurationError


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("30", 30.0), (" 2.5 ", 2.5)])
def test_broker_heartbeat_is_passed_to_celery(value: str, expected: float) -> None:
    assert celery_config(Settings.from_env({"BROKER_HEARTBEAT": value}))["broker_heartbeat"] == expected


@pytest.mark.parametrize("environ", [{}, {"BROKER_HEARTBEAT": ""}])
def test_no_broker_heartbeat_leaves_celerys_default(environ: dict[str, str]) -> None:
    assert "broker_heartbeat" not in celery_config(Settings.from_env(environ))


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_a_bad_broker_heartbeat_is_a_clear_error(value: str) -> None:
    with pytest.raises(ConfigurationError, match="BROKER_HEARTBEAT"):
        Settings.from_env({"BROKER_HEARTBEAT": value})
