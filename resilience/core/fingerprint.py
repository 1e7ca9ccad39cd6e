"""One fingerprint for "the same error in the same place", shared by error tracking,
Sentry and the dead-letter statistics.

The message is normalised first (:func:`normalise_message`): secrets masked,
then UUIDs, hex ids, long hex strings, quoted values and numbers replaced by
placeholders, so repeats of one bug with other arguments compare equal.

* :func:`fingerprint` is the id: the first 16 hex digits of SHA-1 over the
  operation (task name), the error type, the normalised message and the
  traceback's frames as ``module:function`` (no line numbers: they move with
  edits). Error tracking keys ``errors:patterns`` by it, Sentry events carry it.
* :func:`label` is the same grouping made readable where no traceback is at
  hand (a dead-letter entry keeps its traceback as text only): the error type
  and the first line of the normalised message, e.g. ``KeyError: <str>`` or
  ``ValueError: order <n> failed``. ``resilience dlq stats`` groups by it.
"""

from __future__ import annotations

import hashlib
import re

from resilience.core.redact import redact_text

__all__ = ["MAX_MESSAGE", "fingerprint", "label", "normalise_message"]

#: Characters of a message that its fingerprint reads.
MAX_MESSAGE = 2000
#: Characters of the normalised message a label keeps.
LABEL_CHARS = 120

_NORMALISERS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b", re.I), "<hex>"),
    (re.compile(r"\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def normalise_message(message: str) -> str:
    """The message with its variable parts replaced, so repeats of one bug compare equal."""
    text = redact_text(message or "", MAX_MESSAGE)
    for pattern, placeholder in _NORMALISERS:
        text = pattern.sub(placeholder, text)
    return text.strip()


def fingerprint(operation: str, error_type: str, message: str, frames: list[str] | None = None) -> str:
    """A stable id for "the same error in the same place" (see the module docstring)."""
    parts = [operation, error_type, normalise_message(message), *(frames or [])]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


def label(error_type: str, message: str) -> str:
    """The readable grouping key: the error type and the first line of the normalised message."""
    first_line = (message or "").splitlines()[0] if message else ""
    return f"{error_type}: {normalise_message(first_line)[:LABEL_CHARS]}"
