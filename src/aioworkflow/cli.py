"""The ``aioworkflow`` command: demo, status, watch, list, cancel/pause/resume/retry, graph.

Exit codes:

* 0: success. ``watch``: the workflow SUCCEEDED. Control commands: the call changed the
  workflow.
* 1: the watched workflow ended FAILED or CANCELLED, or the demo did not succeed.
* 2: an error: unknown workflow, unreachable Redis, bad arguments, a ``graph`` target that
  cannot be imported or is not a canvas. One line on stderr, never a traceback.
* 3: a control command was a no-op (cancel of a finished workflow, resume of a running one...);
  the output says why.
* 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO, cast

from dramatiq.brokers.stub import StubBroker

from ._redact import redact_text, redact_url, url_secrets
from ._status import State
from .errors import AioWorkflowError, StoreBusy, StoreConnectionError, WorkflowNotFound

if TYPE_CHECKING:
    from collections.abc import Generator, Sequence

    import dramatiq

    from ._client import WorkflowHandle
    from ._dag import Dag
    from ._graph import Step
    from ._status import RunningNode, Transition, WorkflowStatus

__all__ = ["describe", "main", "progress_bar", "render"]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
EXIT_OK, EXIT_ENDED_BADLY, EXIT_ERROR, EXIT_NOOP, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
CONTROL_COMMANDS = ("cancel", "pause", "resume", "retry")


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


#: Seconds a command retries a Redis that is unreachable or refusing before it gives up with
#: one line (a person is waiting; workers and apps keep the store's one minute).
CLI_PATIENCE = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aioworkflow",
        description="aioworkflow command line",
        epilog="exit codes: 0 ok, 1 watched workflow FAILED/CANCELLED, 2 error, "
        "3 control command was a no-op",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the dramatiq-workflow README example, live")
    demo.add_argument(
        "--redis", metavar="URL", help="run on a RedisBroker + RedisStore instead of in-process"
    )
    env_url = os.environ.get("AIOWORKFLOW_REDIS_URL") or DEFAULT_REDIS
    for name, text in (
        ("status", "print a workflow's state, counts, timestamps and failure"),
        ("watch", "show a live progress bar until the workflow ends"),
        ("cancel", "cancel a workflow"),
        ("pause", "pause a running workflow"),
        ("resume", "resume a paused workflow"),
        ("retry", "re-run the failed nodes of a FAILED workflow"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("id", help="workflow id")
        cmd.add_argument(
            "--redis",
            metavar="URL",
            default=env_url,
            help="the workflow store (default: $AIOWORKFLOW_REDIS_URL or " + DEFAULT_REDIS + ")",
        )
        cmd.add_argument(
            "--namespace",
            default="dramatiq",
            help="the RedisBroker's namespace (default: dramatiq)",
        )
        if name in ("resume", "retry"):
            cmd.add_argument(
                "--broker",
                metavar="URL",
                help="for workflows not on a RedisBroker of the store's Redis (e.g. RabbitMQ): "
                "send released nodes through this broker (amqp://... or redis://...) at once; "
                "by default the workers' reconciler sends them",
            )
    listing = sub.add_parser(
        "list",
        help="list workflows, newest first",
        description="list workflows, newest first (one line each: id, state, counts, name)",
    )
    listing.add_argument("--state", action="append", help="only this state (repeatable)")
    listing.add_argument("--name", help="only workflows with this name")
    listing.add_argument(
        "--label",
        action="append",
        metavar="K=V",
        help="only workflows with this label (repeatable)",
    )
    listing.add_argument(
        "--since", metavar="DURATION", help="only submitted in the last DURATION (90s, 15m, 1h, 2d)"
    )
    listing.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    listing.add_argument(
        "--redis",
        metavar="URL",
        default=env_url,
        help="the workflow store (default: $AIOWORKFLOW_REDIS_URL or " + DEFAULT_REDIS + ")",
    )
    graph = sub.add_parser("graph", help="print a canvas's compiled DAG")
    graph.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="a canvas, Workflow or Dag (or a function returning one) in an importable module",
    )
    graph.add_argument("--format", choices=("mermaid", "dot", "text"), default="text")
    return p


def _secrets(args: argparse.Namespace) -> tuple[str, ...]:
    """Passwords of every URL the command may quote: never printed (issue 14)."""
    urls = [os.environ.get("AIOWORKFLOW_REDIS_URL") or ""]
    urls += [getattr(args, name, None) or "" for name in ("redis", "broker")]
    return tuple(s for url in urls for s in url_secrets(url))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Nothing it prints (errors, log lines) shows a password of a ``--redis``/``--broker`` URL
    or of ``$AIOWORKFLOW_REDIS_URL``.
    """
    args = _parser().parse_args(argv)
    out = sys.stdout
    secrets = _secrets(args)
    with _one_line_logging(secrets):
        try:
            if args.command == "demo":
                from ._demo import run_demo

                return run_demo(args.redis, out)
            if args.command == "graph":
                out.write(render(_load_dag(args.target), args.format))
                return EXIT_OK
            if args.command == "list":
                return asyncio.run(_list(args, out))
            return asyncio.run(_remote(args, out))
        except KeyboardInterrupt:
            sys.stderr.write("\naioworkflow: interrupted\n")
            return EXIT_INTERRUPTED
        except WorkflowNotFound as exc:
            return _error(f"no workflow {exc.args[0]!r} (never created, or expired)", secrets)
        except StoreConnectionError as exc:
            url = redact_url(args.redis or "")
            return _error(f"cannot reach Redis at {url}: {exc}", secrets)
        except StoreBusy as exc:  # up, but refusing for a while (OOM, BUSY, READONLY, ...)
            url = redact_url(args.redis or "")
            return _error(f"Redis at {url} refused ({exc.code}), try again: {exc}", secrets)
        except (AioWorkflowError, CommandError) as exc:
            return _error(str(exc), secrets)
        except Exception as exc:  # noqa: BLE001  # the CLI's boundary: one redacted line, no traceback
            return _error(f"{type(exc).__name__}: {exc}", secrets)


