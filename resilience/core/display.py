"""Showing data as text: never as markup, with control characters made visible.

Error messages, task, worker and breaker names come from Redis and may hold
Rich markup (``[/x]``), terminal escape codes or other control characters
(written by a job's exception, by hand, by an attacker). Every view prints
them through :func:`visible` (plain output) or :func:`cell` (a
``rich.text.Text``, which Rich never parses as markup): ``ESC`` is shown as
``\\x1b``, a newline as ``\\n``, a byte that was not UTF-8 as ``\\xff``, and
invisible format characters (bidirectional overrides, zero-width spaces) as
``\\u202e``. JSON output needs none of this: JSON escapes them itself.
"""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text

__all__ = ["visible", "cell"]

#: C0 and C1 controls, DEL, zero-width and bidirectional format characters,
#: line/paragraph separators, the BOM, and lone surrogates (bytes that were not UTF-8).
_HIDDEN = "\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff"
_ANY = re.compile(f"[\t\n{_HIDDEN}]")
_KEEP_LINES = re.compile(f"[{_HIDDEN}]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any, *, lines: bool = False, limit: int | None = None) -> str:
    """``value`` as one line of text with every control character escaped.

    ``lines=True`` keeps newlines and tabs (a traceback); ``limit`` cuts the
    result to that many characters.
    """
    text = value if isinstance(value, str) else str(value)
    text = (_KEEP_LINES if lines else _ANY).sub(_escape, text)
    return text if limit is None else text[:limit]


def cell(value: Any, *, limit: int | None = None, style: str = "") -> Text:
    """A table cell (or a line) for Rich that shows ``value`` exactly as text."""
    return Text(visible("" if value is None else value, limit=limit), style=style)
