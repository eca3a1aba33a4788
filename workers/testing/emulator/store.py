"""The emulator's in-memory model and its rules: versions, the state machine, the transition log.

No I/O and no awaits: every check-and-set happens under one lock in one synchronous call, so
concurrent updates carrying the same ETag cannot both win, whether they arrive on the event
loop or from admin code on another thread. Statuses change only through the shared state
machine (``workers.core.state_machine``), never by rules of our own.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import replace

from workers.core.sids import is_sid, new_sid
from workers.core.state_machine import (
    CLIENT_TRANSITIONS,
    REJECTIONS_BEFORE_TASK_CANCELED,
    SYSTEM_TRANSITIONS,
    Status,
    status_after_client_update,
    status_after_instruction,
    status_after_system_event,
)
from workers.errors import IfMatchMismatch, InvalidParameter, ResourceConflict, UnknownResource
from workers.testing.emulator.model import (
    Reservation,
    StoreListener,
    Task,
    Transition,
    Worker,
    Workspace,
    logged_after,
    twilio_time,
)

# Admin verbs: another agent acting through the API (client transitions), TaskRouter acting by
# itself (system transitions), or a bare version bump ("touch").
CLIENT_VERBS: Mapping[str, Status] = {
    "accept": Status.ACCEPTED,
    "reject": Status.REJECTED,
    "wrapup": Status.WRAPPING,
    "complete": Status.COMPLETED,
}
SYSTEM_VERBS: Mapping[str, Status] = {
    "timeout": Status.TIMEOUT,
    "cancel": Status.CANCELED,
    "rescind": Status.RESCINDED,
}
ADMIN_VERBS = (*CLIENT_VERBS, *SYSTEM_VERBS, "touch")

DEFAULT_LOG_SIZE = 100_000
RACE_NOTE = "injected status race"


class _Keep:
    """The type of ``KEEP``: leave a setting as it is."""


KEEP = _Keep()


def race_verbs(status: Status) -> list[str]:
    """What someone else may do to a reservation in ``status``: another agent's client transitions
    (accept, reject, wrapup, complete) and TaskRouter's own (timeout, cancel, rescind)."""
    verbs = [verb for verb, target in CLIENT_VERBS.items() if target in CLIENT_TRANSITIONS.get(status, ())]
    verbs += [verb for verb, target in SYSTEM_VERBS.items() if target in SYSTEM_TRANSITIONS.get(status, ())]
    return verbs


