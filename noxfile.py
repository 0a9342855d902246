"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``chaos``."""

from __future__ import annotations

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
    """The default test run (real Redis and RabbitMQ on 127.0.0.1); chaos runs shortened."""
    _install(session, "test")
    session.run("pytest", *session.posargs, env={"AIOWF_CHAOS_SCALE": "short"})


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
    """ruff check and ruff format --check."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over src, tests, bench and this file."""
    _install(session, "typecheck", "bench")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks side by side with raw dramatiq and peers; ``-- --quick`` for a short run."""
    _install(session, "bench")
    session.run("python", "bench/bench_compiler.py", *session.posargs)
    session.run("python", "bench/bench_encoder.py", *session.posargs)
    session.run("python", "bench/run.py", *session.posargs)