def _error(text: str, secrets: Sequence[str] = ()) -> int:
    line = text.strip().splitlines()[0] if text.strip() else "failed"
    sys.stderr.write(f"aioworkflow: error: {redact_text(line, secrets)}\n")
    return EXIT_ERROR


class _OneLineFormatter(logging.Formatter):
    """Log records as ``aioworkflow: LEVEL: message``, without tracebacks or passwords."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = tuple(secrets)

    def format(self, record: logging.LogRecord) -> str:
        """One line: the level and the message, URLs and secrets masked."""
        text = f"aioworkflow: {record.levelname.lower()}: {record.getMessage()}"
        return redact_text(text, self.secrets)


@contextlib.contextmanager
def _one_line_logging(secrets: Sequence[str] = ()) -> Generator[None]:
    """Warnings of aioworkflow and dramatiq as one stderr line each, unless logging is set up."""
    root = logging.getLogger()
    if root.handlers:  # the caller configured logging: leave it alone
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_OneLineFormatter(secrets))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


# -- status, watch, control --------------------------------------------------------------


class _ReadySetBroker(StubBroker):
    """The CLI's broker when none is given: sends nothing.

    On a RedisBroker of the store's Redis the control scripts enqueue released nodes themselves
    (``namespace`` names the queues). For other brokers the released nodes wait in the
    workflow's ready set, where the workers' reconciler picks them up; ``held`` counts them.
    """

    def __init__(self, namespace: str) -> None:
        super().__init__()
        self.namespace = namespace
        self.held = 0

    def enqueue(
        self, message: dramatiq.Message[Any], *, delay: int | None = None
    ) -> dramatiq.Message[Any]:
        self.held += 1
        return message


def _control_broker(args: argparse.Namespace) -> dramatiq.Broker:
    url: str | None = getattr(args, "broker", None)
    if url is None:
        return _ReadySetBroker(args.namespace)
    scheme = url.partition("://")[0].lower()
    if scheme in ("amqp", "amqps"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    if scheme in ("redis", "rediss", "unix"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=args.namespace)  # type: ignore[no-untyped-call]
    raise CommandError(f"--broker: expected an amqp:// or redis:// URL, got {redact_url(url)!r}")


async def _remote(args: argparse.Namespace, out: TextIO) -> int:
    from ._client import WorkflowHandle
    from ._store import RedisStore

    broker = _control_broker(args)
    try:
        store = RedisStore(url=args.redis, patience=CLI_PATIENCE)
    except ValueError as exc:  # a malformed URL
        broker.close()
        raise CommandError(f"--redis: {exc}") from exc
    handle = WorkflowHandle(args.id, broker=broker, store=store)
    try:
        if args.command == "status":
            out.write(describe(await handle.status()))
            return EXIT_OK
        if args.command == "watch":
            return await _watch(handle, out)
        answer: Transition = await getattr(handle, args.command)()
        held = broker.held if isinstance(broker, _ReadySetBroker) else 0
        out.write(control_outcome(args.command, answer, held))
        return EXIT_OK if answer.changed else EXIT_NOOP
    finally:
        await store.aclose()
        store.close()
        broker.close()


async def _list(args: argparse.Namespace, out: TextIO) -> int:
    from ._listing import list_workflows, parse_duration
    from ._store import RedisStore

    since = None if args.since is None else parse_duration(args.since)
    try:
        store = RedisStore(url=args.redis, patience=CLI_PATIENCE)
    except ValueError as exc:  # a malformed URL
        raise CommandError(f"--redis: {exc}") from exc
    try:
        found = list_workflows(
            state=args.state, name=args.name, label=args.label, since=since, limit=args.limit,
            store=store,
        )  # fmt: skip
        async for st in found:
            out.write(list_line(st))
    finally:
        await store.aclose()
        store.close()
    return EXIT_OK


def list_line(status: WorkflowStatus) -> str:
    """One workflow of ``aioworkflow list``: id, state, counts, created, name and labels."""
    labels = " ".join(f"{k}={v}" for k, v in status.labels.items())
    return (
        f"{status.id}  {status.state:<9}  {status.succeeded}/{status.total}"
        f"  {_when(status.created_at)}  {status.name or '-'}  {labels}".rstrip()
        + "\n"
    )


_DONE = {"cancel": "cancelled", "pause": "paused", "resume": "resumed", "retry": "retrying"}


def control_outcome(command: str, answer: Transition, held: int = 0) -> str:
    """What a control call did, as one or two lines."""
    if answer.changed:
        text = f"{_DONE[command]}: workflow is now {answer.state}"
        if answer.released:
            text += f", {answer.released} node(s) released"
        text += "\n"
        if held:
            text += (
                f"note: {held} released node(s) wait in the ready set; the workers' reconciler "
                "sends them (or pass --broker URL to send them now)\n"
            )
        return text
    return f"no-op: {_why_not(command, answer.state)}\n"


def _why_not(command: str, state: State) -> str:
    if command == "cancel" or state is State.CANCELLED or state is State.SUCCEEDED:
        return f"workflow already {state.lower()}"
    wanted = {"pause": State.RUNNING, "resume": State.PAUSED, "retry": State.FAILED}[command]
    if command == "pause" and state is State.PAUSED:
        return "workflow already paused"
    return f"workflow is {state}, only a {wanted} workflow can be {_DONE[command]}"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat(
        timespec="milliseconds"
    )


def describe(status: WorkflowStatus) -> str:
    """A workflow status as a few lines of text."""
    lines = [
        f"workflow  {status.id}",
        f"state     {status.state}",
        (
            f"tasks     {status.succeeded}/{status.total} succeeded, {status.failed} failed, "
            f"{status.running} running"
        ),
        f"created   {_when(status.created_at)}",
        f"started   {_when(status.started_at)}",
        f"finished  {_when(status.finished_at)}",
    ]
    if status.name is not None:
        lines.insert(1, f"name      {status.name}")
    if status.labels:
        labels = " ".join(f"{k}={v}" for k, v in status.labels.items())
        lines.insert(2 if status.name is not None else 1, f"labels    {labels}")
    if status.failed_node is not None:
        lines.append(
            f"failure   node {status.failed_node} ({status.failed_actor}): "
            f"{status.exc_type}: {status.exc_message}"
        )
    lines += [f"running   {node_line(rn)}" for rn in status.running_nodes[:MAX_NODE_LINES]]
    if len(status.running_nodes) > MAX_NODE_LINES:
        lines.append(f"running   ... and {len(status.running_nodes) - MAX_NODE_LINES} more")
    return "\n".join(lines) + "\n"


#: Running nodes shown by ``status`` and ``watch`` (the rest are counted).
MAX_NODE_LINES = 10


def node_line(node: RunningNode, width: int = 20) -> str:
    """``node 3 resize attempt 2 since 12:00:01.250 [#####.....] 30/60 note``."""
    text = f"node {node.node} {node.actor or '?'}"
    if node.attempt is not None and node.attempt > 1:
        text += f" attempt {node.attempt}"
    if node.started is not None:
        text += f" since {_when(node.started)[11:23]}"
    report = node.progress
    if report is None:
        return text
    if report.total:
        share = min(max(report.done / report.total, 0.0), 1.0)
        filled = int(width * share)
        text += f" [{'#' * filled}{'.' * (width - filled)}] {report.done:g}/{report.total:g}"
    else:
        text += f" done {report.done:g}"
    if report.note:
        text += f" {report.note}"
    return text


def progress_bar(status: WorkflowStatus, width: int = 30) -> str:
    """``[#######.......] 12/40 succeeded, 1 failed, 3 running  RUNNING``."""
    total = max(status.total, 1)
    filled = width if status.total == 0 else int(width * status.succeeded / total)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {status.succeeded}/{status.total} succeeded, {status.failed} failed, "
        f"{status.running} running  {status.state}"
    )


