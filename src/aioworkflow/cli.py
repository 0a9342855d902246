"""The ``aioworkflow`` command: demo, status, watch, cancel/pause/resume/retry, graph.

Exit codes: 0 success (for ``watch``: the workflow SUCCEEDED; for control commands: the call
was answered, whether or not it changed anything, which the output says); 1 the watched
workflow ended FAILED or CANCELLED, or the demo failed; 2 an error (unknown workflow,
unreachable Redis, bad arguments, a module attribute that is not a canvas).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .errors import AioWorkflowError, StoreConnectionError, WorkflowNotFound

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._client import WorkflowHandle
    from ._dag import Dag
    from ._status import WorkflowStatus

__all__ = ["main"]

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
EXIT_OK, EXIT_ENDED_BADLY, EXIT_ERROR = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aioworkflow", description="aioworkflow command line")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the README example workflow with live progress")
    demo.add_argument("--redis", metavar="URL", help="run on Redis instead of in-process")
    env_url = os.environ.get("AIOWORKFLOW_REDIS_URL", DEFAULT_REDIS)
    for name, text in (
        ("status", "print a workflow's state and counts"),
        ("watch", "show a live progress bar until the workflow ends"),
        ("cancel", "cancel a workflow"),
        ("pause", "pause a workflow"),
        ("resume", "resume a paused workflow"),
        ("retry", "re-run the failed nodes of a FAILED workflow"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("id", help="workflow id")
        cmd.add_argument(
            "--redis", metavar="URL", default=env_url, help=f"store URL (default {env_url})"
        )
        cmd.add_argument("--namespace", default="dramatiq", help="the RedisBroker's namespace")
    graph = sub.add_parser("graph", help="print a canvas's compiled DAG")
    graph.add_argument("target", metavar="MODULE:ATTR", help="a canvas, Workflow or Dag")
    graph.add_argument("--format", choices=("mermaid", "dot", "text"), default="text")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    out = sys.stdout
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(args.redis, out)
        if args.command == "graph":
            out.write(render(_load_dag(args.target), args.format))
            return EXIT_OK
        return asyncio.run(_remote(args, out))
    except WorkflowNotFound as exc:
        return _error(f"no workflow {exc.args[0]!r} (never created, or expired)")
    except StoreConnectionError as exc:
        return _error(f"cannot reach Redis at {getattr(args, 'redis', '?')}: {exc}")
    except (AioWorkflowError, ImportError, AttributeError, ValueError) as exc:
        return _error(str(exc))


def _error(text: str) -> int:
    sys.stderr.write(f"aioworkflow: error: {text.splitlines()[0] if text else 'failed'}\n")
    return EXIT_ERROR


async def _remote(args: argparse.Namespace, out: TextIO) -> int:
    from dramatiq.brokers.stub import StubBroker

    from ._client import WorkflowHandle
    from ._store import RedisStore

    store = RedisStore(url=args.redis)
    # Nodes released by resume/retry are enqueued by the scripts themselves when the workflow
    # runs on a RedisBroker (its namespace names the queues); for other brokers they wait in
    # the ready set and the workers' reconciler sends them.
    broker = StubBroker()
    broker.namespace = args.namespace  # type: ignore[attr-defined]
    handle = WorkflowHandle(args.id, broker=broker, store=store)
    try:
        if args.command == "status":
            out.write(describe(await handle.status()))
            return EXIT_OK
        if args.command == "watch":
            return await _watch(handle, out)
        answer = await getattr(handle, args.command)()
        if answer.changed:
            extra = f", {answer.released} node(s) released" if answer.released else ""
            out.write(f"{args.command}: done, workflow is now {answer.state}{extra}\n")
        else:
            out.write(f"{args.command}: no change, workflow is {answer.state}\n")
        return EXIT_OK
    finally:
        await store.aclose()
        store.close()
        broker.close()


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
    if status.failed_node is not None:
        lines.append(
            f"failure   node {status.failed_node} ({status.failed_actor}): "
            f"{status.exc_type}: {status.exc_message}"
        )
    return "\n".join(lines) + "\n"


def progress_bar(status: WorkflowStatus, width: int = 30) -> str:
    """``[#######.......] 12/40 succeeded, 1 failed, 3 running  RUNNING``."""
    total = max(status.total, 1)
    filled = int(width * status.succeeded / total)
    bar = "#" * filled + "." * (width - filled)
    return (
        f"[{bar}] {status.succeeded}/{status.total} succeeded, {status.failed} failed, "
        f"{status.running} running  {status.state}"
    )


async def _watch(handle: WorkflowHandle, out: TextIO, interval: float = 0.2) -> int:
    tty = out.isatty()
    last_line = ""

    def show(status: WorkflowStatus) -> None:
        nonlocal last_line
        line = progress_bar(status)
        if line == last_line:
            return
        last_line = line
        out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
        out.flush()

    status = await handle.status()
    show(status)
    shown_at = time.monotonic()
    async for _event in handle.events():  # woken by the workflow's own events
        if time.monotonic() - shown_at >= interval:
            status = await handle.status()
            show(status)
            shown_at = time.monotonic()
    status = await handle.status()
    show(status)
    if tty:
        out.write("\n")
    if status.failed_node is not None:
        out.write(describe(status))
    return EXIT_OK if status.state == "SUCCEEDED" else EXIT_ENDED_BADLY


# -- graph -------------------------------------------------------------------------------


def _load_dag(target: str) -> Dag:
    from ._client import Workflow
    from ._compiler import compile as compile_canvas
    from ._dag import Dag

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if callable(obj) and not hasattr(obj, "actor_name") and not isinstance(obj, type):
        obj = obj()
    if isinstance(obj, Dag):
        return obj
    if isinstance(obj, Workflow):
        return obj.compile()
    return compile_canvas(obj)


def _label(dag: Dag, v: int) -> str:
    node = dag.node(v)
    args = ", ".join(repr(a) for a in node.args)
    if len(args) > 40:
        args = args[:37] + "..."
    delay = f" +{node.delay}ms" if node.delay else ""
    return f"{node.actor_name}({args}){delay}"


def render(dag: Dag, fmt: str) -> str:
    """The DAG as Mermaid, Graphviz dot or plain text."""
    n = len(dag)
    if fmt == "text":
        lines = [f"{n} tasks, {dag.n_joins} joins, {dag.edge_count} edges"]
        for v in range(dag.size):
            name = f"join {v}" if dag.is_join(v) else f"{v}: {_label(dag, v)}"
            succ = ", ".join(map(str, dag.successors(v)))
            lines.append(f"{name}" + (f" -> {succ}" if succ else ""))
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
