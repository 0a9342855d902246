"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``chaos``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *groups: str) -> None:
    session.install("-e", ".")
    for group in groups:
        session.install(*nox.project.dependency_groups(PYPROJECT, group))


@nox.session
def tests(session: nox.Session) -> None:
    """The default test run (real Redis and RabbitMQ on 127.0.0.1); chaos runs shortened.

    Prints line coverage of ``aioworkflow`` (this process's code; worker subprocesses that
    some tests start are not measured).
    """
    _install(session, "test")
    session.run(
        "pytest",
        "--cov=aioworkflow",
        "--cov-report=term-missing:skip-covered",
        *session.posargs,
        env={
            "AIOWF_CHAOS_SCALE": "short",
            # the data file stays in the session's virtualenv (under .nox/, not in git's view)
            "COVERAGE_FILE": str(Path(session.virtualenv.location) / ".coverage"),
        },
    )


@nox.session
def chaos(session: nox.Session) -> None:
    """Long crash/fault-injection runs (SIGKILLed workers, Redis restarts, duplicate storms)."""
    _install(session, "test")
    session.run(
        "pytest",
        "-m",
        "chaos",
        "--timeout=1800",
        *session.posargs,
        env={"AIOWF_CHAOS_SCALE": "long"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and the Lua rendered from the state machine."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    # lua/_machine.lua and _status.py's table are rendered from _machine.py: fail on drift
    session.run("python", "-m", "aioworkflow._machine_render", "--check")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src, tests, bench and this file; pyright (strict) over src; then
    ``pyright --verifytypes`` on the public API (it must stay at 100%).

    verifytypes must see the package as a plain directory with its ``py.typed``: an editable
    install's import hook hides it ("No py.typed file found"), so ``src`` goes first on the
    interpreter's path.
    """
    _install(session, "typecheck", "bench")
    session.run("mypy", "--strict")
    session.run("pyright")
    session.run(
        "pyright",
        "--verifytypes",
        "aioworkflow",
        "--ignoreexternal",
        env={"PYTHONPATH": str(Path("src").resolve())},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with raw dramatiq and peers; ``-- --quick`` for a short run."""
    _install(session, "bench")
    session.run("python", "bench/bench_compiler.py", *session.posargs)
    session.run("python", "bench/bench_encoder.py", *session.posargs)
    session.run("python", "bench/run.py", *session.posargs)
