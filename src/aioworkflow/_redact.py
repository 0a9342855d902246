"""Keeping credentials out of output: URLs with their passwords masked. Pure (issue 14).

A connection URL (``redis://user:secret@host:6379/0``, ``amqp://guest:guest@host/vhost``) may
carry a password in its user info or in a ``password=`` query parameter. Nothing aioworkflow
prints (errors, log lines, reprs) may show it. :func:`redact_url` masks one URL;
:func:`url_secrets` lists the secrets a URL carries, so that :func:`redact_text` can scrub
them from any text (a third-party error message may quote a password without its URL).

The parsing is deliberately generous: the user info runs from ``://`` to the *last* ``@`` of
the URL's authority-and-path, so a password with an unescaped ``/`` or ``@`` is still masked
whole, and nothing here raises on a malformed URL.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["MASK", "redact_text", "redact_url", "url_secrets"]

#: What a secret is replaced with.
MASK = "***"

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_QUERY_SECRET = re.compile(r"([?&;](?:password|pass|pwd|token)=)([^&;#]*)", re.IGNORECASE)


def _split(url: str) -> tuple[str, str, str] | None:
    """``(scheme://, userinfo, rest)`` of a URL with user info, else None."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return None
    start = scheme_end + 3
    query = url.find("?", start)
    head = url[start:] if query < 0 else url[start:query]
    at = head.rfind("@")
    if at < 0:
        return None
    return url[:start], head[:at], url[start + at :]


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets a URL carries: its password (as written and percent-decoded), and the
    values of ``password=``-like query parameters. Empty when there are none."""
    found: list[str] = []
    parts = _split(url)
    if parts is not None:
        user, colon, password = parts[1].partition(":")
        found.append(password if colon else user)
    found += [m.group(2) for m in _QUERY_SECRET.finditer(url)]
    out: dict[str, None] = {}
    for secret in found:
        for form in (secret, unquote(secret)):
            if form:
                out[form] = None
    return tuple(out)


def redact_url(url: str) -> str:
    """``url`` with its password (or a user info without a password, which may be a token)
    and ``password=`` query values replaced by ``***``; any other URL is returned unchanged."""
    parts = _split(url)
    if parts is not None:
        prefix, userinfo, rest = parts
        user, colon, _ = userinfo.partition(":")
        url = prefix + (f"{user}:{MASK}" if colon else MASK) + rest
    return _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, url)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL in it redacted, then every given secret masked wherever it
    still occurs (an error message may quote a password without its URL)."""
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, MASK)
    return text
