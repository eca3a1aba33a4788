"""Valid v1 messages for the intake tests: the schema's own examples, and hypothesis strategies
that generate valid messages of every action from the catalogue (and mutate them).

(hypothesis-jsonschema cannot draw from the whole schema: its object strategy breaks on the
installed hypothesis, so the strategies are built from the catalogue the schema is generated from.)"""

from __future__ import annotations

import copy
import json
import uuid
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from workers.core.action import INSTRUCTION_ACTIONS, SCHEMA_ID, ActionKind
from workers.core.parameters import (
    BY_WIRE,
    PARAMETERS_BY_INSTRUCTION,
    PARAMETERS_BY_STATUS,
    REQUIRED_BY_INSTRUCTION,
    RESERVATION_STATUSES,
    Kind,
    Parameter,
)
from workers.core.schema import SCHEMAS_DIR

EXAMPLES_DIR = SCHEMAS_DIR / "examples" / "reservation-action.v1"


def example_paths() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.json"))


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EXAMPLES_DIR / f"{name}.json").read_text())
    return loaded


def fresh(message: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``message`` with a new action_id and ``changes`` (None removes a field)."""
    copied = copy.deepcopy(message)
    copied["action_id"] = str(uuid.uuid4())
    for key, value in changes.items():
        if value is None:
            copied.pop(key, None)
        else:
            copied[key] = value
    return copied


_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=24)
_HOSTS = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}(\.[a-z]{2,6}){1,2}\Z")
_URLS = st.builds(
    lambda scheme, host, path: f"{scheme}://{host}{path}",
    st.sampled_from(["http", "https"]),
    _HOSTS,
    st.from_regex(r"\A(/[A-Za-z0-9._~-]{0,12}){0,3}\Z"),
)


def value_for(parameter: Parameter) -> st.SearchStrategy[Any]:
    """Valid values of one catalogue parameter (the schema's leaves, drawn from the catalogue)."""
    if parameter.kind is Kind.BOOLEAN:
        return st.booleans()
    if parameter.kind is Kind.INTEGER:
        return st.integers(parameter.minimum, parameter.maximum)
    if parameter.kind is Kind.ENUM:
        return st.sampled_from(parameter.values)
    if parameter.kind is Kind.ENUM_LIST:
        return st.lists(st.sampled_from(parameter.values), min_size=1, unique=True)
    if parameter.kind is Kind.SID:
        assert parameter.pattern is not None
        return _sid(parameter.pattern[1:3])
    if parameter.kind is Kind.URI:
        return _URLS
    return _TEXT


def _sid(prefix: str) -> st.SearchStrategy[str]:
    return st.text("0123456789abcdefABCDEF", min_size=32, max_size=32).map(lambda h: prefix + h)


def _params(wire_names: tuple[str, ...], required: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, Any]]:
    chosen = [BY_WIRE[name] for name in wire_names]
    return st.fixed_dictionaries(
        {p.keyword: value_for(p) for p in chosen if p.wire in required},
        optional={p.keyword: value_for(p) for p in chosen if p.wire not in required},
    )


def _with_instruction(instruction: str, params: dict[str, Any]) -> dict[str, Any]:
    return {**params, "instruction": instruction}


def params_for(action: ActionKind) -> st.SearchStrategy[dict[str, Any]]:
    """Valid ``params`` of ``action``."""
    if action is ActionKind.UPDATE:
        statuses = st.sampled_from(["accepted", "rejected", "wrapping", "completed"])
        with_status = st.builds(lambda s: {"reservation_status": s}, statuses)
        instructions = [
            params_for(kind).map(partial(_with_instruction, kind.value))
            for kind in (ActionKind.CONFERENCE, ActionKind.DEQUEUE, ActionKind.CALL, ActionKind.REDIRECT)
        ]
        return st.one_of(with_status, *instructions)
    if action in INSTRUCTION_ACTIONS:
        return _params(PARAMETERS_BY_INSTRUCTION[action.value], REQUIRED_BY_INSTRUCTION[action.value])
    if action is ActionKind.REJECT:
        return _params(PARAMETERS_BY_STATUS["rejected"])
    return st.just({})


_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_TIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_OFFSETS).map(
    lambda moment: moment.isoformat()
)


@st.composite
def valid_messages(draw: st.DrawFn, actions: list[ActionKind] | None = None) -> dict[str, Any]:
    """A valid v1 message of any (or the given) action."""
    action = draw(st.sampled_from(actions or list(ActionKind)))
    message: dict[str, Any] = {
        "schema": SCHEMA_ID,
        "action_id": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        "action": action.value,
        "workspace_sid": draw(_sid("WS")),
        "reservation_sid": draw(_sid("WR")),
    }
    address = draw(st.sampled_from(["task", "worker", "both"]))
    if address in ("task", "both"):
        message["task_sid"] = draw(_sid("WT"))
    if address in ("worker", "both"):
        message["worker_sid"] = draw(_sid("WK"))
    params = draw(params_for(action))
    if params or action is ActionKind.UPDATE or draw(st.booleans()):
        message["params"] = params
    optional = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "expected_status": st.sampled_from(RESERVATION_STATUSES),
                "not_after": _TIMES,
                "correlation_id": _TEXT,
                "producer": _TEXT,
            },
        )
    )
    message.update(optional)
    return message


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with one random change: a field removed, added, retyped or replaced."""
    message = draw(valid_messages())
    target = message
    if "params" in message and message["params"] and draw(st.booleans()):
        target = message["params"]
    keys = sorted(target)
    how = draw(st.sampled_from(["remove", "add", "replace"]))
    if how == "remove":
        target.pop(draw(st.sampled_from(keys)))
    elif how == "add":
        target[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
    else:
        target[draw(st.sampled_from(keys))] = draw(JSON_VALUES)
    return message
