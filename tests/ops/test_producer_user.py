"""The producers' RabbitMQ user (ops/PRODUCERS.md, docker-compose.yml): it can publish to the
``reservations`` exchange and nothing else: not to the apply queue, not through the default
exchange, and it cannot read the dead letters. Checked on a scratch vhost and user of this
machine's broker, with the permissions the compose file grants."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import amqp
import pytest
from kombu.connection import Connection

from tests.support.services import RABBITMQ_HOST, RABBITMQ_PORT, rabbitmq_problem
from workers.broker.producer import Producer
from workers.broker.topology import (
    ACTIONS_EXCHANGE,
    APPLY_EXCHANGE,
    DEAD_LETTER_QUEUE_NAME,
    actions_queue,
    apply_queue,
    dead_letter_queue,
)
from workers.core.action import Action, ActionKind

pytestmark = pytest.mark.integration

# The same regexes as docker-compose.yml's rabbitmq-producer-user service.
CONFIGURE, WRITE, READ = "^reservations$", "^reservations$", "^$"


@pytest.fixture(scope="module")
def producer_url() -> Iterator[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or rabbitmq_problem() is not None:
        pytest.skip("needs rabbitmqctl and a local RabbitMQ")
    vhost, user, password = f"producer-test-{uuid.uuid4().hex[:8]}", f"producer-{uuid.uuid4().hex[:8]}", "pw"

    def ctl_run(*args: str) -> None:
        subprocess.run([ctl, "-q", *args], check=True, capture_output=True)

    ctl_run("add_vhost", vhost)
    try:
        ctl_run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        ctl_run("add_user", user, password)
        ctl_run("set_permissions", "-p", vhost, user, CONFIGURE, WRITE, READ)
        # The workers' wiring, declared as the workers would (guest stands in for their user).
        with Connection(f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}") as conn:
            channel = conn.default_channel
            for queue in (actions_queue(), apply_queue(), dead_letter_queue()):
                queue(channel).declare()
        yield f"amqp://{user}:{password}@{RABBITMQ_HOST}:{RABBITMQ_PORT}/{vhost}"
    finally:
        subprocess.run([ctl, "-q", "delete_user", user], check=False, capture_output=True)
        subprocess.run([ctl, "-q", "delete_vhost", vhost], check=False, capture_output=True)


def _connect(url: str) -> amqp.Connection:
    rest = url.split("://", 1)[1]
    credentials, location = rest.split("@", 1)
    user, password = credentials.split(":", 1)
    vhost = location.split("/", 1)[1]
    connection = amqp.Connection(
        host=f"{RABBITMQ_HOST}:{RABBITMQ_PORT}",
        userid=user,
        password=password,
        virtual_host=vhost,
        confirm_publish=True,
    )
    connection.connect()
    return connection


def _publish(url: str, exchange: str, routing_key: str) -> None:
    connection = _connect(url)
    try:
        connection.channel().basic_publish(
            amqp.Message(b"{}", content_type="application/json"), exchange=exchange, routing_key=routing_key
        )
    finally:
        connection.collect()


def test_the_producer_user_publishes_to_the_reservations_exchange(producer_url: str) -> None:
    _publish(producer_url, ACTIONS_EXCHANGE.name, "action.accept")
    action = Action(
        uuid.uuid4(), ActionKind.ACCEPT, "WS" + "0" * 32, "WR" + "0" * 32, task_sid="WT" + "0" * 32
    )
    with Producer(producer_url) as producer:  # our own client works with these permissions too
        producer.publish(action)


@pytest.mark.parametrize(
    ("exchange", "routing_key"),
    [(APPLY_EXCHANGE.name, "reservations.apply"), ("", "reservations.apply"), ("reservations.dlx", "")],
    ids=["apply exchange", "default exchange", "dead-letter exchange"],
)
def test_the_producer_user_is_refused_everywhere_else(
    producer_url: str, exchange: str, routing_key: str
) -> None:
    with pytest.raises(amqp.exceptions.AccessRefused):
        _publish(producer_url, exchange, routing_key)


def test_the_producer_user_cannot_read_the_dead_letters(producer_url: str) -> None:
    connection = _connect(producer_url)
    try:
        with pytest.raises(amqp.exceptions.AccessRefused):
            connection.channel().basic_get(DEAD_LETTER_QUEUE_NAME)
    finally:
        connection.collect()
