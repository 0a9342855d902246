"""Crash and fault-injection tests (``-m chaos``; ``nox -s chaos`` runs the long form)."""
