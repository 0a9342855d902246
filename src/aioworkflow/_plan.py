"""Old home of the upload format and the reply parsers; kept so existing imports work. Pure.

The stored format lives in ``_upload``, the script protocol (calls, replies, parsers) in
``_protocol`` and the codes in ``_machine``. Import from there in new code.
"""

from __future__ import annotations

from ._machine import CallbackKind, ClaimCode
from ._protocol import Claim, Completion, parse_claim
from ._upload import (
    OPTION,
    Callback,
    Upload,
    build_upload,
    message_fields,
    queue_slots,
    template,
)

__all__ = [
    "OPTION",
    "Callback",
    "CallbackKind",
    "Claim",
    "ClaimCode",
    "Completion",
    "Upload",
    "build_upload",
    "message_fields",
    "parse_claim",
    "queue_slots",
    "template",
]
