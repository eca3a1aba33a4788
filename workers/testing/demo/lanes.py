"""Playing the scripts: seeding reservations and faults, publishing each step as outcomes land."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kombu.connection import Connection
from kombu.messaging import Producer as KombuProducer

from workers.broker.producer import Producer
from workers.broker.topology import ACTIONS_EXCHANGE
from workers.testing.demo.results import Sent
from workers.testing.demo.scenario import InvalidMessage, Publish, Race, Scenario, Script
from workers.testing.emulator.admin import EmulatorAdmin

PRODUCER_NAME = "reservations-demo"


@dataclass
class Lane:
    """One reservation's script being played: which step is next, and what it waits for."""

    script: Script
    sids: dict[str, str]
    rng: random.Random
    position: int = 0
    waiting: uuid.UUID | None = None
    published: list[tuple[uuid.UUID, Publish]] = field(default_factory=list)
    settled: int = 0

    @property
    def done(self) -> bool:
        return self.position >= len(self.script.steps)

    def advance(self, settled: Mapping[uuid.UUID, str], producer: Producer, admin: EmulatorAdmin) -> int:
        """Run every step that can run now; returns how many messages it published."""
        sent = 0
        while not self.done:
            if self.waiting is not None:
                if self.waiting not in settled:
                    return sent
                self.waiting = None
                self.settled += 1
                self.position += 1
                continue
            step = self.script.steps[self.position]
            if isinstance(step, Race):
                admin.change(self.sids["reservation_sid"], step.verb)
                self.position += 1
                continue
            action_id = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            message = self.message(action_id, step)
            for _ in range(2 if step.duplicate else 1):
                producer.publish(message)
                sent += 1
            self.published.append((action_id, step))
            self.waiting = action_id
        return sent

    def message(self, action_id: uuid.UUID, step: Publish) -> dict[str, Any]:
        message: dict[str, Any] = {
            "schema": "reservation-action/v1",
            "action_id": str(action_id),
            "action": step.action,
            **self.sids,
            "correlation_id": f"demo-{self.sids['reservation_sid'][-8:]}",
            "producer": PRODUCER_NAME,
        }
        if step.params:
            message["params"] = dict(step.params)
        return message

    def results(self, outcomes: Mapping[uuid.UUID, str]) -> list[Sent]:
        sid = self.sids["reservation_sid"]
        return [
            Sent(action_id, step.action, self.script.name, sid, step.expected, outcomes.get(action_id))
            for action_id, step in self.published
        ]


def _random_sid(rng: random.Random, prefix: str) -> str:
    return prefix + f"{rng.getrandbits(128):032x}"


def seed_lanes(scenario: Scenario, admin: EmulatorAdmin, rng: random.Random) -> list[Lane]:
    workspace = admin.create_workspace(friendly_name="Reservations demo")["sid"]
    lanes = []
    for number, script in enumerate(scenario.scripts, start=1):
        if script.seeded:
            info = admin.create_reservation(workspace_sid=workspace, worker_name=f"Agent {number:02d}")
            sids = {"workspace_sid": workspace, "reservation_sid": info.sid, "task_sid": info.task_sid}
        else:
            sids = {
                "workspace_sid": workspace,
                "reservation_sid": _random_sid(rng, "WR"),
                "task_sid": _random_sid(rng, "WT"),
            }
        if script.fault is not None:
            admin.add_fault(
                script.fault.kind,
                rate=script.fault.rate,
                seed=script.fault.seed,
                operations=["update"],
                reservation_sids=[sids["reservation_sid"]],
                retry_after=script.fault.retry_after,
            )
        lanes.append(Lane(script, sids, random.Random(rng.getrandbits(64))))
    return lanes


def publish_invalid(
    invalid: tuple[InvalidMessage, ...], broker_url: str, sids: Mapping[str, str]
) -> dict[str, uuid.UUID]:
    """Publish messages that skip validation, as a careless producer would; their action ids."""
    ids: dict[str, uuid.UUID] = {}
    with Connection(broker_url, transport_options={"confirm_publish": True}) as connection:
        producer = KombuProducer(connection)
        for bad in invalid:
            if bad.message is None:
                body = f"accept {sids['reservation_sid']} please".encode()
            else:
                action_id = uuid.uuid4()
                ids[bad.name] = action_id
                message = {
                    "schema": "reservation-action/v1",
                    "action_id": str(action_id),
                    **sids,
                    **bad.message,
                    "producer": PRODUCER_NAME,
                }
                body = json.dumps(message).encode()
            producer.publish(
                body,
                exchange=ACTIONS_EXCHANGE,
                routing_key="action.accept",
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                mandatory=True,
            )
    return ids
