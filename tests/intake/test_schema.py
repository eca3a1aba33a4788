"""The committed JSON Schema: generated from the catalogue, well-formed, followed by the code, and
its examples valid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from tests.intake.messages import EXAMPLES_DIR, example_paths
from workers.core import validation
from workers.core.action import ActionKind
from workers.core.parameters import BY_KEYWORD, PARAMETERS, REQUIRED_BY_INSTRUCTION, Kind
from workers.core.schema import SCHEMA_FILE_NAME, SCHEMAS_DIR, build_schema, main, render
from workers.core.validation import Accepted, RejectCode, Rejected, decide

COMMITTED = SCHEMAS_DIR / SCHEMA_FILE_NAME


def committed() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COMMITTED.read_text(encoding="utf-8"))
    return loaded


def test_the_committed_file_is_what_the_catalogue_generates() -> None:
    # Fails when someone edits the file by hand, or changes the catalogue without regenerating:
    # run `python -m workers.core.schema` and commit both.
    assert COMMITTED.read_text(encoding="utf-8") == render(build_schema())
    assert main(["--check"]) == 0


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(committed())
    assert committed()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_catalogue_parameter_is_in_the_schema_by_its_keyword_with_its_constraints() -> None:
    definitions = committed()["$defs"]["parameters"]
    assert set(definitions) == set(BY_KEYWORD)
    assert "from_" in definitions
    for parameter in PARAMETERS:
        definition = definitions[parameter.keyword]
        assert definition["x-twilio-name"] == parameter.wire
        assert definition.get("x-pii", False) == parameter.pii
        assert definition.get("x-secret", False) == parameter.secret
        if parameter.kind is Kind.ENUM:
            assert definition["enum"] == list(parameter.values)
        if parameter.kind is Kind.ENUM_LIST:
            assert definition["items"]["enum"] == list(parameter.values)
        if parameter.kind is Kind.SID:
            assert definition["pattern"] == parameter.pattern
        if parameter.kind is Kind.INTEGER:
            assert (definition.get("minimum"), definition.get("maximum")) == (
                parameter.minimum,
                parameter.maximum,
            )


@pytest.mark.parametrize(
    ("action", "required"),
    [
        ("dequeue", ["dequeue_from"]),
        ("call", ["call_from", "call_url"]),
        ("redirect", ["redirect_call_sid", "redirect_url"]),
    ],
)
def test_instructions_require_their_parameters(action: str, required: list[str]) -> None:
    assert committed()["$defs"]["params"][action]["required"] == required


def test_status_actions_take_no_parameters_but_reject_takes_an_activity() -> None:
    params = committed()["$defs"]["params"]
    for action in ("accept", "wrapup", "complete"):
        assert params[action]["properties"] == {}
        assert params[action]["additionalProperties"] is False
    assert list(params["reject"]["properties"]) == ["worker_activity_sid"]


def test_there_is_a_valid_example_of_every_action() -> None:
    names = {path.stem for path in example_paths()}
    assert {kind.value for kind in ActionKind} <= names
    assert "accept-worker-scoped" in names


@pytest.mark.parametrize("path", example_paths(), ids=lambda p: p.stem)
def test_each_example_validates(path: Path) -> None:
    fate = decide(path.read_bytes(), "application/json")
    assert isinstance(fate, Accepted), fate
    assert Draft202012Validator(committed()).is_valid(json.loads(path.read_bytes()))
    # The Python model writes it back in a form the schema accepts.
    again = json.dumps(fate.action.to_message()).encode()
    assert isinstance(decide(again, "application/json"), Accepted)


def test_the_intake_validates_against_the_committed_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Change the file, and the intake follows it: the file, not a copy in the code, decides."""
    edited = committed()
    edited["$defs"]["parameters"]["region"]["enum"].remove("ie1")
    (tmp_path / SCHEMA_FILE_NAME).write_text(json.dumps(edited))
    monkeypatch.setattr(validation, "SCHEMAS_DIR", tmp_path)
    validation.validator.cache_clear()
    try:
        fate = decide((EXAMPLES_DIR / "conference.json").read_bytes(), "application/json")
    finally:
        monkeypatch.undo()
        validation.validator.cache_clear()
    assert isinstance(fate, Rejected)
    assert fate.code is RejectCode.INVALID_FIELD
    assert "params.region" in fate.reason
    assert isinstance(decide((EXAMPLES_DIR / "conference.json").read_bytes(), "application/json"), Accepted)


def test_without_the_file_the_generated_schema_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(validation, "SCHEMAS_DIR", tmp_path)
    assert validation.load_schema() == build_schema()


def test_a_catalogue_change_shows_in_the_generated_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REQUIRED_BY_INSTRUCTION, "conference", ("To",))
    assert build_schema()["$defs"]["params"]["conference"]["required"] == ["to"]
    monkeypatch.undo()
    assert "required" not in build_schema()["$defs"]["params"]["conference"]
    assert REQUIRED_BY_INSTRUCTION["conference"] == ()
