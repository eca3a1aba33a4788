"""The background sender of Event Callbacks and Event Streams deliveries.

It never blocks the API: the store's listener hands it an event under the store's lock, and
:meth:`Sender.submit` only appends to a bounded queue. A thread of its own runs an event loop
that signs and POSTs each delivery over real HTTP (aiohttp), ``concurrency`` at a time, so a slow
or dead receiver slows nobody else. A full queue refuses the delivery and logs it ``overflow``
(the event stays in the Events resource, where reconciliation finds it): nothing is lost silently.

Retries follow Twilio's webhook connection overrides, read from the URL's fragment (which is
never sent, nor signed): ``ct`` connect timeout (ms, default 5000), ``rt`` read timeout (ms,
default 15000, Twilio's 15 s), ``tt`` total time for all attempts (ms, default 15000), ``rc``
retries (default 1) and ``rp`` what is retried (default ``ct``: a connection that could not be
made; also ``rt``, ``4xx``, ``5xx``, ``all``). A receiver that answers an error, or too slowly,
is not retried unless the URL asks for it, as with Twilio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from workers.testing.emulator.callback_faults import CallbackFaults, DeliveryPlan
from workers.testing.emulator.events import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    ConnectionOverrides,
    Event,
    callback_form,
    json_body,
    sign_form,
    sign_json,
    strip_fragment,
)
from workers.testing.emulator.model import logged_after

logger = logging.getLogger(__name__)

USER_AGENT = "TwilioProxy/1.1"
DEFAULT_QUEUE_SIZE = 10_000
DEFAULT_CONCURRENCY = 8
CALLBACK = "callback"
STREAM = "stream"
OVERFLOW = "overflow"
DROPPED = "dropped"
ERROR = "error"  # a bug of ours: logged with its traceback


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt, or a delivery that never left (``dropped``, ``overflow``)."""

    sequence: int
    at: float
    event_sid: str
    event_type: str
    reservation_sid: str
    channel: str
    url: str
    attempt: int
    copy: int
    outcome: str  # the HTTP status ("204"), "connect_error", "timeout", "dropped" or "overflow"
    faults: tuple[str, ...]


@dataclass(slots=True, eq=False)
class _Item:
    event: Event
    channel: str
    url: str
    plan: DeliveryPlan = field(default_factory=DeliveryPlan)
    generation: int = 0  # a reset forgets the deliveries of earlier generations
    decided: bool = False  # its faults are drawn once, when it first leaves the queue
    waiting_for: int = 0  # a reordered delivery: how many later ones it still lets pass


