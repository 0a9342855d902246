"""Workflow stores: RedisStore (standalone or cluster) and MemoryStore (one process)."""

from __future__ import annotations

from ._base import Store, StoreBackend
from ._memory import MemoryStore
from ._redis import RedisStore

__all__ = ["MemoryStore", "RedisStore", "Store", "StoreBackend"]
