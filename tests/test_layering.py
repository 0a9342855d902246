"""Static checks of the package's layering, read from the source with ``ast`` (no imports run).

* No import cycle among aioworkflow's modules, counting every import: module level, inside
  functions, and under ``TYPE_CHECKING``.
* Only the dramatiq adapter (``aioworkflow._dramatiq``) knows the RedisBroker's keys, its
  consumers and MessageProxy internals, and only its ``_route`` module reads a workflow's mode.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "aioworkflow"
ADAPTER = "_dramatiq"


# -- the import graph ----------------------------------------------------------------------
def module_name(root: Path, path: Path) -> tuple[str, bool]:
    """Dotted name of ``path`` (a file under ``root``, the package directory) and whether it
    is a package's ``__init__``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from . import x`` counts ``x`` when ``x``
    is a module, else the package whose name it imports)."""
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    modules = {name for name, _ in files}
    graph: dict[str, set[str]] = {}
    for (name, is_package), path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each cycle once (as a strongly connected component of more than one module), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v) :]
            del stack[stack.index(v) :]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


class TestImportCycles:
    def test_aioworkflow_has_no_import_cycle(self) -> None:
        # Given every module of the package, When its imports are followed, Then none loops
        graph = import_graph(SRC)
        assert len(graph) > 20, sorted(graph)  # the scan saw the whole package
        assert f"aioworkflow.{ADAPTER}._route" in graph
        assert cycles(graph) == []

    def test_a_cycle_through_a_function_level_import_is_found(self, tmp_path: Path) -> None:
        # Given a package whose b imports a inside a function, and a imports b at the top
        pkg = tmp_path / "pkg"
        (pkg / "sub").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("from .sub import b\n")
        (pkg / "sub" / "__init__.py").write_text("")
        (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
        (pkg / "c.py").write_text("from pkg import a\n")
        # When the graph is scanned, Then the cycle is reported, and only it
        assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.sub.b"]]


# -- what only the adapter may know --------------------------------------------------------
#: String fragments that are RedisBroker key names.
BROKER_KEYS = re.compile(r"__acks__|__heartbeats__|\.msgs\b")
#: Attributes that are RedisBroker consumer or MessageProxy internals.
INTERNAL_ATTRS = {"_message", "_exception", "consume", "consumer_class", "queued_message_ids"}
#: dramatiq's consumer classes.
CONSUMER_NAMES = {"Consumer", "ConsumerThread", "_RedisConsumer"}


def _docstrings(tree: ast.Module) -> set[int]:
    nodes: list[ast.AST] = [tree]
    nodes += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    out: set[int] = set()
    for n in nodes:
        body = getattr(n, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            out.add(id(body[0].value))
    return out


def broker_details(source: str) -> list[tuple[int, str]]:
    """(line, what) for each RedisBroker / MessageProxy detail that ``source`` names in code."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if match := BROKER_KEYS.search(node.value):
                found.append((node.lineno, f"RedisBroker key {match[0]!r}"))
        elif isinstance(node, ast.Attribute):
            if node.attr in INTERNAL_ATTRS:
                found.append((node.lineno, f"internal attribute .{node.attr}"))
            elif node.attr in CONSUMER_NAMES:
                found.append((node.lineno, f"consumer class {node.attr}"))
            elif node.attr == "namespace" and "broker" in ast.unparse(node.value).lower():
                found.append((node.lineno, "the broker's namespace"))
        elif isinstance(node, ast.Name) and node.id in CONSUMER_NAMES:
            found.append((node.lineno, f"consumer class {node.id}"))
        elif isinstance(node, ast.ImportFrom):
            found += [
                (node.lineno, f"consumer class {alias.name}")
                for alias in node.names
                if alias.name in CONSUMER_NAMES
            ]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("getattr", "hasattr"):
            names = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if set(names) & (INTERNAL_ATTRS | {"namespace", "broker_id"}):
                found.append((node.lineno, f"{ast.unparse(node.func)}(..., {names[0]!r})"))
    return found


def mode_reads(source: str) -> list[int]:
    """Lines that compare a workflow's ``.mode``."""
    tree = ast.parse(source)
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(
            isinstance(side, ast.Attribute) and side.attr == "mode"
            for side in (node.left, *node.comparators)
        )
    ]


def outside_adapter() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if ADAPTER not in p.relative_to(SRC).parts)


class TestAdapterBoundary:
    def test_no_module_outside_the_adapter_names_a_broker_detail(self) -> None:
        # Given every module outside aioworkflow._dramatiq, When its code is scanned
        offences = [
            f"{path.relative_to(SRC.parent)}:{line}: {what}"
            for path in outside_adapter()
            for line, what in broker_details(path.read_text())
        ]
        # Then none names a RedisBroker key, consumer or MessageProxy internal
        assert offences == [], "\n".join(offences)

    def test_only_the_route_module_reads_the_mode(self) -> None:
        offences = [
            f"{path.relative_to(SRC.parent)}:{line}: compares .mode"
            for path in sorted(SRC.rglob("*.py"))
            if path != SRC / ADAPTER / "_route.py"
            for line in mode_reads(path.read_text())
        ]
        assert offences == [], "\n".join(offences)

    def test_the_adapter_itself_is_what_the_scan_would_flag(self) -> None:
        # The scan is not blind: the adapter's own modules name all of it
        adapter = "".join(p.read_text() for p in sorted((SRC / ADAPTER).glob("*.py")))
        whats = {what.split(" ")[0] for _, what in broker_details(adapter)}
        assert {"RedisBroker", "internal", "getattr(...,"} <= whats, whats
        assert mode_reads((SRC / ADAPTER / "_route.py").read_text())

    @pytest.mark.parametrize(
        ("snippet", "what"),
        [
            ('key = f"{ns}:__acks__.{broker_id}.{queue}"', "RedisBroker key '__acks__'"),
            ('hb = ns + ":__heartbeats__"', "RedisBroker key '__heartbeats__'"),
            ('keys = [f"{ns}:{q}", f"{ns}:{q}.msgs"]', "RedisBroker key '.msgs'"),
            ("inner = message._message", "internal attribute ._message"),
            ("exc = message._exception", "internal attribute ._exception"),
            ("c = broker.consume('q')", "internal attribute .consume"),
            ("from dramatiq.broker import Consumer", "consumer class Consumer"),
            ("ns = self.broker.namespace", "the broker's namespace"),
            ('ns = getattr(broker, "namespace", "dramatiq")', "getattr(..., 'namespace')"),
        ],
    )
    def test_each_kind_of_detail_is_flagged(self, snippet: str, what: str) -> None:
        assert broker_details(f'"""A docstring may say __acks__."""\n{snippet}\n') == [(2, what)]
