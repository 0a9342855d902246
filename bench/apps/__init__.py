"""Importable actor modules for the benchmark's dramatiq CLI workers."""
