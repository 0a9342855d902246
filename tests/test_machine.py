"""The state machine as data (``_machine``): its rendered texts, the Lua that must use them, and
both stores following the tables; the script protocol; Lua error locations; 0.1.0 meta hashes."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from aioworkflow import (
    Chain,
    MemoryStore,
    RedisStore,
    _machine as m,
    _machine_render as render,
    _protocol as p,
    compile,
)
from aioworkflow._keys import keys_of, workflow_keys
from aioworkflow._machine import (
    CLAIM_IN_STATE,
    DROPPED_FIELDS,
    LEGACY_FIELDS,
    TRANSITIONS,
    CallbackKind,
    ClaimCode,
    MetaField,
    Op,
    Outcome,
    State,
)
from aioworkflow._status import status_from_meta
from aioworkflow._store._scripts import SHAS, SOURCES, explain, locate
from aioworkflow._upload import Callback, build_upload
from aioworkflow.errors import ScriptError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    import redis

WF = "wfm"
#: The message token of the workflows these tests store (deliveries carry it).
TOKEN = "0123456789abcdef"
_broker = StubBroker()


@dramatiq.actor(broker=_broker)
def t(label: Any) -> None:
    """A task for canvases (never run here)."""


def lua_sources() -> dict[str, str]:
    """Every ``lua/*.lua`` by file name."""
    lua = files("aioworkflow").joinpath("lua")
    return {x.name: x.read_text() for x in lua.iterdir() if x.name.endswith(".lua")}


# -- the rendered texts -------------------------------------------------------------------
class TestRendered:
    def test_the_check_command_passes_on_the_committed_texts(self) -> None:
        # Given the committed lua/_machine.lua and _status.py (what `nox -s lint` checks)
        done = subprocess.run(
            [sys.executable, "-m", "aioworkflow._machine_render", "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        # Then the check passes, silently
        assert (done.returncode, done.stdout) == (0, "")

    def test_a_changed_table_makes_both_texts_drift(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Given a transition added to the data, but the texts not rendered again
        monkeypatch.setitem(
            TRANSITIONS, Op.PAUSE, {**TRANSITIONS[Op.PAUSE], State.PENDING: State.PAUSED}
        )
        # Then the check names the Lua chunk and the prose table, and main() exits 1
        assert sorted(render.check()) == sorted([str(render.LUA_PATH), str(render.STATUS_PATH)])
        assert render.main(["--check"]) == 1

    def test_a_hand_edited_chunk_drifts(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        edited = tmp_path / "_machine.lua"
        edited.write_text(render.render_lua().replace("HELD = 3", "HELD = 6"))
        monkeypatch.setattr(render, "LUA_PATH", edited)
        assert render.check() == [str(edited)]

    def test_the_chunk_carries_every_table(self) -> None:
        chunk = render.render_lua()
        assert "pause = {RUNNING = 'PAUSED'}" in chunk
        assert "HELD = 3" in chunk
        assert "failed_actor = 'failed_actor'" in chunk
        assert "{'factor', 'failed_actor'}" in chunk
        assert render.render_table() in (render.STATUS_PATH.read_text())


# -- the Lua must use the chunk, not literals ----------------------------------------------
#: Quoted values only the generated chunk may spell out.
FORBIDDEN = (
    {s.value for s in State}
    | {f.value for f in MetaField}
    | set(LEGACY_FIELDS)
    | set(DROPPED_FIELDS)
    | {c.value for c in CallbackKind}
    | {x.value for x in m.Mode}
    | {e.value for e in m.EventCode}
    | set(m.EVENT_FIELDS.values())
)
_COMMENT = re.compile(r"--[^\n]*")
_QUOTED = re.compile(r"'([^'\\\n]*)'|\"([^\"\\\n]*)\"")
_CODE_REPLY = re.compile(r"return\s*\{\s*-?\d")
_LOCAL = re.compile(r"local\s+(?:function\s+)?([A-Za-z_][\w\s,]*?)\s*[=(]")


def literal_problems(name: str, src: str) -> list[str]:
    """Quoted states/meta fields/callbacks/modes/event codes and numeric reply codes in ``src``."""
    problems = []
    for n, line in enumerate(src.splitlines(), 1):
        code = _COMMENT.sub("", line)
        for q in _QUOTED.finditer(code):
            text = q.group(1) if q.group(1) is not None else q.group(2)
            if text in FORBIDDEN:
                problems.append(f"{name}:{n}: literal {q.group(0)}")
        if _CODE_REPLY.search(code):
            problems.append(f"{name}:{n}: a reply code as a number")
    return problems


def defined_locals(src: str) -> set[str]:
    names: set[str] = set()
    for match in _LOCAL.finditer(_COMMENT.sub("", src)):
        names |= {x.strip() for x in match.group(1).split(",") if x.strip()}
    return names


class TestLuaUsesTheChunk:
    def test_no_script_spells_a_state_field_callback_or_code_as_a_literal(self) -> None:
        sources = lua_sources()
        assert "_machine.lua" in sources
        problems = [
            problem
            for name, src in sorted(sources.items())
            if name != "_machine.lua"
            for problem in literal_problems(name, src)
        ]
        assert not problems, "\n".join(problems)

    def test_the_scan_catches_each_kind_of_literal(self) -> None:
        bad = (
            "if state == 'RUNNING' then return {0} end\n"
            "redis.call('HGET', META, \"factor\")  -- a comment may say 'PAUSED'\n"
            "dispatch('s', 'd', now, out)\n"
            "event('ok', v, S.RUNNING)\n"
            "return {-1, ''}\n"
        )
        assert len(literal_problems("bad.lua", bad)) == 7

    def test_no_script_redefines_a_name_of_the_chunk(self) -> None:
        sources = lua_sources()
        chunk = defined_locals(sources["_machine.lua"])
        assert {"S", "T", "CLAIM", "OUT", "F", "CB", "EVENT"} <= chunk
        for name, src in sources.items():
            if name != "_machine.lua":
                assert not chunk & defined_locals(src), name


# -- both stores follow the tables ---------------------------------------------------------
class Rig:
    """A store with one two-node chain submitted, whose state a test may force."""

    def __init__(self, store: Any, client: redis.Redis | None) -> None:
        self.store = store
        self.client = client

    def force(self, state: State) -> None:
        if self.client is not None:
            self.client.hset(keys_of(WF).meta, MetaField.STATE, state)
        else:
            self.store._wfs[WF].meta[MetaField.STATE] = state.value


@pytest.fixture(params=["memory", "redis"])
async def rig(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_url: str
) -> AsyncIterator[Rig]:
    up = build_upload(
        WF,
        compile(Chain(t.message(0), t.message(1))),
        direct=False,
        on_failure=Callback("cb", "default", (), {}, {}),
        retention_ms=60_000,
        now_ms=0,
        token=TOKEN,
    )
    if request.param == "memory":
        mem = MemoryStore()
        await mem.aio().submit(WF, up, [])
        yield Rig(mem, None)
        return
    store = RedisStore(url=redis_url, retention=60)
    await store.aio().submit(WF, up, [])
    yield Rig(store, redis_client)
    await store.aclose()
    store.close()


ANY_STATE = list(State)


class TestStoresFollowTheTables:
    @pytest.mark.parametrize("op", [Op.CANCEL, Op.PAUSE, Op.RESUME, Op.RETRY])
    @pytest.mark.parametrize("state", ANY_STATE)
    async def test_control_operations(self, rig: Rig, op: Op, state: State) -> None:
        # Given a workflow in `state`
        rig.force(state)
        # When the control operation runs
        done = await rig.store.aio().control(op.value, WF, [])
        # Then it applies exactly where the table has a rule, and lands where the rule says
        to = TRANSITIONS[op].get(state)
        assert (done.status, done.state) == (
            (Outcome.APPLIED, to) if to else (Outcome.UNCHANGED, state)
        )

    @pytest.mark.parametrize("state", ANY_STATE)
    async def test_a_node_failing(self, rig: Rig, state: State) -> None:
        rig.force(state)
        done = rig.store.sync.fail(WF, 0, ("t", "E", "boom"), [], TOKEN)
        to = TRANSITIONS[Op.FAIL].get(state)
        assert done.status is Outcome.APPLIED
        assert done.state is (to or state)
        assert done.released == ((CallbackKind.FAILURE,) if to else ())

    @pytest.mark.parametrize("state", ANY_STATE)
    async def test_the_last_node_succeeding(self, rig: Rig, state: State) -> None:
        rig.store.sync.complete(WF, 0, None, [], None, TOKEN)
        rig.force(state)
        done = rig.store.sync.complete(WF, 1, None, [], None, TOKEN)
        assert done.state is TRANSITIONS[Op.FINISH].get(state, state)

    @pytest.mark.parametrize("state", ANY_STATE)
    async def test_claims_decided_by_the_state(self, rig: Rig, state: State) -> None:
        rig.force(state)
        claim = rig.store.sync.claim(WF, 0, "m", [], TOKEN)
        assert claim.code is CLAIM_IN_STATE.get(state, ClaimCode.RUN)


# -- the protocol --------------------------------------------------------------------------
class TestProtocol:
    def test_calls_name_their_script_keys_and_args_in_header_order(self) -> None:
        ack = p.BrokerAck(("a", "m", "h"), "mid", "bid")
        call = p.complete_call(WF, 3, b"r", ["q", "q.msgs"], ack, 7)
        assert call.script is p.ScriptName.COMPLETE
        assert call.keys == (*workflow_keys(WF), "q", "q.msgs", "a", "m", "h")
        assert call.args == (WF, 3, b"r", 1, "", "mid", "bid", 7)
        # ARGV 5 is the attempt (issue 18), then the piped nodes
        assert p.claim_call(WF, "s", "m", [1, 2]).args == (WF, "s", "m", "", 1, 1, 2)
        assert p.claim_call(WF, 0, "m", [], "t", 3).args == (WF, 0, "m", "t", 3)
        assert p.control_call("retry", WF, []).script is p.ScriptName.RETRY
        with pytest.raises(ValueError, match="not a control operation"):
            p.control_call("start", WF, [])

    def test_replies_become_enums(self) -> None:
        done = p.parse_complete([1, b"SUCCEEDED", b"s", 4, 5])
        assert (done.status, done.state, done.released) == (
            Outcome.APPLIED, State.SUCCEEDED, (CallbackKind.SUCCESS, 4, 5),
        )  # fmt: skip
        assert done.released[0] == "s"
        assert p.parse_complete([-1, b"", b""]) == p.Completion(Outcome.MISSING, None)
        rec = p.parse_reconcile([1, b"RUNNING", 2, b"f", 7])
        assert (rec.extra, rec.released) == (2, (CallbackKind.FAILURE, 7))
        assert p.parse_claim([3]).code is ClaimCode.HELD
        assert p.parse_submit([2, b"PENDING"]).pending
        assert not p.parse_submit([2, b"RUNNING"]).pending


# -- Lua errors name the right file and line -----------------------------------------------
def line_of(file: str, text: str) -> int:
    """The line of ``lua/<file>`` that contains ``text``."""
    lines = lua_sources()[file].splitlines()
    (n,) = [i for i, line in enumerate(lines, 1) if text in line]
    return n


@pytest.fixture
async def store(redis_client: redis.Redis, redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(url=redis_url, retention=60)
    up = build_upload(
        WF,
        compile(Chain(t.message(0), t.message(1))),
        direct=False,
        retention_ms=60_000,
        now_ms=0,
        token=TOKEN,
    )
    await s.aio().submit(WF, up, [])
    yield s
    await s.aclose()
    s.close()


class TestLuaErrorLocations:
    @pytest.mark.parametrize("path", ["wire", "redis-py"])
    def test_an_error_in_a_script_names_the_script_file_and_line(
        self, store: RedisStore, path: str
    ) -> None:
        if path == "redis-py":
            store.sync._wire = None
        else:
            assert store.sync._wire is not None
        # When claim.lua meets a key of the wrong type (scripts validate their arguments, so
        # only corrupt state can make one fail): the done bitmap is a hash
        store.client.delete(keys_of(WF).done)
        store.client.hset(keys_of(WF).done, "x", "y")
        with pytest.raises(ScriptError) as err:
            store.sync.claim(WF, 0, "m", [], TOKEN)
        # Then the error points at claim.lua's line, not at the joined source's
        where = f"claim.lua:{line_of('claim.lua', 'GETBIT')}"
        assert where in str(err.value)
        assert "user_script" not in str(err.value)

    def test_an_error_in_the_helpers_names_lib_lua(self, store: RedisStore) -> None:
        # When complete.lua's helpers read a topology key of the wrong type (off is a hash)
        store.client.delete(keys_of(WF).off)
        store.client.hset(keys_of(WF).off, "x", "y")
        with pytest.raises(ScriptError) as err:
            store.sync.complete(WF, 0, None, [], None, TOKEN)
        # Then the error names the helper's line in _lib.lua
        where = line_of("_lib.lua", "local o = redis.call('GETRANGE', OFF, v * 4, v * 4 + 7)")
        assert re.search(rf"_lib\.lua:{where}\b", str(err.value)), err.value


# -- meta hashes written by 0.1.0 ----------------------------------------------------------
def downgrade(client: redis.Redis) -> None:
    """Rewrite WF's meta hash as 0.1.0 wrote it: short names, an ``nv`` field, no format."""
    key = keys_of(WF).meta
    for old, new in LEGACY_FIELDS.items():
        value = client.hget(key, new)
        if value is not None:
            client.hset(key, old, value)
            client.hdel(key, new)
    client.hdel(key, MetaField.FORMAT)
    client.hset(key, "nv", 2)


class TestOldMetaHashes:
    async def test_claim_complete_fail_and_status_work_on_a_010_meta_hash(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        # Given an in-flight workflow whose meta hash 0.1.0 wrote, one node done
        store.sync.complete(WF, 0, None, [], None, TOKEN)
        downgrade(redis_client)
        meta_key = keys_of(WF).meta
        assert redis_client.hget(meta_key, "ok") == b"1"
        # Then its status reads the old names before any script has run
        raw, running = await store.aio().meta(WF) or ({}, 0)
        assert status_from_meta(WF, raw, running).succeeded == 1
        # When the next node is claimed, the script renames the fields in place, once
        assert store.sync.claim(WF, 1, "m1", [], TOKEN).run
        fields = {k.decode() if isinstance(k, bytes) else k for k in redis_client.hkeys(meta_key)}
        assert not fields & {*LEGACY_FIELDS, *DROPPED_FIELDS}
        assert redis_client.hget(meta_key, MetaField.FORMAT) == b"2"
        assert redis_client.hget(meta_key, MetaField.SUCCEEDED) == b"1"
        assert redis_client.hget(meta_key, MetaField.RETENTION_MS) == b"60000"
        # and the workflow carries on under the new names
        failed = store.sync.fail(WF, 1, ("t", "ValueError", "late"), [], TOKEN)
        assert failed.state is State.FAILED
        status = status_from_meta(WF, *(await store.aio().meta(WF) or ({}, 0)))
        assert (status.failed, status.failed_node, status.exc_message) == (1, 1, "late")
        assert store.sync.complete(WF, 1, None, [], None, TOKEN).state is State.SUCCEEDED

    async def test_a_failed_010_workflow_reports_its_failure_and_can_be_retried(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        # Given a workflow that failed under 0.1.0 (failure details under the old names)
        store.sync.fail(WF, 0, ("t", "KeyError", "k"), [], TOKEN)
        downgrade(redis_client)
        assert redis_client.hget(keys_of(WF).meta, "factor") == b"t"
        raw, running = await store.aio().meta(WF) or ({}, 0)
        status = status_from_meta(WF, raw, running)
        assert (status.state, status.failed, status.failed_actor, status.exc_type) == (
            State.FAILED, 1, "t", "KeyError",
        )  # fmt: skip
        # When it is retried, the failed node is released again and the details cleared
        retried = await store.aio().control("retry", WF, [])
        assert (retried.status, retried.released) == (Outcome.APPLIED, (0,))
        status = status_from_meta(WF, *(await store.aio().meta(WF) or ({}, 0)))
        assert (status.state, status.failed, status.failed_actor) == (State.RUNNING, 0, None)
        assert redis_client.hget(keys_of(WF).meta, "factor") is None


class TestUpgradeCost:
    def calls(self, client: redis.Redis) -> dict[str, int]:
        """Commands run since the last reset, by name (scripts' commands included)."""
        stats: dict[str, Any] = client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def test_a_current_meta_hash_costs_one_hmget_and_an_old_one_is_upgraded_once(
        self, store: RedisStore, redis_client: redis.Redis
    ) -> None:
        # Given a current workflow: a claim reads its meta hash with one HMGET, writes nothing
        redis_client.config_resetstat()
        assert store.sync.claim(WF, 0, "m0", [], TOKEN).run
        calls = self.calls(redis_client)
        assert (calls.get("hmget"), calls.get("hget"), calls.get("hdel")) == (1, 1, None)
        # Given the same hash as 0.1.0 wrote it: the first script renames its fields (one
        # HMGET of the old names, one HSET, one HDEL, then the state is read again)
        downgrade(redis_client)
        redis_client.config_resetstat()
        assert store.sync.claim(WF, 0, "m0", [], TOKEN).run
        calls = self.calls(redis_client)
        assert (calls.get("hmget"), calls.get("hdel")) == (3, 1)
        # and the next script finds it current again
        redis_client.config_resetstat()
        assert store.sync.claim(WF, 0, "m0", [], TOKEN).run
        assert self.calls(redis_client).get("hmget") == 1


def test_an_error_names_its_file_from_the_sha_when_the_script_is_not_given() -> None:
    sha = next(k for k, v in SHAS.items() if v is p.ScriptName.COMPLETE)
    chunk = len(SOURCES[p.ScriptName.COMPLETE].splitlines())  # the script's last line
    message = f"ERR user_script:{chunk}: boom script: {sha}, on @user_script:{chunk}."
    name, line = locate(p.ScriptName.COMPLETE, chunk)
    assert name == "complete.lua"
    assert line == len(lua_sources()["complete.lua"].splitlines())
    assert explain(message) == message.replace("user_script", "complete.lua").replace(
        f":{chunk}", f":{line}"
    )
    # an error of a script that is not ours is left alone
    assert explain("ERR user_script:3: x script: " + "0" * 40) == (
        "ERR user_script:3: x script: " + "0" * 40
    )
