"""aioworkflow: asyncio-native workflows for dramatiq."""
from __future__ import annotations

from ._compiler import compile
from ._dag import Dag, Node
from ._graph import Chain, Graph, Group, NodeRef, WithDelay
