"""Tracing's pure parts: which OTEL_* settings turn it on, and what of a message's headers is read."""

from __future__ import annotations

import pytest

from workers.config import Settings
from workers.errors import ConfigurationError
from workers.tracing import MAX_HEADER, carrier_of

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "OTLP"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp"),
    ],
)
def test_tracing_is_opt_in_by_the_standard_variables(env: dict[str, str], exporter: str | None) -> None:
    assert Settings.from_env(env).traces_exporter == exporter


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        (
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://o",
            },
            "http://c:4318/x",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
    ],
)
def test_the_traces_endpoint_as_opentelemetry_defines_it(env: dict[str, str], endpoint: str | None) -> None:
    assert Settings.from_env(env).otlp_traces_endpoint == endpoint


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named) as raised:
        Settings.from_env(env)
    assert "\n" not in str(raised.value)


def test_only_plausible_text_headers_are_read() -> None:
    assert carrier_of(None) == {}
    assert carrier_of({"traceparent": PARENT, "tracestate": "a=1", "other": "x"}) == {
        "traceparent": PARENT,
        "tracestate": "a=1",
    }
    for hostile in (b"00-bytes", 42, ["00-a", "00-b"], {"nested": PARENT}, "", "x" * (MAX_HEADER + 1)):
        assert carrier_of({"traceparent": hostile}) == {}
