"""The Python producer client and ``reservations enqueue``: validated, confirmed publishes into the
same intake as every other producer; clear errors when the schema or the broker says no."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.intake.messages import example_paths
from tests.intake.test_intake_end_to_end import addressed
from tests.intake.wire import channel
from tests.support.e2e import action_for, wait_for_outcome
from tests.support.services import rabbitmq_vhost
from workers.broker.producer import InvalidAction, Producer, PublishError, encode, publish
from workers.cli import main
from workers.core.action import ActionKind
from workers.ledger.reader import LedgerReader
from workers.testing.emulator.admin import EmulatorAdmin
from workers.testing.processes import WorkerProcess


def test_an_action_object_and_a_wire_dict_are_both_published_and_applied(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    first, second = admin.create_reservation(), admin.create_reservation()
    action = action_for(first, ActionKind.DEQUEUE, params={"dequeue_from": "+15550100002"})
    message = addressed("accept", second)
    with Producer(broker_url) as producer:
        producer.publish(action)
        producer.publish(message)
    assert wait_for_outcome(ledger, action.action_id).outcome == "applied"
    assert wait_for_outcome(ledger, uuid.UUID(message["action_id"])).outcome == "applied"
    third = admin.create_reservation()
    publish(addressed("accept", third), broker_url)
    assert admin.reservation(first.sid).status == "accepted"


def test_an_invalid_action_is_refused_before_anything_is_sent(broker_url: str) -> None:
    bad = addressed_bad()
    with pytest.raises(InvalidAction) as raised, Producer(broker_url) as producer:
        producer.publish(bad)
    assert raised.value.code == "out_of_range"
    assert "params.call_timeout" in str(raised.value)
    with pytest.raises(InvalidAction):
        encode({"schema": "reservation-action/v1", "not_json": {1, 2}})


def addressed_bad() -> dict[str, Any]:
    message: dict[str, Any] = json.loads(Path("schemas/examples/reservation-action.v1/call.json").read_text())
    message["params"]["call_timeout"] = 5000
    return message


def test_no_exchange_raises_a_publish_error(broker_url: str) -> None:
    """On an empty vhost of its own; ``broker_url`` is requested for its check that RabbitMQ answers."""
    with (
        rabbitmq_vhost() as empty,
        pytest.raises(PublishError, match="did not confirm"),
        Producer(empty) as producer,
    ):
        producer.publish(
            addressed_bad() | {"params": {"call_from": "+1", "call_url": "https://x.example.com/"}}
        )


def test_an_unroutable_message_raises_a_publish_error(broker_url: str) -> None:
    """The exchange exists but no queue is bound: without ``mandatory`` it would vanish, confirmed.

    On a vhost of its own, empty; ``broker_url`` is requested for its check that RabbitMQ answers.
    """
    with rabbitmq_vhost() as empty:
        with channel(empty) as ch:
            ch.exchange_declare("reservations", "topic", durable=True, auto_delete=False)
        with pytest.raises(PublishError, match=r"NO_ROUTE|312"), Producer(empty) as producer:
            producer.publish(
                addressed_bad() | {"params": {"call_from": "+1", "call_url": "https://x.example.com/"}}
            )


def test_connect_opens_the_connection_up_front_and_fails_fast_on_a_dead_broker(broker_url: str) -> None:
    with Producer(broker_url) as producer:
        producer.connect()
        assert producer._connection is not None
        assert producer._connection.connected
    unused_port = "amqp://guest:guest@127.0.0.1:1//"
    with (
        pytest.raises(PublishError, match="cannot reach RabbitMQ"),
        Producer(unused_port) as producer,
    ):
        producer.connect()


def test_errors_survive_pickling() -> None:
    for error in (InvalidAction("bad_sid", "task_sid: must match"), PublishError("no confirm")):
        assert str(pickle.loads(pickle.dumps(error))) == str(error)  # noqa: S301 - our own bytes


def _json_lines(messages: list[dict[str, Any]]) -> str:
    lines = [json.dumps(messages[0]), "{not json", json.dumps(messages[1]), json.dumps(addressed_bad())]
    return "\n".join([*lines, json.dumps(messages[2])]) + "\n\n"


def _array(messages: list[dict[str, Any]]) -> str:
    return json.dumps([messages[0], "accept", messages[1], addressed_bad(), messages[2]], indent=2)


@pytest.mark.parametrize(
    ("layout", "said"),
    [
        (_json_lines, ("line 2: not JSON", "line 4: invalid action (out_of_range)")),
        (_array, ("item 2: not a JSON object", "item 4: invalid action (out_of_range)")),
    ],
    ids=["json-lines", "json-array"],
)
def test_cli_enqueues_a_file_and_reports_bad_entries_where_they_are(
    layout: Callable[[list[dict[str, Any]]], str],
    said: tuple[str, str],
    worker: WorkerProcess,
    admin: EmulatorAdmin,
    ledger: LedgerReader,
    broker_url: str,
    tmp_path: Path,
) -> None:
    messages = [addressed("accept", admin.create_reservation()) for _ in range(3)]
    path = tmp_path / "actions"
    path.write_text(layout(messages))
    result = CliRunner().invoke(
        main, ["enqueue", "--file", str(path), "--broker-url", broker_url, "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    for words in said:
        assert words in result.output
    assert "3 published, 2 failed" in result.output
    for message in messages:
        assert wait_for_outcome(ledger, uuid.UUID(message["action_id"])).outcome == "applied"


def test_cli_reads_stdin_and_a_single_argument(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str
) -> None:
    runner = CliRunner()
    from_stdin = addressed("accept", admin.create_reservation())
    result = runner.invoke(
        main,
        ["enqueue", "--file", "-", "--broker-url", broker_url, "--progress"],
        input=json.dumps(from_stdin) + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "1 published, 0 failed" in result.output
    argument = addressed("accept", admin.create_reservation())
    result = runner.invoke(main, ["enqueue", json.dumps(argument)], env={"CELERY_BROKER_URL": broker_url})
    assert result.exit_code == 0, result.output
    for message in (from_stdin, argument):
        assert wait_for_outcome(ledger, uuid.UUID(message["action_id"])).outcome == "applied"


def test_cli_dry_run_publishes_nothing_and_usage_errors(broker_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["enqueue", "--dry-run", json.dumps(addressed_bad())])
    assert result.exit_code == 1
    assert "0 valid, 1 failed" in result.output
    assert runner.invoke(main, ["enqueue"]).exit_code == 2


def test_cli_enqueues_the_schemas_examples_from_their_own_pretty_printed_files(
    worker: WorkerProcess, admin: EmulatorAdmin, ledger: LedgerReader, broker_url: str, tmp_path: Path
) -> None:
    """Each example file as it is (pretty-printed) passes --dry-run; pointed at a seeded reservation
    and with a new action_id, but still pretty-printed, it is published and applied."""
    runner = CliRunner()
    paths = example_paths()
    assert len(paths) >= 9
    for path in paths:
        result = runner.invoke(
            main, ["enqueue", "--dry-run", "--file", str(path), "--broker-url", broker_url]
        )
        assert result.exit_code == 0, (path.name, result.output)
        assert "1 valid, 0 failed" in result.output
    start = {"wrapup": "accepted", "complete": "accepted"}
    applied: list[str] = []
    for path in paths:
        message = addressed(path.stem, admin.create_reservation(status=start.get(path.stem, "pending")))
        copy = tmp_path / path.name
        copy.write_text(json.dumps(message, indent=4))
        result = runner.invoke(
            main, ["enqueue", "--file", str(copy), "--broker-url", broker_url, "--no-progress"]
        )
        assert result.exit_code == 0, (path.name, result.output)
        applied.append(message["action_id"])
    for action_id in applied:
        assert wait_for_outcome(ledger, uuid.UUID(action_id)).outcome == "applied"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            '{\n  "schema": "reservation-action/v1",\n  "action": \n}\n',
            "file: not JSON: Expecting value at line 4",
        ),
        ('[\n  {"a": 1},\n', "file: not JSON"),
        ("", "0 valid, 0 failed"),
    ],
)
def test_cli_says_once_where_a_broken_file_breaks(text: str, said: str, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    result = CliRunner().invoke(main, ["enqueue", "--dry-run", "--file", str(path)])
    assert said in result.output
    assert result.output.count("not JSON") <= 1
