"""One vocabulary (workers.core.vocabulary): log fields, metric labels, audit output and the
ledger's own columns and kinds use its words and no synonyms."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel

from workers import logs, metrics
from workers.audit import api
from workers.audit.rows import EVENT_FIELDS
from workers.core.vocabulary import EVENT_KINDS, LEDGER_COLUMNS, OUTCOMES, WORDS
from workers.ledger.models import EventKind

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_log_fields_are_words_of_the_vocabulary() -> None:
    assert set(logs.FIELDS) <= WORDS, set(logs.FIELDS) - WORDS


def test_metric_labels_are_words_of_the_vocabulary() -> None:
    labelled = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    assert labelled, "workers.metrics defines its metrics at module level"
    for metric in labelled:
        names = set(metric._labelnames)
        assert names <= WORDS, (metric._name, names - WORDS)


def test_the_audit_output_names_fields_as_the_ledger_does() -> None:
    assert set(EVENT_FIELDS) <= WORDS, set(EVENT_FIELDS) - WORDS
    models: list[type[BaseModel]] = [api.Event, api.ActionEntry, api.ReservationEntry, api.TimelineStep]
    for model in models:
        fields = set(model.model_fields)
        assert fields <= WORDS, (model.__name__, fields - WORDS)


def test_event_kinds_and_outcomes_are_the_ledgers_and_the_schemas() -> None:
    assert tuple(kind.value for kind in EventKind) == EVENT_KINDS
    assert "received" not in OUTCOMES
    assert "retry" not in OUTCOMES
    assert set(LEDGER_COLUMNS) >= {"outcome", "attempt", "position", "twilio_error_code"}


def test_the_wire_schema_uses_no_synonym_of_a_ledger_word() -> None:
    schema = json.loads((SCHEMAS / "reservation-action.v1.schema.json").read_text(encoding="utf-8"))
    top = set(schema["properties"]) - {"schema", "params", "not_after"}
    assert top <= WORDS, top - WORDS
