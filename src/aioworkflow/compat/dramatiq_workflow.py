"""dramatiq-workflow 0.3.0's API on aioworkflow: migrating is changing one import.

``from dramatiq_workflow import Workflow, Chain, Group, WithDelay, WorkflowMiddleware`` becomes
``from aioworkflow.compat.dramatiq_workflow import ...``; the rest of the code stays as it is:

* ``Chain(*tasks)``, ``Group(*tasks)`` (``.tasks``), ``WithDelay(task, delay)`` (``.task``,
  ``.delay``), ``Message``, ``WorkflowType``;
* ``Workflow(workflow, broker=None).run()``: synchronous, returns ``None``, works from sync code
  and from inside a running event loop (it then blocks that loop for the submit, as
  dramatiq-workflow's does; async code should move to :class:`aioworkflow.Workflow`);
* ``WorkflowMiddleware(rate_limiter_backend, barrier_type=..., callback_storage=...)`` taking
  dramatiq's ``RedisBackend`` (the store is a ``RedisStore`` on the backend's client) or
  ``StubBackend`` (a ``MemoryStore``);
* the same exception types: a step that is not a message, Chain, Group or WithDelay, or an
  argument the encoder refuses, is a ``TypeError`` (:class:`WorkflowTypeError`, also a
  ``GraphError``); a broker without the middleware is a ``RuntimeError``
  (:class:`MiddlewareNotFound`, also a ``ConfigurationError``).

Rolling upgrade: messages that dramatiq-workflow queued before the switch carry its
``workflow_completion_callbacks`` option. When dramatiq-workflow is still installed, this
middleware hands them to a dramatiq-workflow middleware built from the same arguments, and
declares its ``workflow_noop`` actor, so those workflows finish with dramatiq-workflow's
semantics; once none is left, dramatiq-workflow can be uninstalled. Without it, such a message
is logged as an error (its workflow cannot continue).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import dramatiq

from aioworkflow._client import Workflow as _NativeWorkflow
from aioworkflow._graph import Chain as _Chain, Group as _Group, WithDelay as _WithDelay
from aioworkflow._middleware import WorkflowMiddleware as _WorkflowMiddleware, find_store
from aioworkflow._store._memory import MemoryStore
from aioworkflow._store._redis import RedisStore
from aioworkflow.errors import ConfigurationError, GraphError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dramatiq.broker import MessageProxy
    from dramatiq.worker import Worker

    from aioworkflow._graph import Step
    from aioworkflow._store._base import StoreBackend

__all__ = [
    "Chain",
    "Group",
    "Message",
    "MiddlewareNotFound",
    "WithDelay",
    "Workflow",
    "WorkflowMiddleware",
    "WorkflowType",
    "WorkflowTypeError",
    "walk_messages",
]

logger: logging.Logger = logging.getLogger("aioworkflow")

#: The option dramatiq-workflow's in-flight messages carry (its completion callbacks).
LEGACY_OPTION = "workflow_completion_callbacks"

Message = dramatiq.Message


class WorkflowTypeError(GraphError, TypeError):
    """A step or an argument the workflow cannot run (dramatiq-workflow raised TypeError)."""


class MiddlewareNotFound(ConfigurationError, RuntimeError):
    """The broker has no WorkflowMiddleware (dramatiq-workflow raised RuntimeError)."""


class Chain:
    """Tasks that run one after the other."""

    def __init__(self, *tasks: WorkflowType) -> None:
        self.tasks: list[WorkflowType] = list(tasks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Chain) and self.tasks == other.tasks

    def __hash__(self) -> int:
        """Unhashable: mutable, compared by value."""
        raise TypeError(f"unhashable type: {type(self).__name__!r}")

    def __str__(self) -> str:
        return f"Chain({self.tasks})"


class Group:
    """Tasks that run in parallel; what follows waits for all of them."""

    def __init__(self, *tasks: WorkflowType) -> None:
        self.tasks: list[WorkflowType] = list(tasks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Group) and self.tasks == other.tasks

    def __hash__(self) -> int:
        """Unhashable: mutable, compared by value."""
        raise TypeError(f"unhashable type: {type(self).__name__!r}")

    def __str__(self) -> str:
        return f"Group({self.tasks})"


class WithDelay:
    """``task``, started ``delay`` milliseconds after it is due."""

    def __init__(self, task: WorkflowType, delay: int) -> None:
        self.task = task
        self.delay = delay

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WithDelay) and (self.task, self.delay) == (other.task, other.delay)

    def __hash__(self) -> int:
        """Unhashable: mutable, compared by value."""
        raise TypeError(f"unhashable type: {type(self).__name__!r}")

    def __str__(self) -> str:
        return f"WithDelay({self.task}, {self.delay})"


WorkflowType: TypeAlias = "dramatiq.Message[Any] | Chain | Group | WithDelay"


def walk_messages(workflow: WorkflowType) -> Iterator[dramatiq.Message[Any]]:
    """Every message of ``workflow``, depth first in definition order."""
    stack: list[object] = [workflow]
    while stack:
        step = stack.pop()
        if isinstance(step, (Chain, Group)):
            stack.extend(reversed(step.tasks))
        elif isinstance(step, WithDelay):
            stack.append(step.task)
        elif isinstance(step, dramatiq.Message):
            yield step
        else:
            raise WorkflowTypeError(f"Unsupported workflow type: {type(step)}")


def _to_canvas(workflow: object) -> Step:
    """The aioworkflow canvas of a dramatiq-workflow one (built without recursion)."""
    # Post-order over an explicit stack: (step, converted children so far).
    done: list[Step] = []
    stack: list[tuple[object, bool]] = [(workflow, False)]
    while stack:
        step, expanded = stack.pop()
        if isinstance(step, dramatiq.Message):
            done.append(cast("Step", step))
            continue
        if not isinstance(step, (Chain, Group, WithDelay)):
            raise WorkflowTypeError(f"Unsupported workflow type: {type(step)}")
        children: list[object] = [step.task] if isinstance(step, WithDelay) else list(step.tasks)
        if not expanded:
            stack.append((step, True))
            stack.extend((c, False) for c in reversed(children))
            continue
        parts = done[len(done) - len(children) :]
        del done[len(done) - len(children) :]
        if isinstance(step, Chain):
            done.append(_Chain(*parts))
        elif isinstance(step, Group):
            done.append(_Group(*parts))
        else:
            try:
                done.append(_WithDelay(parts[0], delay=step.delay))
            except GraphError as exc:
                raise WorkflowTypeError(str(exc)) from exc
    return done[0]


class Workflow:
    """dramatiq-workflow's ``Workflow``: ``Workflow(workflow, broker).run()`` starts it.

    Args:
        workflow: a message, ``Chain``, ``Group`` or ``WithDelay``, nested freely.
        broker: defaults to dramatiq's global broker.
    """

    def __init__(self, workflow: WorkflowType, broker: dramatiq.Broker | None = None) -> None:
        self.workflow = workflow
        self.broker: dramatiq.Broker = broker or dramatiq.get_broker()
        #: The aioworkflow id of the last ``run()`` (re-attach with ``WorkflowHandle(id)``).
        self.id: str | None = None

    def run(self) -> None:
        """Store and start the workflow (blocking, from sync code or from an event loop).

        Raises:
            WorkflowTypeError: a step of an unsupported type, or an argument the encoder
                refuses (a ``TypeError``; also a ``GraphError``).
            MiddlewareNotFound: the broker has no ``WorkflowMiddleware`` (a ``RuntimeError``).
        """
        canvas = _to_canvas(self.workflow)
        store = find_store(self.broker)
        if store is None:
            raise MiddlewareNotFound(
                "WorkflowMiddleware middleware not found! Add "
                "aioworkflow.compat.dramatiq_workflow.WorkflowMiddleware to the broker."
            )
        try:
            # run_sync uses its own background event loop: it works whether or not a loop
            # is running in this thread.
            handle = _NativeWorkflow(canvas).run_sync(broker=self.broker, store=store)
        except GraphError as exc:
            if isinstance(exc, TypeError):
                raise
            raise WorkflowTypeError(str(exc)) from exc
        self.id = handle.id

    def __str__(self) -> str:
        return f"Workflow({self.workflow})"


def _store_for(backend: object) -> StoreBackend:
    from dramatiq.rate_limits.backends import RedisBackend, StubBackend

    if isinstance(backend, RedisBackend):
        # dramatiq's stubs confuse its backends; RedisBackend keeps its redis.Redis as .client
        client: Any = backend.client  # pyright: ignore[reportUnknownMemberType, reportAttributeAccessIssue, reportUnknownVariableType]
        return RedisStore(client=client)
    if isinstance(backend, StubBackend):
        return MemoryStore()
    if isinstance(backend, (RedisStore, MemoryStore)):
        return backend
    raise ConfigurationError(
        f"WorkflowMiddleware takes dramatiq's RedisBackend or StubBackend (or an aioworkflow "
        f"store), got {type(backend).__qualname__}"
    )


class WorkflowMiddleware(_WorkflowMiddleware):
    """dramatiq-workflow's middleware signature on aioworkflow's middleware.

    Args:
        rate_limiter_backend: dramatiq's ``RedisBackend`` (workflow state goes to the same
            Redis, through a ``RedisStore`` on its client) or ``StubBackend`` (a
            ``MemoryStore``, for tests).
        barrier_type: only used for dramatiq-workflow messages still queued (rolling upgrade).
        callback_storage: likewise.
        **options: aioworkflow's own middleware options (``reconcile_interval``, ...).
    """

    def __init__(
        self,
        rate_limiter_backend: Any,
        barrier_type: Any = None,
        callback_storage: Any = None,
        **options: Any,
    ) -> None:
        super().__init__(_store_for(rate_limiter_backend), **options)
        self.rate_limiter_backend = rate_limiter_backend
        self._legacy, self._legacy_finder = _legacy_middleware(
            rate_limiter_backend, barrier_type, callback_storage
        )
        self._legacy_lock = threading.Lock()

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        """Declares dramatiq-workflow's no-op actor while its messages may still be queued."""
        if self._legacy is not None:
            self._legacy.after_process_boot(broker)
            self._add_finder(broker)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: Worker) -> None:
        """aioworkflow's boot; also declares the no-op actor for in-process workers."""
        super().before_worker_boot(broker, worker)
        self.after_process_boot(broker)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """aioworkflow's completion, or dramatiq-workflow's for a message it queued."""
        if LEGACY_OPTION not in message.options:
            super().after_process_message(broker, message, result=result, exception=exception)
            return
        legacy = self._legacy
        if legacy is None:
            if exception is None:
                logger.error(
                    "Message %s was queued by dramatiq-workflow: its workflow cannot continue "
                    "unless dramatiq-workflow stays installed until its messages are drained "
                    "(see docs/migrating.md).",
                    message.message_id,
                )
            return
        self._add_finder(broker)
        legacy.after_process_message(broker, message, result=result, exception=exception)

    def _add_finder(self, broker: dramatiq.Broker) -> None:
        """Put the legacy middleware's inert twin on the broker (once).

        dramatiq-workflow looks its middleware up on the broker (by class) to start what
        follows a finished step. The twin answers that lookup with the same backend, barrier
        type and callback storage, and ignores dramatiq's hooks: the old messages are handed
        to the legacy middleware by this one only, so none is processed twice or missed.
        """
        finder = self._legacy_finder
        with self._legacy_lock:
            if finder is not None and not any(m is finder for m in broker.middleware):
                broker.middleware.append(finder)


def _legacy_middleware(backend: Any, barrier_type: Any, callback_storage: Any) -> tuple[Any, Any]:
    """dramatiq-workflow's middleware and its inert twin, if dramatiq-workflow is installed."""
    try:
        import dramatiq_workflow  # pyright: ignore[reportMissingTypeStubs]
    except ImportError:
        return None, None
    base: Any = dramatiq_workflow.WorkflowMiddleware  # pyright: ignore[reportUnknownMemberType]

    class _Finder(base):  # type: ignore[misc]  # untyped third-party base
        """Found by dramatiq-workflow's lookup; dramatiq's calls do nothing."""

        def after_process_boot(self, broker: dramatiq.Broker) -> None:
            pass

        def after_process_message(self, *args: Any, **kwargs: Any) -> None:
            pass

    kwargs: dict[str, Any] = {"callback_storage": callback_storage}
    if barrier_type is not None:
        kwargs["barrier_type"] = barrier_type
    legacy = base(backend, **kwargs)
    finder = _Finder(backend, **kwargs)
    finder.callback_storage = legacy.callback_storage  # one storage for both
    return legacy, finder