async def _watch(
    handle: WorkflowHandle, out: TextIO, min_interval: float = 0.1, refresh: float = 2.0
) -> int:
    """Redraw on the workflow's events (at most every ``min_interval`` s) until it ends.

    On a terminal, each running node gets a line under the overall bar (its progress bar when
    it reports a total). Without events the frame is also refreshed every ``refresh`` s.
    """
    tty = out.isatty()
    last_frame: list[str] = []

    def show(status: WorkflowStatus) -> None:
        nonlocal last_frame
        frame = [progress_bar(status)]
        if tty:  # a progress line per running node under the overall bar
            frame += ["  " + node_line(n) for n in status.running_nodes[:MAX_NODE_LINES]]
            more = len(status.running_nodes) - MAX_NODE_LINES
            if more > 0:
                frame.append(f"  ... and {more} more running")
        if frame == last_frame:
            return
        if tty:
            # back to the first line of the previous frame, clear it all, draw the new one
            up = len(last_frame) - 1
            head = f"\r\x1b[{up}A\x1b[J" if up > 0 else "\r"
            out.write(head + "\n".join(f"{line}\x1b[K" for line in frame))
        else:
            out.write(f"{frame[0]}\n")
        last_frame = frame
        out.flush()

    status = await handle.status()
    show(status)
    if not status.done:
        changed = asyncio.Event()

        async def follow() -> None:
            try:
                async for _event in handle.events():  # ends once the workflow is final
                    changed.set()
            finally:
                changed.set()

        follower = asyncio.create_task(follow())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), refresh)
                changed.clear()
                ended = follower.done()
                status = await handle.status()
                show(status)
                if ended:
                    break
                await asyncio.sleep(min_interval)  # coalesce bursts of events into one redraw
            follower.result()  # a store error while following is raised here
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
    if tty:
        out.write("\n")
    if status.failed_node is not None:
        out.write(describe(status))
    return EXIT_OK if status.state is State.SUCCEEDED else EXIT_ENDED_BADLY


