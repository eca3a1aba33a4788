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


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RETRY_MAX_RETRIES": "abc"}, "RETRY_MAX_RETRIES must be a whole number, not 'abc'"),
        ({"RETRY_BASE_DELAY": "soon"}, "RETRY_BASE_DELAY must be a number of seconds, not 'soon'"),
        ({"RETRY_IN_FLIGHT": "-1"}, "RETRY_IN_FLIGHT must not be negative"),
        ({"RETRY_MAX_DELAY": "100000"}, "RETRY_* settings do not make a retry policy: max_delay"),
        ({"LEDGER_POOL_MAX": "many"}, "LEDGER_POOL_MAX must be a whole number, not 'many'"),
        ({"DATABASE_URL": "mysql://u:secret@db/x"}, "DATABASE_URL must be a URL like postgresql://"),
        ({"LEDGER_MIGRATION_URL": "db.example"}, "LEDGER_MIGRATION_URL must be a URL like postgresql://"),
        ({"CELERY_BROKER_URL": "redis://db"}, "CELERY_BROKER_URL must be a URL like amqp://"),
        ({"TASKROUTER_BASE_URL": "taskrouter.twilio.com"}, "TASKROUTER_BASE_URL must be a URL like https://"),
        ({"WORKER_METRICS_PORT": "ninety"}, "WORKER_METRICS_PORT must be [host:]port"),
        ({"WORKER_METRICS_PORT": "0.0.0.0:70000"}, "WORKER_METRICS_PORT must be [host:]port"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_and_the_expected_form(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)  # a URL's password is never echoed


def test_urls_and_addresses_of_the_usual_forms_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "host=db dbname=reservations user=app",
            "CELERY_BROKER_URL": "amqps://app:pw@mq:5671/prod",
            "TASKROUTER_BASE_URL": "http://127.0.0.1:8099/",
            "WORKER_METRICS_PORT": "127.0.0.1:9808",
        }
    )
    assert settings.database_url == "host=db dbname=reservations user=app"
    assert settings.taskrouter_base_url == "http://127.0.0.1:8099"
    assert settings.worker_metrics_port == "127.0.0.1:9808"
