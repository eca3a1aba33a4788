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


def test_there_are_no_default_twilio_credentials() -> None:
    from workers.taskrouter.gateway import TaskRouterGateway

    settings = Settings.from_env({})
    assert settings.twilio is None
    message = "no TaskRouter credentials for https://taskrouter.twilio.com: set TWILIO_ACCOUNT_SID"
    with pytest.raises(ConfigurationError, match=message):
        settings.twilio_credentials()
    with pytest.raises(ConfigurationError, match=message):
        TaskRouterGateway.from_settings(settings)


@pytest.mark.parametrize(
    "environ",
    [
        {"TWILIO_AUTH_TOKEN": "t"},
        {"TWILIO_API_KEY": "SK1", "TWILIO_API_SECRET": "s"},
        {"TWILIO_ACCOUNT_SID": "AC1"},
    ],
)
def test_incomplete_twilio_credentials_are_a_clear_error(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="TWILIO_"):
        Settings.from_env(environ)


def test_twilio_credentials_come_from_the_environment() -> None:
    token = Settings.from_env({"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_AUTH_TOKEN": "t"}).twilio_credentials()
    assert (token.account_sid, token.username, token.password) == ("AC1", "AC1", "t")
    key = Settings.from_env(
        {"TWILIO_ACCOUNT_SID": "AC1", "TWILIO_API_KEY": "SK1", "TWILIO_API_SECRET": "s"}
    ).twilio_credentials()
    assert (key.account_sid, key.username, key.password) == ("AC1", "SK1", "s")