# -- graph -------------------------------------------------------------------------------


def _load_dag(target: str) -> Dag:
    from ._client import Workflow
    from ._compiler import compile as compile_canvas
    from ._dag import Dag

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"expected MODULE:ATTR, got {target!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raises: one line
        raise CommandError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise CommandError(f"{target}: no attribute {part!r}") from exc
    if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "actor_name"):
        try:
            obj = obj()
        except Exception as exc:  # a user function: one line
            raise CommandError(f"{target}(): {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Dag):
        return obj
    if isinstance(obj, Workflow):
        return obj.compile()
    try:
        return compile_canvas(cast("Step", obj))  # compile() checks what it really is
    except AioWorkflowError as exc:
        raise CommandError(f"{target} is not a canvas, Workflow or Dag: {exc}") from exc


def _label(dag: Dag, v: int) -> str:
    node = dag.node(v)
    parts = [repr(a) for a in node.args] + [f"{k}={val!r}" for k, val in node.kwargs.items()]
    args = ", ".join(parts)
    if len(args) > 40:
        args = args[:37] + "..."
    delay = f" +{node.delay}ms" if node.delay else ""
    return f"{node.actor_name}({args}){delay}"


def render(dag: Dag, fmt: str) -> str:
    """The DAG as Mermaid, Graphviz dot or plain text (join nodes as points/circles)."""
    if fmt == "text":
        lines = [f"{len(dag)} tasks, {dag.n_joins} joins, {dag.edge_count} edges"]
        for v in range(dag.size):
            name = f"join {v}" if dag.is_join(v) else f"{v}: {_label(dag, v)}"
            succ = ", ".join(map(str, dag.successors(v)))
            lines.append(name + (f" -> {succ}" if succ else ""))
        return "\n".join(lines) + "\n"
    if fmt == "mermaid":
        lines = ["flowchart TD"]
        for v in range(dag.size):
            if dag.is_join(v):
                lines.append(f"    n{v}(( ))")
            else:
                text = _label(dag, v).replace('"', "#quot;")
                lines.append(f'    n{v}["{text}"]')
        lines += [f"    n{v} --> n{w}" for v in range(dag.size) for w in dag.successors(v)]
        return "\n".join(lines) + "\n"
    if fmt == "dot":
        lines = ["digraph workflow {", "    rankdir=TB;"]
        for v in range(dag.size):
            if dag.is_join(v):
                lines.append(f'    n{v} [shape=point, label=""];')
            else:
                text = _label(dag, v).replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'    n{v} [shape=box, label="{text}"];')
        lines += [f"    n{v} -> n{w};" for v in range(dag.size) for w in dag.successors(v)]
        lines.append("}")
        return "\n".join(lines) + "\n"
    raise CommandError(f"unknown format {fmt!r}")
