"""The JSON Schema of the v1 action message, generated from the parameter catalogue.

``schemas/reservation-action.v1.schema.json`` is this module's output, committed so that producers
in any language can read it; a test fails when the two differ. To change the schema, change the
catalogue (or this generator) and run ``python -m workers.core.schema`` to rewrite the file.

Pure: building the schema does no I/O; only :func:`main` writes the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.core.action import INSTRUCTION_ACTIONS, SCHEMA_ID, STATUS_ACTIONS, ActionKind
from workers.core.parameters import (
    BY_WIRE,
    PARAMETERS,
    PARAMETERS_BY_INSTRUCTION,
    PARAMETERS_BY_STATUS,
    REQUIRED_BY_INSTRUCTION,
    RESERVATION_STATUSES,
    Kind,
    Parameter,
    Scope,
)

SCHEMA_FILE_NAME = "reservation-action.v1.schema.json"
SCHEMA_URI = "https://schemas.reservations.example/reservation-action.v1.schema.json"
# The repository's schemas/ directory (present in a source checkout and in the Docker image).
SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_LENGTH = 200

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
# RFC 3339 date-time with a mandatory offset (upper-case T and Z only, as Python parses them).
DATE_TIME_PATTERN = (
    "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)
URL_PATTERN = "^https?://[^\\s/?#]+([/?#]\\S*)?$"


def _sid(prefix: str, description: str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": f"^{prefix}[0-9a-fA-F]{{32}}$",
        "description": description,
    }


def parameter_schema(parameter: Parameter) -> dict[str, Any]:
    """One update parameter's schema: its JSON type and the seeds' constraints."""
    schema: dict[str, Any]
    if parameter.kind is Kind.BOOLEAN:
        schema = {"type": "boolean"}
    elif parameter.kind is Kind.INTEGER:
        schema = {"type": "integer"}
        if parameter.minimum is not None:
            schema["minimum"] = parameter.minimum
        if parameter.maximum is not None:
            schema["maximum"] = parameter.maximum
    elif parameter.kind is Kind.ENUM:
        schema = {"type": "string", "enum": list(parameter.values)}
    elif parameter.kind is Kind.ENUM_LIST:
        schema = {
            "type": "array",
            "items": {"type": "string", "enum": list(parameter.values)},
            "minItems": 1,
            "uniqueItems": True,
        }
    elif parameter.kind is Kind.SID:
        schema = {"type": "string", "pattern": parameter.pattern}
    elif parameter.kind is Kind.URI:
        schema = {"type": "string", "format": "uri", "pattern": URL_PATTERN, "maxLength": 2048}
    else:
        schema = {"type": "string", "minLength": 1, "maxLength": 1024}
    schema["x-twilio-name"] = parameter.wire
    if parameter.pii:
        schema["x-pii"] = True
    if parameter.secret:
        schema["x-secret"] = True
        schema["writeOnly"] = True
    if parameter.scopes != frozenset(Scope):
        schema["x-scopes"] = sorted(scope.value for scope in parameter.scopes)
    return schema


def _params_object(wire_names: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
    keywords = [BY_WIRE[name].keyword for name in wire_names]
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {keyword: {"$ref": f"#/$defs/parameters/{keyword}"} for keyword in keywords},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = [BY_WIRE[name].keyword for name in required]
    return schema


def _for_action(action: ActionKind, then: dict[str, Any]) -> dict[str, Any]:
    return {"if": {"properties": {"action": {"const": action.value}}, "required": ["action"]}, "then": then}


def _update_params() -> dict[str, Any]:
    """``update``: any parameter, exactly one of reservation_status and instruction."""
    schema = _params_object([p.wire for p in PARAMETERS])
    schema["allOf"] = [
        {
            "description": "exactly one of reservation_status and instruction",
            "oneOf": [{"required": ["reservation_status"]}, {"required": ["instruction"]}],
        },
        *(
            {
                "if": {"properties": {"instruction": {"const": instruction}}, "required": ["instruction"]},
                "then": {"required": [BY_WIRE[name].keyword for name in required]},
            }
            for instruction, required in REQUIRED_BY_INSTRUCTION.items()
            if required
        ),
    ]
    return schema


def action_params_schema(action: ActionKind) -> dict[str, Any]:
    """The ``params`` an action allows, and requires."""
    if action is ActionKind.UPDATE:
        return _update_params()
    if action in INSTRUCTION_ACTIONS:
        return _params_object(PARAMETERS_BY_INSTRUCTION[action.value], REQUIRED_BY_INSTRUCTION[action.value])
    status = STATUS_ACTIONS[action].value
    return _params_object(PARAMETERS_BY_STATUS.get(status, ()))


def _requires_params(action: ActionKind) -> bool:
    if action is ActionKind.UPDATE:
        return True
    return action in INSTRUCTION_ACTIONS and bool(REQUIRED_BY_INSTRUCTION[action.value])


def _task_only_rule() -> dict[str, Any]:
    """Parameters only the task-scoped endpoint takes need a task_sid (seed 000)."""
    task_only = [p.keyword for p in PARAMETERS if Scope.WORKER not in p.scopes]
    return {
        "if": {
            "properties": {"params": {"anyOf": [{"required": [keyword]} for keyword in task_only]}},
            "required": ["params"],
        },
        "then": {"required": ["task_sid"]},
        "description": f"{', '.join(task_only)} need the task-scoped endpoint: give task_sid",
    }


def build_schema() -> dict[str, Any]:
    """The whole v1 action schema, as a JSON-ready dict (draft 2020-12)."""
    actions = list(ActionKind)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_URI,
        "title": "Reservation action, version 1",
        "description": (
            "One producer request to change one Twilio TaskRouter reservation. Publish it as a UTF-8 "
            f"JSON body of at most {MAX_BODY_BYTES} bytes, content type application/json, persistent, "
            "to the topic exchange 'reservations' with routing key 'action.<action>'. Omit absent "
            "optional fields (null is refused). Parameters use twilio-python's keyword names "
            "(x-twilio-name gives the API's); x-pii marks values the ledger keeps only as keyed "
            "hashes, x-secret values it never keeps."
        ),
        "type": "object",
        "required": ["schema", "action_id", "action", "workspace_sid", "reservation_sid"],
        "properties": {
            "schema": {"const": SCHEMA_ID, "description": "the message's schema and version"},
            "action_id": {
                "type": "string",
                "format": "uuid",
                "pattern": UUID_PATTERN,
                "description": "a UUID the producer chooses: the idempotency key",
            },
            "action": {"type": "string", "enum": [a.value for a in actions]},
            "workspace_sid": _sid("WS", "the workspace"),
            "reservation_sid": _sid("WR", "the reservation to change"),
            "task_sid": _sid("WT", "the reservation's task: the task-scoped endpoint is used"),
            "worker_sid": _sid(
                "WK", "the reservation's worker: the worker-scoped endpoint is used when task_sid is absent"
            ),
            "params": {"type": "object", "description": "the update's body parameters, by keyword name"},
            "expected_status": {
                "type": "string",
                "enum": list(RESERVATION_STATUSES),
                "description": "apply only if the reservation is currently in this status",
            },
            "not_after": {
                "type": "string",
                "format": "date-time",
                "pattern": DATE_TIME_PATTERN,
                "description": "RFC 3339 time with an offset; after it the action is expired, not applied",
            },
            "correlation_id": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH},
            "producer": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_LENGTH},
        },
        "additionalProperties": False,
        "allOf": [
            {
                "description": "needs task_sid or worker_sid (given both, task_sid picks the endpoint)",
                "anyOf": [{"required": ["task_sid"]}, {"required": ["worker_sid"]}],
            },
            *(
                _for_action(
                    action,
                    {
                        "properties": {"params": {"$ref": f"#/$defs/params/{action.value}"}},
                        **({"required": ["params"]} if _requires_params(action) else {}),
                    },
                )
                for action in actions
            ),
            _task_only_rule(),
        ],
        "$defs": {
            "parameters": {p.keyword: parameter_schema(p) for p in PARAMETERS},
            "params": {action.value: action_params_schema(action) for action in actions},
        },
    }


def render(schema: dict[str, Any] | None = None) -> str:
    """The schema file's exact text: two-space indented JSON and a final newline."""
    return json.dumps(schema or build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.core.schema [--check]``: write (or check) the committed schema file."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = SCHEMAS_DIR / SCHEMA_FILE_NAME
    text = render()
    if "--check" in args:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            print(f"{path} differs from the catalogue: run python -m workers.core.schema", file=sys.stderr)
            return 1
        return 0
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
