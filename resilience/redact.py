"""Masking secrets before anything leaves the job: dead letters, error records,
alerts and Sentry events all go through :func:`redact`.

A value is masked when its key looks secret (password, token, secret,
authorization, api key, cookie, ...), and secrets embedded in text
(``password=...``, ``Bearer ...``, credentials in URLs) are masked in strings
such as tracebacks and error messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

SECRET_KEY_RE = re.compile(
    r"pass(word|wd|phrase)?|secret|token|auth(orization)?|api[_-]?key|apikey|"
    r"credential|private[_-]?key|cookie|session|signature|dsn|card[_-]?number|cvv|ssn",
    re.IGNORECASE,
)

_TEXT_PATTERNS = [
    # key=value / key: value / "key": "value" for secret-looking keys
    (re.compile(
        r"""(?P<key>["']?[\w-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|apikey|authorization|"""
        r"""auth|credential|cookie|dsn)[\w-]*["']?\s*[:=]\s*)(?P<q>["']?)(?P<val>[^\s"',;&}\]]+)""",
        re.IGNORECASE), lambda m: f"{m.group('key')}{m.group('q')}{MASK}"),
    # Authorization: Bearer xxx / Basic xxx
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), lambda m: f"{m.group(1)} {MASK}"),
    # scheme://user:password@host
    (re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.IGNORECASE),
     lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@"),
]

_MAX_DEPTH = 20


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY_RE.search(key))


def redact_text(text: str) -> str:
    """Mask secrets embedded in free text (tracebacks, messages, URLs)."""
    for pattern, replace in _TEXT_PATTERNS:
        text = pattern.sub(replace, text)
    return text


def redact(value: Any, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-keyed values and embedded secrets masked."""
    if _depth > _MAX_DEPTH:
        return MASK
    if isinstance(value, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v, _depth + 1))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, _depth + 1) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
