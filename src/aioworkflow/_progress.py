"""``report_progress``: a running node tells the store how far it got, cheaply.

Theory of operation
-------------------
The middleware binds a :class:`Reporter` to the node's delivery in a context variable before
the actor runs (``activate``) and unbinds it after (``finish``). A context variable reaches
sync actors (same thread, same context) and dramatiq's ``AsyncIO`` actors too: the worker
thread hands the coroutine to the event loop with ``run_coroutine_threadsafe``, whose callback
runs in a copy of the worker thread's context, and the task it creates copies that.

``report_progress`` only stores the latest value under a lock: no I/O, so an actor may call it
in a tight loop, from the event loop too. One flusher thread per process writes the latest
value of each node at most once per ``INTERVAL`` (``progress.lua``: one ``node_progress``
event); ``finish`` writes what is still pending before the node's completion is recorded, so
the final value is never lost and always lands before ``node_succeeded``. Progress is
best-effort: a store error drops that report (logged at debug level), never the task.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, final

from .errors import AioWorkflowError, ConfigurationError

if TYPE_CHECKING:
    from ._store._base import Store

__all__ = ["INTERVAL", "Reporter", "activate", "finish", "report_progress"]

logger = logging.getLogger("aioworkflow")

#: Least time between two progress writes of one node, in seconds.
INTERVAL = 0.25
#: Longest note kept, in characters (a note is for people, not for data).
MAX_NOTE = 200

_Value = tuple[float, float | None, str | None]


@final
class Reporter:
    """The progress channel of one running delivery of a node."""

    __slots__ = (
        "_flush_lock",
        "_last",
        "_lock",
        "_pending",
        "_scheduled",
        "message_id",
        "node",
        "store",
        "token",
        "workflow_id",
        "writes",
    )

    def __init__(
        self, store: Store, workflow_id: str, node: int, message_id: str, token: str
    ) -> None:
        self.store = store
        self.workflow_id = workflow_id
        self.node = node
        self.message_id = message_id
        self.token = token
        #: Progress writes sent to the store (for tests and debugging).
        self.writes = 0
        self._lock = threading.Lock()  # guards _pending and _scheduled: held for microseconds
        self._flush_lock = threading.Lock()  # one write at a time, in report order
        self._pending: _Value | None = None
        self._scheduled = False
        self._last = -math.inf

    def report(self, value: _Value) -> None:
        """Keep ``value`` as the latest; make sure a flush is due within ``INTERVAL``."""
        with self._lock:
            self._pending = value
            if self._scheduled:
                return
            self._scheduled = True
            due = max(time.monotonic(), self._last + INTERVAL)
        _FLUSHER.schedule(due, self)

    def flush(self) -> None:
        """Write the latest pending value, if any (flusher thread, or ``finish``)."""
        with self._flush_lock:
            with self._lock:
                value, self._pending = self._pending, None
                self._scheduled = False
                if value is None:
                    return
                self._last = time.monotonic()
            self.writes += 1
            try:
                self.store.progress(self.workflow_id, self.node, self.message_id, self.token, value)
            except (
                AioWorkflowError
            ) as exc:  # best-effort: a report is not worth failing a task over
                logger.debug(
                    "Progress of workflow %s node %d dropped: %r", self.workflow_id, self.node, exc
                )


@final
class _Flusher:
    """One daemon thread per process writing due reports, earliest first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Reporter]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, due: float, reporter: Reporter) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), reporter))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="aioworkflow-progress", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, reporter = heapq.heappop(self._heap)
            reporter.flush()


_FLUSHER = _Flusher()
_CURRENT: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "aioworkflow_progress", default=None
)


def activate(reporter: Reporter | None) -> None:
    """Bind ``reporter`` to the running actor (the middleware, before the actor runs; None:
    this delivery reports nothing)."""
    _CURRENT.set(reporter)


def finish() -> Reporter | None:
    """Unbind the running actor's reporter and write its pending value (after it ran)."""
    reporter = _CURRENT.get()
    if reporter is None:
        return None
    _CURRENT.set(None)
    reporter.flush()
    return reporter


def report_progress(done: float, total: float | None = None, note: str | None = None) -> None:
    """Report how far the running workflow node got: ``done`` out of ``total`` (optional).

    Call it from an actor running as a workflow node, as often as you like: the latest value
    is written at most every quarter second, and the last one before the node completes. It
    shows in ``status().running_nodes`` and as a ``"node_progress"`` event. Outside a
    workflow node it does nothing (a debug log). ``note`` is cut to 200 characters.

    Raises:
        ConfigurationError: ``done`` or ``total`` is not a finite number, or ``note`` not a
            string.
    """
    given: tuple[tuple[str, object], ...] = (("done", done), ("total", total))
    for name, value in given:
        if value is None and name == "total":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigurationError(f"report_progress: {name} must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ConfigurationError(f"report_progress: {name} must be finite, not {value!r}")
    if not isinstance(note, str | None):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ConfigurationError(f"report_progress: note must be a string, not {note!r}")
    reporter = _CURRENT.get()
    if reporter is None:
        logger.debug("report_progress(%r) outside a workflow node: ignored", done)
        return
    reporter.report((done, total, None if note is None else note[:MAX_NOTE]))