class DeliveryLog:
    """Every delivery attempt, oldest first; bounded; thread-safe."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._size = size
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._entries: deque[Delivery] = deque(maxlen=self._size)
            self._sequence = itertools.count(1)

    def record(self, item: _Item, attempt: int, copy: int, outcome: str) -> None:
        with self._lock:
            self._entries.append(
                Delivery(
                    next(self._sequence),
                    time.time(),
                    item.event.sid,
                    item.event.event_type,
                    item.event.reservation_sid,
                    item.channel,
                    strip_fragment(item.url),
                    attempt,
                    copy,
                    outcome,
                    item.plan.fired,
                )
            )

    def entries(self, reservation_sid: str | None = None, since: int = 0) -> list[Delivery]:
        with self._lock:
            entries = list(self._entries)
        return logged_after(entries, reservation_sid, since)


class Sender:
    """Delivers events on a thread of its own; :meth:`submit` never blocks."""

    def __init__(
        self,
        auth_token: str,
        faults: CallbackFaults,
        log: DeliveryLog,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._auth_token = auth_token
        self._faults = faults
        self.log = log
        self._queue_size = queue_size
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._queue: deque[_Item] = deque()
        self._held: list[_Item] = []
        self._in_flight = 0  # deliveries being sent (at most ``concurrency``)
        self._delayed = 0  # deliveries a delay fault set aside (held ones are in ``_held``)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._early: list[Callable[[], object]] = []
        self._generation = 0

    # -- from any thread ------------------------------------------------------------------------

    def submit(self, event: Event, channel: str, url: str) -> None:
        """Queue one delivery; a full queue logs it ``overflow`` instead of waiting."""
        with self._lock:
            item = _Item(event, channel, url, generation=self._generation)
            if len(self._queue) >= self._queue_size:
                full = True
            else:
                full = False
                self._queue.append(item)
        if full:
            logger.warning("emulator: callback queue full, %s of %s not sent", event.event_type, event.sid)
            self.log.record(item, 0, 0, OVERFLOW)
            return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(self._pump)

    def run_soon(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` on the sender's thread, soon (once it runs, when it is not running yet)."""
        loop = self._loop
        if loop is None:
            with self._lock:
                self._early.append(callback)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(callback)

    def idle(self) -> bool:
        """Nothing queued, held back, delayed or in flight."""
        with self._lock:
            return not self._queue and not self._held and self._in_flight == 0 and self._delayed == 0

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "queued": len(self._queue),
                "held": len(self._held),
                "delayed": self._delayed,
                "in_flight": self._in_flight,
            }

    def clear(self) -> None:
        """Forget what is queued or held (a reset); deliveries in flight finish."""
        with self._lock:
            self._generation += 1
            self._queue.clear()
            self._held.clear()

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="emulator-events", daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    # -- on the sender's loop ------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            session = loop.run_until_complete(self._open())
            self._session, self._loop = session, loop
        finally:
            ready.set()
        loop.call_soon(self._pump)
        with self._lock:
            early, self._early = self._early, []
        for callback in early:
            loop.call_soon(callback)
        try:
            loop.run_forever()
        finally:
            self._loop = None
            for task in list(self._tasks):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            loop.run_until_complete(session.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._concurrency))

    def _pump(self) -> None:
        """Start deliveries while there is room (``concurrency`` in flight)."""
        while True:
            with self._lock:
                if self._in_flight >= self._concurrency or not self._queue:
                    return
                item = self._queue.popleft()
                self._in_flight += 1
            self._start(self._deliver(item))

    def _start(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, item: _Item) -> None:
        try:
            if not item.decided:
                item.decided = True
                item.plan = self._faults.plan(item.channel, item.event.event_type, item.event.reservation_sid)
                if item.plan.drop:
                    self.log.record(item, 0, 0, DROPPED)
                    return
                if item.plan.delay or item.plan.hold:
                    self._set_aside(item)
                    return
            await self._send(item)
            self._release_held()
        except Exception:
            logger.exception("emulator: delivering %s failed", item.event.sid)
            self.log.record(item, 0, 0, ERROR)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._pump()

    def _set_aside(self, item: _Item) -> None:
        """Delay or hold a delivery without holding up those behind it."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if item.plan.hold:
                item.waiting_for = item.plan.hold
                self._held.append(item)
            else:
                self._delayed += 1
        loop.call_later(item.plan.hold_max if item.plan.hold else item.plan.delay, self._requeue, item)

    def _requeue(self, item: _Item) -> None:
        """A delay is over, or a held delivery waited as long as it may."""
        with self._lock:
            if not item.plan.hold:
                self._delayed -= 1
            elif any(held is item for held in self._held):
                self._held = [held for held in self._held if held is not item]
            else:
                return  # released already by later deliveries, or forgotten by a reset
            if item.generation != self._generation:
                return  # from before a reset: forgotten
            self._queue.appendleft(item)
        self._pump()

    def _release_held(self) -> None:
        """A delivery was sent: held ones waiting for it count down, and go when they reach 0."""
        with self._lock:
            for item in self._held:
                item.waiting_for -= 1
            released = [item for item in self._held if item.waiting_for <= 0]
            self._held = [item for item in self._held if item.waiting_for > 0]
            self._queue.extendleft(reversed(released))

    async def _send(self, item: _Item) -> None:
        """Sign and POST every copy the plan asks for, each with Twilio's retry rules."""
        target = strip_fragment(item.url)
        if item.channel == CALLBACK:
            form = callback_form(item.event)
            body, url = urlencode(form).encode(), target
            signature = sign_form(target, form, self._auth_token)
            content_type = "application/x-www-form-urlencoded"
        else:
            body = json_body([item.event])
            url, signature = sign_json(target, body, self._auth_token)
            content_type = "application/json"
        headers = {
            "Content-Type": content_type,
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: signature,
            IDEMPOTENCY_HEADER: f"{item.event.account_sid}-{item.event.sid}",
        }
        overrides = ConnectionOverrides.of(item.url)
        for copy in range(1, item.plan.copies + 1):
            await self._attempts(item, copy, url, body, headers, overrides)

    async def _attempts(
        self,
        item: _Item,
        copy: int,
        url: str,
        body: bytes,
        headers: dict[str, str],
        overrides: ConnectionOverrides,
    ) -> None:
        session = self._session
        if session is None:
            return
        started = time.monotonic()
        for attempt in range(1, overrides.retries + 2):
            left = overrides.total_timeout - (time.monotonic() - started)  # tt bounds all attempts
            timeout = aiohttp.ClientTimeout(
                total=max(left, 0.001),
                sock_connect=overrides.connect_timeout,
                sock_read=overrides.read_timeout,
            )
            try:
                async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
                    await response.read()
                    outcome = str(response.status)
                    failure = None if response.status < 400 else ("4xx" if response.status < 500 else "5xx")
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as error:
                outcome, failure = "connect_error", "ct"
                logger.debug("emulator: callback to %s: %r", url, error)
            except (TimeoutError, aiohttp.ClientError) as error:
                connect = isinstance(error, aiohttp.ConnectionTimeoutError)
                outcome, failure = ("connect_error", "ct") if connect else ("timeout", "rt")
            self.log.record(item, attempt, copy, outcome)
            if failure is None or not overrides.retries_after(failure):
                return
            if time.monotonic() - started >= overrides.total_timeout or attempt > overrides.retries:
                return
