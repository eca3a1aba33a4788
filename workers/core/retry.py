"""Retry policy: how long to wait before trying again, as pure functions.

Two loops, kept apart (design doc, steps 4 and 5):

- a 412 conflict is retried at once, a few times, with a small jittered pause (as client-go does for
  resourceVersion conflicts), re-fetching and re-planning each time; then it falls back to the
  delayed retries below;
- throttling, 5xx, time-outs and connection errors get exponential backoff with "equal jitter"
  (half of each step fixed, half random, so no retry comes back at once),
  never sooner than the server's ``Retry-After``.

Delays are capped well below RabbitMQ's ``consumer_timeout`` (30 minutes by default), because a
Celery countdown task is held unacknowledged by the worker until it is due. Randomness comes in
through ``rng``, so tests can fix it, and waits can be switched off by the caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# RabbitMQ closes a consumer's channel when a delivery stays unacknowledged this long (default).
RABBITMQ_CONSUMER_TIMEOUT_SECONDS = 30 * 60


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    immediate_conflict_tries: int = 3
    immediate_conflict_pause: float = 0.010
    max_delayed_retries: int = 8
    base_delay: float = 0.5
    max_delay: float = 120.0
    # How long an update may still be on its way to TaskRouter (the gateway's connect and read
    # time-outs, 10 s each, and a margin): a lost answer younger than this is not resolved yet,
    # since the update may still land (its run may have lost its lock with its connection).
    in_flight: float = 25.0

    def __post_init__(self) -> None:
        if self.max_delay >= RABBITMQ_CONSUMER_TIMEOUT_SECONDS / 2:
            raise ValueError("max_delay must stay well below RabbitMQ's consumer_timeout")
        if (
            self.base_delay <= 0
            or self.immediate_conflict_tries < 0
            or self.max_delayed_retries < 0
            or self.in_flight < 0
        ):
            raise ValueError("retry policy values must be positive")

    def conflict_pause(self, conflicts_so_far: int, rng: random.Random) -> float | None:
        """Pause before the next immediate try after a 412, or None to fall back to a delayed retry."""
        if conflicts_so_far >= self.immediate_conflict_tries:
            return None
        return rng.uniform(0, self.immediate_conflict_pause * (2**conflicts_so_far))

    def delay(
        self, retries_so_far: int, rng: random.Random, retry_after: float | None = None
    ) -> float | None:
        """Delay before delayed retry number ``retries_so_far + 1``, or None once retries are exhausted."""
        if retries_so_far >= self.max_delayed_retries:
            return None
        ceiling = min(self.max_delay, self.base_delay * (2**retries_so_far))
        jittered = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            jittered = max(jittered, retry_after)
        return min(jittered, self.max_delay)
