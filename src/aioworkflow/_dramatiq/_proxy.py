"""The two MessageProxy internals the middleware needs, behind named functions.

dramatiq hands middleware a ``MessageProxy`` around the decoded ``Message``. Replacing the
wrapped message is how a piped input reaches the actor (the worker reads ``args`` through the
proxy when it calls the actor, after ``before_process_message``), and the exception dramatiq
stuffed into the proxy is the only record of why a never-processed delivery failed.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from aioworkflow._plan import OPTION
from aioworkflow._upload import piped_ref

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy
    from dramatiq.message import Message

    from aioworkflow._upload import Ref

__all__ = ["failure_of", "pipe_input"]


def pipe_input(message: MessageProxy, ref: Ref, value: Any) -> None:
    """Append the piped ``value`` to the delivery's arguments before the actor runs.

    The new message's ref is marked piped (``piped_ref``): a retry of it must not pipe again.
    """
    inner: Message[Any] = message._message  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType, reportUnknownVariableType]
    # what ``Message.copy`` does (dramatiq leaves its ``**attributes`` untyped)
    options = {**inner.options, OPTION: piped_ref(ref)}
    piped = dataclasses.replace(inner, args=(*inner.args, value), options=options)
    message._message = piped  # pyright: ignore[reportPrivateUsage]


def failure_of(message: MessageProxy) -> BaseException | None:
    """The exception dramatiq recorded on the delivery (None if it recorded none)."""
    return message._exception  # pyright: ignore[reportPrivateUsage]
