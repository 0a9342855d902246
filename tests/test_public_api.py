"""The public surface, pinned: a name added, removed or left undocumented fails here."""

from __future__ import annotations

import inspect

import pytest

import aioworkflow
from aioworkflow import errors

PUBLIC = [
    "AioWorkflowError",
    "Chain",
    "ConfigurationError",
    "Dag",
    "DecodeError",
    "Event",
    "Graph",
    "GraphError",
    "Group",
    "LZ4JSONEncoder",
    "MemoryStore",
    "MessageTooLarge",
    "Node",
    "NodeRef",
    "Progress",
    "RedisStore",
    "ResultTooLarge",
    "RunningNode",
    "State",
    "StoreBusy",
    "StoreConnectionError",
    "StoreError",
    "StoreUnavailable",
    "SyncWorkflowHandle",
    "Transition",
    "WithDelay",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowExists",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowMiddleware",
    "WorkflowNotFound",
    "WorkflowStatus",
    "WorkflowTimeout",
    "WorkflowTooLarge",
    "compile",
    "list_workflows",
    "list_workflows_sync",
    "report_progress",
]

ERRORS = [
    "AioWorkflowError",
    "ConfigurationError",
    "DecodeError",
    "GraphError",
    "MessageTooLarge",
    "ResultTooLarge",
    "ScriptError",
    "StoreBusy",
    "StoreConnectionError",
    "StoreError",
    "StoreUnavailable",
    "WorkflowCancelled",
    "WorkflowExists",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "WorkflowTooLarge",
]


def test_the_package_exports_exactly_these_names() -> None:
    assert sorted(aioworkflow.__all__) == PUBLIC
    assert len(set(aioworkflow.__all__)) == len(aioworkflow.__all__)  # no duplicates


def test_the_errors_module_exports_exactly_these_names() -> None:
    assert sorted(errors.__all__) == ERRORS


def test_errors_all_lists_every_exception_class_the_module_defines() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert defined == set(errors.__all__)


def test_every_error_the_package_exports_is_in_the_errors_module() -> None:
    exported = {n for n in aioworkflow.__all__ if isinstance(getattr(aioworkflow, n), type)}
    exported_errors = {n for n in exported if issubclass(getattr(aioworkflow, n), BaseException)}
    assert exported_errors <= set(errors.__all__)
    assert all(getattr(aioworkflow, n) is getattr(errors, n) for n in exported_errors)


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_derives_from_the_one_root(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.AioWorkflowError)
    assert issubclass(cls, Exception)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(aioworkflow, name)
    doc = obj.__doc__ if isinstance(obj, type) else inspect.getdoc(obj)  # a class's own
    assert doc, f"aioworkflow.{name} has no docstring"
    # dataclasses and NamedTuples without a docstring get their signature as one
    assert not doc.startswith(f"{name}("), f"aioworkflow.{name} has only a generated docstring"


@pytest.mark.parametrize("name", ERRORS)
def test_every_error_has_its_own_docstring(name: str) -> None:
    cls = getattr(errors, name)
    assert "__doc__" in vars(cls)
    assert cls.__doc__
    assert cls.__doc__.strip()


def test_the_removed_names_stay_removed() -> None:
    assert not hasattr(errors, "InvalidTransition")  # never raised (issue 12)
