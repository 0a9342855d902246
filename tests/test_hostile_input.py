"""Hostile and malformed input, end to end (memory, redis, rabbitmq: the ``env`` fixture).

- A delivery is checked against the submission it claims to belong to: a node index out of
  range (at or above the node count, 1e6, 1e8), of the wrong type (``1.0``, ``"1"``, ``True``),
  or a message of an earlier workflow that had the same id, is skipped and logged: never run,
  never counted, and the workflow neither ends early nor fires a callback.
- Bad configuration and ids get a typed error before anything is stored: an empty id,
  retention zero or negative; ids with quotes, backslashes and control characters either
  work in every mode or are refused up front.
- A corrupt meta field never crashes ``status()``: the field reads as missing, and a state
  that is not a state is a ``DecodeError``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest
from dramatiq.middleware import CurrentMessage
from hypothesis import given, settings, strategies as st

from aioworkflow import Chain, MemoryStore, RedisStore, State, WithDelay, Workflow
from aioworkflow._status import status_from_meta
from aioworkflow.errors import AioWorkflowError, ConfigurationError, DecodeError
from tests.test_control import drain
from tests.test_reliability import count_deliveries
from tests.test_runtime import declare_task, wait_for

if TYPE_CHECKING:
    import dramatiq

    from tests.conftest import Env

#: The option under which a workflow message carries its reference.
OPTION = "aiowf"


def gate(env: Env) -> tuple[Any, threading.Event, threading.Event, list[dict[str, Any]]]:
    """An actor that records its delivery's options, then blocks until ``go`` is set."""
    running, go = threading.Event(), threading.Event()
    seen: list[dict[str, Any]] = []
    env.broker.add_middleware(CurrentMessage())

    def gated(label: Any) -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        seen.append(dict(message.options))
        running.set()
        assert go.wait(30)
        started = env.rec.start(label)
        env.rec.finish(label, started)

    actor = env.actor(gated, actor_name=f"gated_{env.name}")
    return actor, running, go, seen


def forged(actor: Any, options: dict[str, Any], node: Any) -> dramatiq.Message[Any]:
    """A copy of a real delivery of the workflow with its node index replaced."""
    ref = list(options[OPTION])
    ref[1] = node
    keep = {k: v for k, v in options.items() if k not in ("redis_message_id", "pipe_target")}
    return actor.message_with_options(args=("forged",), **{**keep, OPTION: ref})  # type: ignore[no-any-return]


class TestForgedDeliveries:
    @pytest.mark.parametrize(
        "bad",
        [2, 3, 1_000_000, 100_000_000, -1, 1.0, "1", True, None],
        ids=lambda v: repr(v),
    )
    async def test_a_bad_node_index_is_skipped_and_never_counted(self, env: Env, bad: Any) -> None:
        # Given a two-node workflow whose first node is running (so the second is unreleased)
        seen = count_deliveries(env)
        g, running, go, options = gate(env)
        t = declare_task(env)
        done = declare_task(env, "done")
        env.worker()
        handle = await Workflow(
            Chain(g.message("first"), t.message("last")), on_success=done.message("cb")
        ).run()
        await wait_for(running.is_set)
        # When a delivery claiming node `bad` of that workflow arrives and is processed
        message = forged(t, options[0], bad)
        env.broker.enqueue(message)
        await wait_for(lambda: seen.count[message.message_id] >= 1)
        status = await handle.status()
        # Then it was not run and not counted: the workflow is still running, nothing done
        assert status.state is State.RUNNING
        assert (status.succeeded, status.failed) == (0, 0)
        assert env.rec.labels() == []
        # and when the real node finishes, the workflow runs to the end, callback once
        go.set()
        final = await handle.wait(timeout=30)
        assert final.state is State.SUCCEEDED
        assert (final.total, final.succeeded) == (2, 2)
        await drain(env)
        assert sorted(map(str, env.rec.labels())) == ["cb", "first", "last"]

    async def test_a_message_of_an_earlier_workflow_with_the_same_id_is_skipped(
        self, env: Env
    ) -> None:
        # Given a workflow with a fixed id whose delayed first node is queued, cancelled at once
        # and expired (retention 50 ms)
        env.store.retention_ms = 50
        seen = count_deliveries(env)
        old = declare_task(env, "old")
        new = declare_task(env, "new")
        env.worker()
        first = await Workflow(WithDelay(old.message("old"), delay=1_500), id="order-123").run()
        await first.cancel()
        await wait_for(lambda: not _exists(env, "order-123"), timeout=10)
        # When a new workflow takes the same id, its own first node delayed longer
        second = await Workflow(WithDelay(new.message("new"), delay=3_000), id="order-123").run()
        # Then the old message, delivered first, is skipped: it neither runs nor counts
        await wait_for(lambda: len(seen.count) >= 1, timeout=10)
        assert env.rec.labels() == []
        assert (await second.status()).succeeded == 0
        # and the new workflow ends only after its own node ran
        final = await second.wait(timeout=30)
        assert final.state is State.SUCCEEDED
        assert env.rec.labels() == ["new"]


