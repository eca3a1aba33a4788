"""The apply queue's guard: which task messages reach Celery's handler (``refusal``), whatever
label a JSON body's encoding carries, and never a body that is not UTF-8."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from workers.broker.guard import refusal
from workers.broker.topology import APPLY_TASK_NAME


@dataclass
class TaskMessage:
    body: bytes
    content_type: str | None = "application/json"
    content_encoding: str | None = "utf-8"
    headers: dict[str, Any] = field(default_factory=lambda: {"task": APPLY_TASK_NAME, "id": "1"})


BODY = json.dumps([[{"action_id": "x"}], {}, {"callbacks": None}]).encode("utf-8")


@pytest.mark.parametrize("encoding", ["utf-8", "UTF8", "binary", "", None])
def test_a_json_task_passes_whatever_its_encoding_label(encoding: str | None) -> None:
    assert refusal(TaskMessage(BODY, content_encoding=encoding)) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (TaskMessage(BODY, content_encoding="gzip"), "content_encoding"),
        (TaskMessage(BODY, content_type="application/x-python-serialize"), "content_type"),
        # json.loads reads UTF-16 bytes as readily as UTF-8: the label says binary, the bytes are not UTF-8.
        (TaskMessage(json.dumps([[{}], {}, {}]).encode("utf-16"), content_encoding="binary"), "not_utf8"),
        (TaskMessage(b"[[{}], {}", content_encoding="binary"), "invalid_json"),
    ],
)
def test_other_encodings_and_bytes_are_refused(message: TaskMessage, code: str) -> None:
    refused = refusal(message)  # type: ignore[arg-type]
    assert refused is not None
    assert refused[0] == code