class Store:
    """Workspaces, tasks, workers and reservations, with a bounded log of every modification."""

    def __init__(
        self,
        log_size: int = DEFAULT_LOG_SIZE,
        listener: StoreListener | None = None,
        workspace_defaults: tuple[str | None, tuple[str, ...] | None] = (None, None),
    ) -> None:
        """``listener`` hears of every creation and transition (the events); ``workspace_defaults``
        is the ``(event_callback_url, events_filter)`` a new workspace starts with."""
        self._lock = threading.Lock()
        self._log_size = log_size
        self._listener = listener
        self._workspace_defaults = workspace_defaults
        self.reset()

    def reset(self) -> None:
        """Forget everything (the transition log's sequence numbers start again at 1)."""
        with self._lock:
            self._workspaces: dict[str, Workspace] = {}
            self._tasks: dict[str, Task] = {}
            self._workers: dict[str, Worker] = {}
            self._reservations: dict[str, Reservation] = {}
            self._by_task: dict[str, list[str]] = {}
            self._by_worker: dict[str, list[str]] = {}
            self._log: deque[Transition] = deque(maxlen=self._log_size)
            self._sequence = 0

    # -- reads (records are immutable: a plain dict lookup is a consistent snapshot) -------------

    def workspace(self, sid: str) -> Workspace:
        found = self._workspaces.get(sid)
        if found is None:
            raise UnknownResource(f"Workspace {sid} does not exist")
        return found

    def reservation(self, sid: str) -> Reservation:
        found = self._reservations.get(sid)
        if found is None:
            raise UnknownResource(f"Reservation {sid} does not exist")
        return found

    def task(self, sid: str) -> Task:
        found = self._tasks.get(sid)
        if found is None:
            raise UnknownResource(f"Task {sid} does not exist")
        return found

    def worker(self, sid: str) -> Worker:
        found = self._workers.get(sid)
        if found is None:
            raise UnknownResource(f"Worker {sid} does not exist")
        return found

    def find(
        self, workspace_sid: str, sid: str, *, task_sid: str | None = None, worker_sid: str | None = None
    ) -> Reservation | None:
        """The reservation at a task- or worker-scoped path, or None when the path names no such thing."""
        found = self._reservations.get(sid)
        if found is None or found.workspace_sid != workspace_sid:
            return None
        if task_sid is not None and found.task_sid != task_sid:
            return None
        if worker_sid is not None and found.worker_sid != worker_sid:
            return None
        return found

    def task_reservations(self, workspace_sid: str, task_sid: str) -> list[Reservation] | None:
        """The task's reservations in creation order, or None when the task is unknown."""
        task = self._tasks.get(task_sid)
        if task is None or task.workspace_sid != workspace_sid:
            return None
        with self._lock:
            return [self._reservations[sid] for sid in self._by_task[task_sid]]

    def worker_reservations(self, workspace_sid: str, worker_sid: str) -> list[Reservation] | None:
        """The worker's reservations in creation order, or None when the worker is unknown."""
        worker = self._workers.get(worker_sid)
        if worker is None or worker.workspace_sid != workspace_sid:
            return None
        with self._lock:
            return [self._reservations[sid] for sid in self._by_worker[worker_sid]]

    def task_reservation_sids(self, task_sid: str) -> list[str]:
        with self._lock:
            return list(self._by_task.get(task_sid, ()))

    def transitions(self, reservation_sid: str | None = None, since: int = 0) -> list[Transition]:
        """The log (oldest first), optionally for one reservation and after a sequence number."""
        with self._lock:
            entries = list(self._log)
        return logged_after(entries, reservation_sid, since)

    # -- creation (admin) -------------------------------------------------------------------------

    def create_workspace(self, sid: str | None = None, friendly_name: str | None = None) -> Workspace:
        with self._lock:
            return self._workspace(sid, friendly_name)

    def update_workspace(
        self,
        sid: str,
        *,
        friendly_name: str | None = None,
        event_callback_url: str | _Keep | None = KEEP,
        events_filter: tuple[str, ...] | _Keep | None = KEEP,
    ) -> Workspace:
        """Change a workspace's name or event settings (``KEEP`` leaves one as it is; None clears it)."""
        with self._lock:
            current = self._workspaces.get(sid)
            if current is None:
                raise UnknownResource(f"Workspace {sid} does not exist")
            updated = replace(
                current,
                friendly_name=friendly_name or current.friendly_name,
                event_callback_url=(
                    current.event_callback_url
                    if isinstance(event_callback_url, _Keep)
                    else event_callback_url
                ),
                events_filter=current.events_filter if isinstance(events_filter, _Keep) else events_filter,
                date_updated=twilio_time(),
            )
            self._workspaces[sid] = updated
            return updated

    def create_task(
        self, workspace_sid: str | None = None, sid: str | None = None, rejections: int | None = None
    ) -> Task:
        """A task (or the existing one, its rejection count set when ``rejections`` is given)."""
        with self._lock:
            workspace = self._workspace(workspace_sid, None)
            return self._task(workspace.sid, sid, rejections)

    def create_worker(
        self, workspace_sid: str | None = None, sid: str | None = None, friendly_name: str | None = None
    ) -> Worker:
        with self._lock:
            workspace = self._workspace(workspace_sid, None)
            return self._worker(workspace.sid, sid, friendly_name)

    def create_reservation(
        self,
        *,
        sid: str | None = None,
        workspace_sid: str | None = None,
        task_sid: str | None = None,
        worker_sid: str | None = None,
        worker_name: str | None = None,
        status: Status = Status.PENDING,
        task_rejections: int | None = None,
    ) -> Reservation:
        """A new reservation (version 1), creating its workspace, task and worker when missing."""
        sid = _checked_sid(sid, "WR", "sid")
        with self._lock:
            if sid in self._reservations:
                raise ResourceConflict(f"Reservation {sid} already exists")
            workspace = self._workspace(workspace_sid, None)
            task = self._task(workspace.sid, task_sid, task_rejections)
            worker = self._worker(workspace.sid, worker_sid, worker_name)
            now = twilio_time()
            reservation = Reservation(
                sid=sid,
                workspace_sid=workspace.sid,
                task_sid=task.sid,
                worker_sid=worker.sid,
                worker_name=worker.friendly_name,
                status=status,
                version=1,
                date_created=now,
                date_updated=now,
            )
            self._reservations[sid] = reservation
            self._by_task[task.sid].append(sid)
            self._by_worker[worker.sid].append(sid)
            if self._listener is not None:
                self._listener.created(reservation)
            return reservation

    def _workspace(self, sid: str | None, friendly_name: str | None) -> Workspace:
        sid = _checked_sid(sid, "WS", "workspace_sid")
        existing = self._workspaces.get(sid)
        if existing is not None:
            return existing
        url, events = self._workspace_defaults
        now = twilio_time()
        workspace = Workspace(sid, friendly_name or f"Workspace {sid[-6:]}", url, events, now, now)
        self._workspaces[sid] = workspace
        return workspace

    def _task(self, workspace_sid: str, sid: str | None, rejections: int | None) -> Task:
        sid = _checked_sid(sid, "WT", "task_sid")
        if rejections is not None and rejections < 0:
            raise InvalidParameter("rejections", "A task's rejection count cannot be negative")
        existing = self._tasks.get(sid)
        if existing is not None:
            if existing.workspace_sid != workspace_sid:
                raise ResourceConflict(f"Task {sid} belongs to workspace {existing.workspace_sid}")
            if rejections is not None and rejections != existing.rejections:
                existing = Task(sid, workspace_sid, rejections, existing.canceled)
                self._tasks[sid] = existing
            return existing
        task = Task(sid, workspace_sid, rejections or 0)
        self._tasks[sid] = task
        self._by_task[sid] = []
        return task

    def _worker(self, workspace_sid: str, sid: str | None, friendly_name: str | None) -> Worker:
        sid = _checked_sid(sid, "WK", "worker_sid")
        existing = self._workers.get(sid)
        if existing is not None:
            if existing.workspace_sid != workspace_sid:
                raise ResourceConflict(f"Worker {sid} belongs to workspace {existing.workspace_sid}")
            if friendly_name is not None and friendly_name != existing.friendly_name:
                raise ResourceConflict(f"Worker {sid} is already named {existing.friendly_name!r}")
            return existing
        worker = Worker(sid, workspace_sid, friendly_name or f"Worker {sid[-6:]}")
        self._workers[sid] = worker
        self._by_worker[sid] = []
        return worker

    # -- modification ------------------------------------------------------------------------------

    def update(
        self,
        sid: str,
        params: Mapping[str, object],
        if_match: Collection[str] | None,
        request_id: str,
        *,
        concurrent_change: bool = False,
        status_race: float | None = None,
    ) -> Reservation:
        """:meth:`landed_update`'s reservation."""
        return self.landed_update(
            sid, params, if_match, request_id, concurrent_change=concurrent_change, status_race=status_race
        )[1]

    def landed_update(
        self,
        sid: str,
        params: Mapping[str, object],
        if_match: Collection[str] | None,
        request_id: str,
        *,
        concurrent_change: bool = False,
        status_race: float | None = None,
    ) -> tuple[Status, Reservation]:
        """Apply a validated API update (``parse_update_form``'s output) with optimistic concurrency;
        the status it found (after any injected change) and the reservation it left.

        ``if_match`` holds the acceptable ETags (``*`` matches any), or is None for an
        unconditional update. ``concurrent_change`` first bumps the version as another actor
        would (a ``conflict_storm`` fault); ``status_race`` (a draw in [0, 1)) first changes the
        status as someone else would (a ``status_race`` fault: see :func:`race_verbs`). Raises
        :class:`IfMatchMismatch` or :class:`TransitionRefused`, having changed nothing but those
        injected changes.
        """
        with self._lock:
            current = self._reservations.get(sid)
            if current is None:
                raise UnknownResource(f"Reservation {sid} does not exist")
            if status_race is not None:
                current = self._race(current, status_race, request_id)
            if concurrent_change:
                current = self._commit(
                    current, current.status, "fault", request_id, "touch", note="injected concurrent change"
                )
            if if_match is not None and "*" not in if_match and current.etag not in if_match:
                raise IfMatchMismatch(sid, ", ".join(if_match), current.etag)
            requested_status = params.get("ReservationStatus")
            if requested_status is not None:
                new_status = status_after_client_update(sid, current.status, Status(str(requested_status)))
                requested = f"ReservationStatus={requested_status}"
            else:
                instruction = str(params["Instruction"])
                accept_flag = "CallAccept" if instruction == "call" else "RedirectAccept"
                accept = params.get(accept_flag) is True
                new_status = status_after_instruction(sid, current.status, instruction, accept)
                requested = f"Instruction={instruction}"
            activity = params.get("WorkerActivitySid") if new_status is Status.REJECTED else None
            return current.status, self._change(
                current, new_status, "api", request_id, requested, None if activity is None else str(activity)
            )

    def _race(self, current: Reservation, draw: float, request_id: str) -> Reservation:
        """Someone else changes the status first; with nothing possible, a bare version bump."""
        verbs = race_verbs(current.status)
        if not verbs:
            return self._commit(current, current.status, "fault", request_id, "touch", note=RACE_NOTE)
        verb = verbs[min(len(verbs) - 1, int(draw * len(verbs)))]
        new_status = CLIENT_VERBS.get(verb) or SYSTEM_VERBS[verb]
        updated = self._commit(current, new_status, "fault", request_id, verb, note=RACE_NOTE)
        if new_status is Status.REJECTED:
            self._count_rejection(updated, None, "fault", request_id)
        return updated

    def change(
        self,
        sid: str,
        verb: str,
        *,
        worker_activity_sid: str | None = None,
        request_id: str | None = None,
        source: str = "admin",
    ) -> Reservation:
        """Change a reservation behind the API clients' backs (admin, or TaskRouter's own
        ``timeout``): see ``ADMIN_VERBS``."""
        if worker_activity_sid is not None and not is_sid(worker_activity_sid, "WA"):
            raise InvalidParameter(
                "worker_activity_sid", f"Invalid worker_activity_sid {worker_activity_sid!r}"
            )
        with self._lock:
            current = self._reservations.get(sid)
            if current is None:
                raise UnknownResource(f"Reservation {sid} does not exist")
            if verb == "touch":
                return self._commit(current, current.status, source, request_id, verb)
            if verb in CLIENT_VERBS:
                new_status = status_after_client_update(sid, current.status, CLIENT_VERBS[verb])
            elif verb in SYSTEM_VERBS:
                new_status = status_after_system_event(sid, current.status, SYSTEM_VERBS[verb])
            else:
                raise InvalidParameter(
                    "action", f"Unknown action {verb!r}: expected one of {', '.join(ADMIN_VERBS)}"
                )
            activity = worker_activity_sid if new_status is Status.REJECTED else None
            return self._change(current, new_status, source, request_id, verb, activity)

    def _change(
        self,
        current: Reservation,
        new_status: Status,
        source: str,
        request_id: str | None,
        requested: str,
        activity_sid: str | None,
    ) -> Reservation:
        """Commit a status decision, then its consequences (a rejection may cancel the task)."""
        updated = self._commit(current, new_status, source, request_id, requested, activity_sid=activity_sid)
        if new_status is Status.REJECTED and current.status is not Status.REJECTED:
            self._count_rejection(updated, activity_sid, source, request_id)
        return updated

    def _count_rejection(
        self, rejected: Reservation, activity_sid: str | None, source: str, request_id: str | None
    ) -> None:
        if activity_sid is not None:
            worker = self._workers[rejected.worker_sid]
            self._workers[worker.sid] = Worker(
                worker.sid, worker.workspace_sid, worker.friendly_name, activity_sid
            )
        task = self._tasks[rejected.task_sid]
        rejections = task.rejections + 1
        cancel = rejections >= REJECTIONS_BEFORE_TASK_CANCELED and not task.canceled
        self._tasks[task.sid] = Task(task.sid, task.workspace_sid, rejections, task.canceled or cancel)
        if not cancel:
            return
        note = f"task canceled after {REJECTIONS_BEFORE_TASK_CANCELED} rejections"
        for sid in self._by_task[task.sid]:
            other = self._reservations[sid]
            if other.status is Status.PENDING:
                status = status_after_system_event(sid, other.status, Status.CANCELED)
                self._commit(other, status, source, request_id, "cancel", note=note)

    def _commit(
        self,
        current: Reservation,
        new_status: Status,
        source: str,
        request_id: str | None,
        requested: str,
        *,
        activity_sid: str | None = None,
        note: str | None = None,
    ) -> Reservation:
        """Store the next version and log it. The caller holds the lock."""
        now = time.time()
        updated = Reservation(
            sid=current.sid,
            workspace_sid=current.workspace_sid,
            task_sid=current.task_sid,
            worker_sid=current.worker_sid,
            worker_name=current.worker_name,
            status=new_status,
            version=current.version + 1,
            date_created=current.date_created,
            date_updated=twilio_time(now),
            worker_activity_sid=activity_sid or current.worker_activity_sid,
        )
        self._reservations[current.sid] = updated
        self._sequence += 1
        transition = Transition(
            sequence=self._sequence,
            reservation_sid=current.sid,
            task_sid=current.task_sid,
            worker_sid=current.worker_sid,
            workspace_sid=current.workspace_sid,
            from_status=current.status,
            to_status=new_status,
            version_before=current.version,
            version_after=updated.version,
            source=source,
            request_id=request_id,
            requested=requested,
            at=now,
            note=note,
        )
        self._log.append(transition)
        if self._listener is not None:
            self._listener.transitioned(transition, updated)
        return updated


def _checked_sid(sid: str | None, prefix: str, name: str) -> str:
    if sid is None:
        return new_sid(prefix)
    if not is_sid(sid, prefix):
        raise InvalidParameter(name, f"Invalid {name} {sid!r}: must match ^{prefix}[0-9a-fA-F]{{32}}$")
    return sid