def _exists(env: Env, workflow_id: str) -> bool:
    if isinstance(env.store, MemoryStore):
        with env.store._lock:
            return env.store._get(workflow_id) is not None
    return bool(env.store.client.exists(f"aiowf:{{{workflow_id}}}:meta"))


class TestIds:
    @pytest.mark.parametrize(
        "workflow_id",
        ['quote"d', "back\\slash", "new\nline", "carriage\rreturn", "nul\x00byte", "ünï💥"],
        ids=["quote", "backslash", "newline", "cr", "nul", "unicode"],
    )
    async def test_odd_ids_run_or_are_refused_before_anything_is_stored(
        self, env: Env, workflow_id: str
    ) -> None:
        t = declare_task(env)
        env.worker()
        try:
            handle = await Workflow(Chain(t.message(1), t.message(2)), id=workflow_id).run()
        except AioWorkflowError:
            assert not _exists(env, workflow_id), "a refused id left state behind"
            return
        final = await handle.wait(timeout=30)
        assert final.state is State.SUCCEEDED
        assert env.rec.labels() == [1, 2]

    def test_an_empty_id_is_refused(self) -> None:
        with pytest.raises(ConfigurationError):
            Workflow(Chain(), id="")

    def test_an_overlong_id_is_refused(self) -> None:
        with pytest.raises(ConfigurationError):
            Workflow(Chain(), id="x" * 100_000)


class TestRetention:
    @pytest.mark.parametrize("retention", [0, -1, float("nan"), float("inf")])
    def test_retention_must_be_a_positive_finite_number(self, retention: float) -> None:
        with pytest.raises(ConfigurationError):
            MemoryStore(retention=retention)
        with pytest.raises(ConfigurationError):
            RedisStore(url="redis://127.0.0.1:1/0", retention=retention)


class TestCorruptMeta:
    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "total",
                    "ok",
                    "succeeded",
                    "nf",
                    "failed_count",
                    "created",
                    "started",
                    "finished",
                    "fnode",
                    "failed_node",
                    "factor",
                    "failed_actor",
                    "fexc",
                    "exc_type",
                    "fmsg",
                    "exc_message",
                    "junk",
                ]
            ),
            st.text(max_size=12),
        ),
        st.sampled_from([s.value for s in State]),
    )
    def test_a_corrupt_field_reads_as_missing_never_crashes(
        self, meta: dict[str, str], state: str
    ) -> None:
        status = status_from_meta("wf", {**meta, "state": state}, 0)
        assert status.state is State(state)

    @given(st.text(max_size=12).filter(lambda s: s not in {x.value for x in State}))
    def test_a_state_that_is_not_a_state_is_a_decode_error(self, state: str) -> None:
        with pytest.raises(DecodeError):
            status_from_meta("wf", {"state": state, "total": "3"}, 0)
