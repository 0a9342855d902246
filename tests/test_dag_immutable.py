"""A compiled Dag cannot be changed through anything it exposes (issue 12).

Many nodes share one shape's options dict and workers keep decoded DAGs in a cache, so a
mutation through ``dag.node(0)`` used to change other nodes and later messages. Every container
reachable from a Dag or a Node must now refuse every mutation, and the Dag must be unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from typing import TYPE_CHECKING, Any

import dramatiq
import orjson
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.encoder import JSONEncoder

from aioworkflow import Chain, Dag, Group, LZ4JSONEncoder, Node, WithDelay, compile
from aioworkflow._dag import FrozenDict, FrozenList

if TYPE_CHECKING:
    from collections.abc import Callable

_broker = StubBroker()


@dramatiq.actor(broker=_broker, queue_name="q")
def a(*args: Any, **kwargs: Any) -> None:
    """A task (never run)."""


@dramatiq.actor(broker=_broker)
def b(*args: Any, **kwargs: Any) -> None:
    """Another task (never run)."""


def canvas() -> Chain:
    """Shared shapes, nested argument values, kwargs, a delay, a pipe, a join and a result."""
    return Chain(
        Group(
            a.message_with_options(
                args=([1, {"x": [2, 3]}],), kwargs={"k": {"y": [4]}}, max_retries=3
            ),
            a.message_with_options(args=(5,), kwargs={"k": {"y": [6]}}, max_retries=3),
            WithDelay(b.message((7, [8])), delay=250),
        ),
        Group(b.message(9), b.message(10), b.message(11)),
        b.message(12),
        pipe=True,
    )


DICT_MUTATIONS: list[Callable[[Any], object]] = [
    lambda d: d.__setitem__("new", 1),
    lambda d: d.__delitem__(next(iter(d))),
    lambda d: d.update(new=1),
    lambda d: d.pop(next(iter(d))),
    lambda d: d.popitem(),
    lambda d: d.setdefault("new", 1),
    lambda d: d.clear(),
    lambda d: d.__ior__({"new": 1}),
]
LIST_MUTATIONS: list[Callable[[Any], object]] = [
    lambda s: s.__setitem__(0, "x"),
    lambda s: s.__setitem__(slice(0, 1), ["x"]),
    lambda s: s.__delitem__(0),
    lambda s: s.append("x"),
    lambda s: s.extend(["x"]),
    lambda s: s.insert(0, "x"),
    lambda s: s.pop(),
    lambda s: s.remove(s[0]),
    lambda s: s.clear(),
    lambda s: s.sort(key=repr),
    lambda s: s.reverse(),
    lambda s: s.__iadd__(["x"]),
    lambda s: s.__imul__(2),
]
TUPLE_MUTATIONS: list[Callable[[Any], object]] = [
    lambda t: t.__setitem__(0, "x"),
    lambda t: t.__delitem__(0),
]


def containers(root: object) -> list[object]:
    """Every non-empty dict, list and tuple reachable from ``root`` (iterative walk)."""
    out: list[object] = []
    stack = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item:
                out.append(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            if item:
                out.append(item)
            stack.extend(item)
    return out


def exposed(dag: Dag) -> list[object]:
    """What a caller can reach: every field of the Dag and every field of every Node."""
    roots: list[object] = [getattr(dag, f.name) for f in dataclasses.fields(dag)]
    roots += [list(node) for node in dag.nodes]  # a list only to walk every field of the Node
    found = [c for root in roots for c in containers(root)]
    return [c for c in found if not (type(c) is list and any(c is r for r in roots))]


def test_every_exposed_container_is_immutable_and_nothing_changes() -> None:
    dag = compile(canvas())
    before = dag.encode()
    # a fresh canvas has fresh message ids: compare everything else
    nodes_before = [repr(n._replace(message_id="")) for n in compile(canvas()).nodes]
    found = exposed(dag)
    kinds = {type(c) for c in found}
    assert kinds == {tuple, FrozenDict, FrozenList}  # nothing else is reachable
    attempts = 0
    for container in found:
        mutations = (
            DICT_MUTATIONS
            if isinstance(container, dict)
            else LIST_MUTATIONS
            if isinstance(container, list)
            else TUPLE_MUTATIONS
        )
        for mutate in mutations:
            with pytest.raises((TypeError, AttributeError)):
                mutate(container)
            attempts += 1
    assert attempts > 100
    assert dag.encode() == before
    assert [repr(n._replace(message_id="")) for n in dag.nodes] == nodes_before
    assert dag == compile(canvas())


def test_a_node_and_the_dag_refuse_attribute_assignment() -> None:
    dag = compile(canvas())
    node = dag.node(0)
    with pytest.raises(AttributeError):
        node.options = FrozenDict()  # type: ignore[misc]
    for field in dataclasses.fields(dag):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(dag, field.name, getattr(dag, field.name))


def test_nodes_sharing_a_shape_stay_independent() -> None:
    dag = compile(canvas())
    first, second = dag.node(0), dag.node(1)
    assert first.options is second.options  # one shape, stored once...
    with pytest.raises(TypeError, match="immutable"):
        first.options["max_retries"] = 0
    with pytest.raises(TypeError, match="immutable"):
        first.kwargs["k"]["y"].append(0)
    assert second.options["max_retries"] == 3  # ...so a refused change is the only safe one
    assert second.kwargs == {"k": {"y": [6]}}


def test_frozen_values_compare_encode_and_send_like_plain_ones() -> None:
    node = compile(canvas()).node(0)
    assert node.args == ([1, {"x": [2, 3]}],)
    assert node.kwargs == {"k": {"y": [4]}}
    assert isinstance(node.kwargs, dict)
    assert isinstance(node.args[0], list)
    plain = {"args": [[1, {"x": [2, 3]}]], "kwargs": {"k": {"y": [4]}}}
    frozen = {"args": list(node.args), "kwargs": node.kwargs}
    assert orjson.loads(orjson.dumps(frozen)) == plain
    assert json.loads(json.dumps(frozen)) == plain
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=node.queue_name,
        actor_name=node.actor_name,
        args=node.args,
        kwargs=node.kwargs,
        options={**node.options, "extra": 1},
    )
    for encoder in (JSONEncoder(), LZ4JSONEncoder()):
        decoded = encoder.decode(encoder.encode(message.asdict()))
        assert (decoded["args"], decoded["kwargs"]) == (plain["args"], plain["kwargs"])
    assert node.options == {"max_retries": 3}  # the spread copy took the change, not the node


def test_copies_decodes_and_pickles_stay_frozen() -> None:
    dag = compile(canvas())
    for other in (
        Dag.decode(dag.encode()),
        pickle.loads(pickle.dumps(dag)),
        copy.deepcopy(dag),
        copy.copy(dag),
    ):
        assert other == dag
        assert {type(c) for c in exposed(other)} == {tuple, FrozenDict, FrozenList}


def test_a_dag_built_from_plain_values_freezes_them() -> None:
    dag = compile(canvas())
    plain: dict[str, Any] = {
        "shapes": tuple((x, q, dict(o)) for x, q, o in dag.shapes),
        "shape_of": dag.shape_of,
        "args": tuple(tuple(json.loads(json.dumps(r))) for r in dag.args),
        "kwargs": {i: json.loads(json.dumps(kw)) for i, kw in dag.kwargs.items()},
        "delays": dict(dag.delays),
        "pipes": {i: json.loads(json.dumps(s)) for i, s in dag.pipes.items()},
        "n_joins": dag.n_joins,
        "offsets": dag.offsets,
        "targets": dag.targets,
        "result": json.loads(json.dumps(dag.result)),
    }
    rebuilt = Dag(**plain)
    assert rebuilt == dag
    assert {type(c) for c in exposed(rebuilt)} == {tuple, FrozenDict, FrozenList}
    plain["kwargs"][0]["k"]["y"].append("changed later")  # the caller's own dict
    assert rebuilt.node(0).kwargs == {"k": {"y": [4]}}


def test_node_fields_are_what_workers_need() -> None:
    node = compile(canvas()).node(2)
    assert isinstance(node, Node)
    assert (node.actor_name, node.delay) == ("b", 250)
    assert node.args == ([7, [8]],)
