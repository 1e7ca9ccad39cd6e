"""Masking secrets, and bounding what is kept, before anything leaves the job.

Dead letters, error records, alerts, Sentry events and log records all go
through this module.

**One list of secret names** (:data:`SECRET_NAMES`) serves both checks: a
mapping's value is masked when its key contains a secret name
(:func:`is_secret_key`), and in free text a value is masked when it follows
such a name and ``=`` or ``:`` (:func:`redact_text`). In a name, ``_`` stands
for an optional separator (``api_key`` also matches ``api-key``, ``apiKey``
and ``API key``); the short names (four letters or fewer, such as ``pass``,
``pwd``, ``sig``, ``ssn``) count only as a whole word of the key (``db_pass``,
``dbPass``, ``PASS`` but not ``bypass``, ``passenger`` or ``classname``).

**What text redaction masks** (:func:`redact_text`, four passes):

* ``name=value``, ``name: value``, ``"name": "value"``, ``name='a quoted value'``
  (the whole quoted value, spaces included; an unterminated one to the end of
  the line), the same in escaped quotes (``\\'name\\': \\'value\\'`` in a repr of a
  repr, ``\\"name\\": \\"value\\"`` in JSON inside JSON), ``name: Bearer token``
  (the scheme and the credentials), card numbers written in groups
  (``card_number=4111 1111 1111 1111``);
* ``Authorization:`` and ``Cookie:``/``Set-Cookie:`` values, to the end of
  the line (``Authorization: ***``, ``Cookie: ***``);
* URL userinfo: ``scheme://user:***@host``, and ``scheme://***@host`` when
  the userinfo is a bare token (``https://ghp_x@host``); a password containing
  ``@`` ends at the last ``@`` of the authority, as URL parsers read it;
* ``Bearer <token>`` anywhere; JSON web tokens (``eyJ...``); tokens with a
  well-known prefix (GitHub ``ghp_``, GitLab ``glpat-``, Slack ``xox?-``,
  Stripe ``sk_live_``, AWS ``AKIA``, Google ``AIza``); PEM private key blocks.

Not masked: a secret with no name or shape to recognise it by; the part of
a value after a ``,``, ``;``, ``&`` or space when it is neither quoted nor in
a header line; a name followed by more than 32 further identifier characters.

**Linear time, bounded scans.** Every quantifier is possessive or bounded,
and each pattern starts an attempt only where a literal matched, paying its
worst case a bounded number of times per character (the analysis is next to
each pattern), so the cost grows with the length of the text, never with its
square: under 0.2 us a character where secrets are densest (1 MB in 0.17 s),
``benchmarks/bench_redact.py``. On top of that a text longer than ``limit``
(:data:`MAX_TEXT_CHARS` by default) is first cut to that length with a
visible marker (:func:`truncate`), so one call costs a few milliseconds
whatever a job throws at it.

**Cutting never exposes a secret that the whole text would have masked.** The
kept head is scanned as it is, apart from the marker: a name cut off loses its
value with it, and a value cut short is still preceded by its name. The one
pattern that needs its end, a URL's userinfo (up to ``@``), is handled in the
cut: a head that ends inside a URL authority loses that authority. A kept
tail (tracebacks) starts at a line boundary, so it cannot begin in the middle
of a value whose name was dropped, and it loses the rest of a PEM block whose
header was dropped. What can remain is under eight characters of a token
known only by its prefix (``ghp_``...), cut right after that prefix.

**Bounded records.** :func:`clip` makes a JSON-ready copy of any value whose
``json.dumps`` is at most a given number of bytes: long strings are cut with
the marker, containers stop with ``…[N more items]`` / ``{"…": "[N more keys]"}``,
nesting stops at :data:`MAX_DEPTH`. :func:`redact_bounded` does the same and
masks what it keeps in the same walk, so both the scan and the stored result
are bounded, and it tells whether anything was cut.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "MASK", "MAX_DEPTH", "MAX_TEXT_CHARS", "SECRET_NAMES", "clip", "is_secret_key", "redact", "redact_bounded",
    "redact_text", "truncate",
]

MASK = "***"

#: Names that make a key secret, in mapping keys and in ``name=value`` text alike.
SECRET_NAMES: tuple[str, ...] = (
    "password", "passwd", "passphrase", "pass", "pwd", "pin", "otp",
    "secret", "token", "auth", "authorization", "credential", "api_key", "access_key", "account_key",
    "private_key", "signature", "sig", "cookie", "session", "sessid", "dsn", "jwt",
    "card_number", "cvv", "cvc", "ssn",
)

#: Text longer than this is cut (with a marker) before it is scanned.
MAX_TEXT_CHARS = 16 * 1024

#: Containers nested deeper than this are replaced by a marker.
MAX_DEPTH = 20

#: Room kept for the truncation marker ``…[truncated N chars]``.
_MARKER_ROOM = 32

# -- the patterns -------------------------------------------------------------------------
# Speed. Python's regex engine tries a pattern at every position of the text,
# unless the pattern starts with a literal (then it jumps between occurrences of
# that literal) or with case-sensitive alternatives that each start with a
# literal character (then it skips, in C, every character that starts none of
# them, and at the others rejects a mismatching alternative in one comparison).
# So each pass below starts that way: "://" for URLs, "-----BEGIN" for PEM
# blocks, and for names a tree of alternatives by first and second letter in
# both cases, the rest of each name matched case-insensitively (``(?i:...)``:
# a global IGNORECASE would disable both fast paths). Look-behinds (word
# starts) come after a literal, so they run only where it matched. The worst
# case of each pass is noted next to it: none scans a character more than a
# bounded number of times.

_FLAGS = re.ASCII

# After a name: the rest of the identifier (at most 32 characters, possessive), an
# optional closing quote (escaped too: a repr inside a repr writes \\'key\\'), then "="
# (not "==") or ":". A name occurrence costs at most ~40 characters of attempt, so
# "passpasspass..." costs about 10 steps a character.
_KEY_TAIL = r"""[\w.-]{0,32}+(?:\\{0,4}+["'])?[ \t]*+(?:=(?!=)|:)[ \t]*+"""

# Quoted values, unrolled (a run of plain characters, then escape + run): possessive,
# each character read once. A value ends at its closing quote when a word character
# does not follow it; else the quote was the opening one of another value (the value
# had none: 'args': ['password="abc'], 'note': 'password="abc'), and it, like a value
# without a closing quote, runs to the end of the line. Inside double quotes \' ends
# the value (and \" inside single quotes): in a repr of a repr that is where the
# string holding it ends. A value in escaped quotes (\'...\' in a repr of a repr,
# \"...\" in JSON inside JSON) ends at the same escaped quote: one look-ahead of at
# most five characters per character.
_REST_OF_LINE = r"[^\r\n]*+"
_QUOTED = (rf"""[bB]?(?:"[^"\\\n]*+(?:\\[^'\n][^"\\\n]*+)*+(?:"(?!\w)|(?=\\')|{_REST_OF_LINE})"""
           rf"""|'[^'\\\n]*+(?:\\[^"\n][^'\\\n]*+)*+(?:'(?!\w)|(?=\\")|{_REST_OF_LINE}))"""
           rf"""|(?P<escape>\\{{1,4}}+["'])(?:(?!(?P=escape))[^\n])*+(?:(?P=escape)(?!\w)|{_REST_OF_LINE})""")
_SCHEMES = r"(?i:bearer|basic|token|digest|negotiate|ntlm|bot|jwt|oauth|apikey|key|ssws)"
_TOKEN = r"""[^\s"'<>,;&)\]}]++"""

#: Names whose unquoted value is the rest of the line (HTTP header values).
_LINE_NAMES = ("authorization", "cookie")

# Word boundaries of the short names, checked once the name has matched (the
# look-behinds reach back over it): not preceded by a letter or digit, or
# starting a camelCase word; not followed by a lower-case letter, nor by any
# letter after an upper-case one (PASSENGER).
_WORD_END = r"(?:(?<=[a-z0-9])(?![a-z])|(?<=[A-Z])(?![A-Za-z]))"


def _name_rest(name: str, after: str) -> str:
    """The pattern of ``name`` after its first two letters, then ``after``."""
    rest = r"[-_. ]?".join(re.escape(part) for part in name.split("_"))[2:]
    rest = f"(?i:{rest})" if rest else ""
    if len(name.replace("_", "")) <= 4:
        back = "." * len(name)
        rest += rf"(?:(?<![A-Za-z0-9]{back})|(?<=[a-z0-9][A-Z]{back[1:]})){_WORD_END}"
    return rest + after


def _name_tree(names: Iterable[str], after: Callable[[str], str] = lambda name: "") -> str:
    """One pattern for ``names``: alternatives by first letter, then second, in both cases.

    Each name is followed by ``after(name)``. Longest names come first, so
    "password" is tried before "pass".
    """
    tree: dict[str, dict[str, list[str]]] = {}
    for name in sorted(names, key=len, reverse=True):
        tree.setdefault(name[0].lower(), {}).setdefault(name[1].lower(), []).append(name)

    def cases(letter: str) -> tuple[str, ...]:
        return (letter, letter.upper()) if letter.isalpha() else (letter,)

    return "(?:" + "|".join(
        first + "(?:" + "|".join(
            second + "(?:" + "|".join(_name_rest(n, after(n)) for n in group) + ")"
            for letter2, group in seconds.items() for second in cases(letter2)) + ")"
        for letter1, seconds in tree.items() for first in cases(letter1)) + ")"


_NAME_RE = re.compile(_name_tree(SECRET_NAMES), _FLAGS)

# name=value for every secret name, anywhere in an identifier (the part before the
# name is not part of the match and is kept as it is). The value: quoted; for header
# names the rest of the line (an empty group marks each place such a name ends in
# the tree, and conditionals test them); else an auth scheme and its credentials,
# or digit groups (4111 1111 1111 1111), or a token.
_line_marks: list[str] = []


def _line_mark(name: str) -> str:
    if name not in _LINE_NAMES:
        return ""
    _line_marks.append(f"line{len(_line_marks)}")
    return f"(?P<{_line_marks[-1]}>)"


_KEY_TREE = _name_tree(SECRET_NAMES, _line_mark)
_VALUE = rf"{_SCHEMES}[ \t]++{_TOKEN}|\d++(?:[ -]\d++)++|{_TOKEN}"
for _mark in _line_marks:
    _VALUE = rf"(?({_mark})[^\r\n]++|(?:{_VALUE}))"
_KEY_RE = re.compile(rf"(?P<key>{_KEY_TREE}{_KEY_TAIL})(?:(?P<quoted>{_QUOTED})|{_VALUE})", _FLAGS)


# URL userinfo. Attempts start only at "://"; the authority ([^\s/?#...]) cannot
# contain "/", so two attempts never scan the same characters. The greedy run
# backtracks to the last "@" (a password may contain "@"), within that authority.
_URL_RE = re.compile(r"""://(?P<user>[^\s/?#@:"'<>]*+:)?[^\s/?#"'<>]*@""", _FLAGS)
_URL_AUTHORITY = re.compile(r"""[^\s/?#"'<>]*+""")

# PEM private keys: the BEGIN line, the body (no "-": possessive, it ends at the next
# "-", where the next attempt could start), then the END line if it is there.
_PEM_RE = re.compile(r"(?P<head>-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----)[^-]*+"
                     r"(?P<end>-----END[A-Z ]{0,40}PRIVATE KEY-----)?", _FLAGS)

# Bearer tokens anywhere, JSON web tokens and well-known token prefixes: each at the
# start of a word only (a look-behind once the literal prefix has matched), then
# possessive runs, so a word is scanned once.
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "xoxa-", "xoxb-", "xoxp-",
                   "xoxo-", "xoxr-", "xoxs-", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "AKIA", "AIza")
_SHAPE_RE = re.compile(
    "|".join([rf"{b}(?i:earer)(?<![\w-]......)[ \t]++[\w.~+/=-]++" for b in "Bb"]
             + [r"eyJ(?<![\w-]...)[\w-]++\.[\w-]++\.?[\w-]*+"]
             + [rf"{re.escape(p)}(?<![\w-]{'.' * len(p)})[\w-]{{8,}}+" for p in _TOKEN_PREFIXES]),
    _FLAGS,
)


def _mask_key_value(match: re.Match) -> str:
    """The name and separator as they were, then ``***`` (in the quotes of a quoted value)."""
    quoted = match["quoted"]
    if not quoted:
        return match["key"] + MASK
    opening = match["escape"] or quoted[:2 if quoted[0] in "bB" else 1]
    closing = opening[-1] if opening[0] in "bB" else opening
    closed = len(quoted) >= len(opening) + len(closing) and quoted.endswith(closing)
    if len(quoted) == len(opening) + (len(closing) if closed else 0):
        return match[0]  # an empty value: nothing to hide, and a mask would only lengthen the text
    return f"{match['key']}{opening}{MASK}{closing if closed else ''}"


def _mask_url(match: re.Match) -> str:
    return f"://{match['user'] or ''}{MASK}@"


def _mask_pem(match: re.Match) -> str:
    return f"{match['head']}{MASK}{match['end'] or ''}"


def _mask_shape(match: re.Match) -> str:
    found = match.group(0)
    if found[:6].lower() != "bearer":
        return MASK
    credentials = found[6:].lstrip(" \t")
    return f"{found[:len(found) - len(credentials)]}{MASK}"


#: The passes of :func:`redact_text`, in order.
_PASSES = ((_PEM_RE, _mask_pem), (_KEY_RE, _mask_key_value), (_URL_RE, _mask_url), (_SHAPE_RE, _mask_shape))


# -- the public functions ----------------------------------------------------------------

def is_secret_key(key: Any) -> bool:
    """Whether a mapping key names a secret (see :data:`SECRET_NAMES`)."""
    return isinstance(key, str) and bool(_NAME_RE.search(key, 0, _MAX_KEY_BYTES))


def truncate(text: str, limit: int, *, tail: int = 0) -> str:
    """``text`` cut to at most ``limit`` characters, with ``…[truncated N chars]`` where it was cut.

    With ``tail``, up to that many characters of the end are kept too (from a
    line boundary), the marker between head and tail. The cut is safe for
    :func:`redact_text` (see the module docstring).
    """
    if len(text) <= limit:
        return text
    head, dropped, kept_tail = _cut(text, limit, tail)
    return f"{head}{_marker(dropped)}{kept_tail}"[:max(limit, 0)]


def _marker(dropped: int) -> str:
    return f"…[truncated {dropped} chars]"


def _cut(text: str, limit: int, tail: int) -> tuple[str, int, str]:
    """``(head, characters dropped, tail)`` of a text longer than ``limit``, room left for the marker."""
    room = limit - _MARKER_ROOM
    if room <= 0:
        return "", len(text), ""
    kept_tail = _tail_from_line_start(text[len(text) - min(tail, room // 2):]) if tail > 0 else ""
    head = _safe_head(text[:room - len(kept_tail)])
    return head, len(text) - len(head) - len(kept_tail), kept_tail


def _safe_head(head: str) -> str:
    """The head without a trailing, unfinished URL authority (it may hold userinfo cut before its "@")."""
    start = head.rfind("://")
    authority = _URL_AUTHORITY.match(head, start + 3) if start != -1 else None
    if authority is not None and authority.end() == len(head):
        return head[:start + 3]
    return head


def _tail_from_line_start(tail: str) -> str:
    """The tail from its first full line, past the end of a PEM block whose header was cut off."""
    newline = tail.find("\n")
    if newline == -1:
        return ""
    tail = tail[newline:]
    end = tail.find("-----END")
    if end != -1 and "-----BEGIN" not in tail[:end]:
        closing = tail.find("-----", end + 8)
        tail = "" if closing == -1 else tail[closing + 5:]
    return tail


def _scan(text: str) -> str:
    for pattern, replace in _PASSES:
        text = pattern.sub(replace, text)
    return text


def redact_text(text: Any, limit: int | None = MAX_TEXT_CHARS, *, tail: int = 0) -> str:
    """Mask secrets embedded in free text (tracebacks, messages, URLs, headers).

    Text longer than ``limit`` characters is cut first, as by :func:`truncate`
    (``tail`` as there), and the kept parts are scanned apart from the marker;
    ``limit=None`` scans it all (still in linear time).
    """
    if not isinstance(text, str):
        text = str(text)
    if limit is None or len(text) <= limit:
        return _scan(text)
    head, dropped, kept_tail = _cut(text, limit, tail)
    return f"{_scan(head)}{_marker(dropped)}{_scan(kept_tail)}"


def _masks(key: Any, value: Any) -> bool:
    """Whether ``value`` is masked for its key (a secret name; an empty value stays visible)."""
    return is_secret_key(key) and value is not None and not (isinstance(value, str) and value == "")


def redact(value: Any, *, limit: int | None = MAX_TEXT_CHARS, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-keyed values and secrets in its strings masked.

    Mappings and sequences are walked (tuples become lists) to :data:`MAX_DEPTH`;
    each string is scanned up to ``limit`` characters. Size is not bounded
    here: use :func:`redact_bounded` for what is stored.
    """
    if _depth > MAX_DEPTH:
        return MASK
    if isinstance(value, str):
        return redact_text(value, limit)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            out[redact_text(k, limit) if isinstance(k, str) else k] = \
                MASK if _masks(k, v) else redact(v, limit=limit, _depth=_depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(v, limit=limit, _depth=_depth + 1) for v in value]
    return value


def redact_bounded(value: Any, max_bytes: int, *, tail: int = 0) -> tuple[Any, bool]:
    """``(copy, cut)``: what :func:`clip` keeps of ``value``, masked as by :func:`redact`.

    One walk does both: strings are cut first and only what is kept is
    scanned, so the scan is bounded too; a masked value that grew (``x``
    becomes ``***``) is cut again to fit. ``cut`` tells whether anything was
    left out.
    """
    clipper = _Clipper(mask=True)
    kept = clipper.clip(value, max_bytes, tail)
    return kept, clipper.cut


def clip(value: Any, max_bytes: int, *, tail: int = 0) -> Any:
    """A JSON-ready copy of ``value`` whose ``json.dumps`` is at most ``max_bytes`` bytes.

    Strings are cut with :func:`truncate` (a top-level string keeps up to
    ``tail`` characters of its end); lists, tuples and sets become lists and
    mappings dicts with string keys, each ending in a marker when items are
    left out (``"…[N more items]"``, ``{"…": "[N more keys]"}``); containers
    deeper than :data:`MAX_DEPTH` become a marker; other objects become
    ``str(obj)`` (as ``json.dumps(default=str)`` would), bytes their repr
    (the first 256) and ints beyond 256 bits a description. A value that fits
    is kept whole; a container that does not shares its room out, so one big
    item does not crowd out the small ones next to it. The work done grows
    with ``max_bytes`` (and the nesting depth), not with the size of ``value``.
    """
    return _Clipper(mask=False).clip(value, max_bytes, tail)


# -- bounding sizes -------------------------------------------------------------------------

_MAX_KEY_BYTES = 256
_BIG_INT_BITS = 256
_BYTES_SHOWN = 256  # bytes shown of a bytes value (its repr), the rest counted
_SEQUENCES = (list, tuple, set, frozenset)
_MORE_KEY_SIZE = len(json.dumps("…")) + 2  # the key of a mapping's "more" marker, and ": "
_MORE_ROOM = _MORE_KEY_SIZE + len(json.dumps("[9999999999 more keys]")) + 2  # a "more" marker and its comma
_MIN_SHARE = 16  # bytes each kept item of a container that does not fit gets at the least
_TEXT, _SCALAR, _SEQUENCE, _MAPPING = range(4)


_KINDS = {str: _TEXT, type(None): _SCALAR, bool: _SCALAR, float: _SCALAR, list: _SEQUENCE, tuple: _SEQUENCE,
          dict: _MAPPING}


def _kind(value: Any, depth: int) -> tuple[int, Any, bool]:
    """``(kind, what to walk, whether it stands for more than it shows)``: how a value is copied."""
    kind = _KINDS.get(type(value))
    if kind is not None and (kind < _SEQUENCE or depth < MAX_DEPTH):
        return kind, value, False
    if isinstance(value, str):
        return _TEXT, value, False
    if value is None or isinstance(value, (bool, float)):
        return _SCALAR, value, False
    if isinstance(value, int):
        if value.bit_length() > _BIG_INT_BITS:
            return _TEXT, f"<int of {value.bit_length()} bits>", True
        return _SCALAR, value, False
    if isinstance(value, (Mapping, *_SEQUENCES)):
        if depth >= MAX_DEPTH:
            return _TEXT, f"…[nested deeper than {MAX_DEPTH}]", True
        return (_MAPPING if isinstance(value, Mapping) else _SEQUENCE), value, False
    if isinstance(value, (bytes, bytearray, memoryview)):
        shown = bytes(value[:_BYTES_SHOWN])
        if len(value) > len(shown):
            return _TEXT, f"{shown!r}…[{len(value) - len(shown)} more bytes]", True
        return _TEXT, repr(shown), False
    return _TEXT, _as_text(value), False


class _Clipper:
    """One walk of :func:`clip` (with ``mask``: of :func:`redact_bounded`).

    ``value`` returns ``(copy, length of its JSON)``, the length at most ``budget``;
    ``cut`` tells whether the walk left anything out. A container that fits whole is
    kept whole; else it keeps as many items as can have _MIN_SHARE bytes each, and
    shares its room out: items smaller than an equal share keep their size, the
    others split what is left (:meth:`allot`). Sizes are measured up to a cap
    (:meth:`measure`), so each level of nesting costs in proportion to its room.
    """

    __slots__ = ("cut", "mask", "sizes")

    def __init__(self, mask: bool) -> None:
        self.cut = False
        self.mask = mask
        self.sizes: dict[tuple[int, int], tuple[int, int]] = {}  # (id, depth) -> (size, cap it was measured to)

    def clip(self, value: Any, max_bytes: int, tail: int = 0) -> Any:
        return self.value(value, max(max_bytes, 2), 0, tail)[0]

    def value(self, value: Any, budget: int, depth: int, tail: int = 0) -> tuple[Any, int]:
        kind, it, described = _kind(value, depth)
        self.cut = self.cut or described
        if kind == _TEXT:
            return self.text(it, budget, tail)
        if kind == _SCALAR:
            size = len(json.dumps(it))
            return (it, size) if size <= budget else self.text(str(it), budget)
        if kind == _SEQUENCE:
            return self.sequence(it, budget, depth)
        return self.mapping(it, budget, depth)

    def whole(self, text: str) -> str:
        return _scan(text) if self.mask else text

    def text(self, text: str, budget: int, tail: int = 0) -> tuple[str, int]:
        if len(text) <= 2 * budget:  # whole if it fits (masking may have shortened it)
            kept = self.whole(text)
            size = len(json.dumps(kept))  # escapes (\n, \uXXXX) count as what they take
            if size <= budget:
                return kept, size
        self.cut = True
        limit = budget - 2  # the quotes
        for _ in range(4):
            kept = redact_text(text, max(limit, 0), tail=tail) if self.mask else truncate(text, limit, tail=tail)
            size = len(json.dumps(kept))
            if size <= budget:
                return kept, size
            limit = min(limit - 1, limit * (budget - 2) // size)
        # at most 12 bytes of JSON a character (an escaped surrogate pair): this fits
        kept = truncate(text, (budget - 2) // 12)
        return kept, len(json.dumps(kept))

    def measure(self, value: Any, cap: int, depth: int) -> int:
        """The size :meth:`value` gives ``value`` when nothing needs cutting, or more than ``cap``.

        Sizes are remembered for the walk (a value inside a container is measured at each
        level above it), so measuring costs about what the items looked at take.
        """
        known = self.sizes.get((id(value), depth))
        if known is not None and (known[0] <= known[1] or known[1] >= cap):
            return known[0] if known[0] <= cap else cap + 1
        kind, it, _ = _kind(value, depth)
        if kind == _SCALAR:
            return len(json.dumps(it))
        if kind == _TEXT:
            size = len(json.dumps(self.whole(it))) if len(it) <= 2 * cap else cap + 1
        else:
            size = 2
            pairs = it.items() if kind == _MAPPING else ((None, item) for item in it)
            for index, (key, item) in enumerate(pairs):
                if kind == _MAPPING:
                    name = self.whole(key if isinstance(key, str) else _as_text(key)[:2 * _MAX_KEY_BYTES])
                    name_size = len(json.dumps(name)) if len(name) <= 2 * _MAX_KEY_BYTES else cap + 1
                    size += (name_size if name_size <= _MAX_KEY_BYTES else cap + 1) + 2
                    item = MASK if self.mask and _masks(key, item) else item
                size += (2 if index else 0)
                size += self.measure(item, cap - size, depth + 1)
                if size > cap:
                    break
            size = min(size, cap + 1)
        self.sizes[(id(value), depth)] = (size, cap)
        return size

    def entries(self, it: Any, kind: int, count: int, key_room: int) -> list[tuple[int, Any, str | None]]:
        """``(fixed cost, item, key text)`` of the first ``count`` items; the fixed cost is the
        comma, and for a mapping the key (cut to ``key_room``) and ": "."""
        if kind == _SEQUENCE:
            return [(2 if index else 0, item, None) for index, item in enumerate(itertools.islice(it, count))]
        out: list[tuple[int, Any, str | None]] = []
        for index, (key, item) in enumerate(itertools.islice(it.items(), count)):
            name, size = self.text(key if isinstance(key, str) else _as_text(key), key_room)
            out.append(((2 if index else 0) + size + 2, MASK if self.mask and _masks(key, item) else item, name))
        return out

    def sequence(self, items: Any, budget: int, depth: int) -> tuple[list, int]:
        kept, parts, size = self.container(items, _SEQUENCE, budget, depth)
        out = [clipped for _, clipped in parts]
        if kept < len(items):
            marker = f"…[{len(items) - kept} more items]"
            need = len(json.dumps(marker)) + (2 if out else 0)
            if size + need <= budget:
                out.append(marker)
                size += need
        return out, size

    def mapping(self, mapping: Mapping, budget: int, depth: int) -> tuple[dict, int]:
        kept, parts, size = self.container(mapping, _MAPPING, budget, depth)
        out: dict = {}
        for name, clipped in parts:
            out.setdefault(name, clipped)  # two keys that read the same once cut or made text: the first
        if len(out) < len(parts):
            self.cut = True
        if kept < len(mapping):
            marker = f"[{len(mapping) - kept} more keys]"
            need = _MORE_KEY_SIZE + len(json.dumps(marker)) + (2 if out else 0)
            if size + need <= budget:
                out["…"] = marker
                size += need
        return out, size

    def container(self, it: Any, kind: int, budget: int, depth: int) -> tuple[int, list[tuple], int]:
        """``(items kept, (key text, copy) of each, size so far)`` of a sequence or mapping."""
        room, count = budget - 2, len(it)
        if count <= room:  # every item takes a byte at the least: it may fit whole
            entries = self.entries(it, kind, count, _MAX_KEY_BYTES)
            total, needs = sum(fixed for fixed, _, _ in entries), []
            for _, item, _ in entries:
                if total > room:
                    break
                needs.append(self.measure(item, room - total, depth + 1))
                total += needs[-1]
            if total <= room and len(needs) == len(entries):
                return count, [(name, clipped) for name, clipped, _ in self.fill(entries, needs, depth)], 2 + total
        self.cut = True
        keep = count if count * _MIN_SHARE <= room else min(count, max(0, (room - _MORE_ROOM) // _MIN_SHARE))
        room -= 0 if keep == count else _MORE_ROOM
        entries = self.entries(it, kind, keep, min(_MAX_KEY_BYTES, max(room // max(keep, 1) // 2, 2)))
        fixed = sum(cost for cost, _, _ in entries)
        parts = self.fill(entries, self.allot(entries, room - fixed, depth), depth)
        return keep, [(name, clipped) for name, clipped, _ in parts], 2 + fixed + sum(s for _, _, s in parts)

    def allot(self, entries: list[tuple[int, Any, str | None]], room: int, depth: int) -> list[int]:
        """Each item's budget within ``room``: an item that needs less than an equal share gets
        what it needs, the others split the rest equally."""
        if not entries:
            return []
        share = room // len(entries)
        needs = [self.measure(item, share, depth + 1) for _, item, _ in entries]
        small = [need for need in needs if need <= share]
        rest = (room - sum(small)) // (len(needs) - len(small)) if len(small) < len(needs) else 0
        return [need if need <= share else rest for need in needs]

    def fill(self, entries: list[tuple[int, Any, str | None]], budgets: list[int], depth: int) -> list[tuple]:
        """``(key text, copy, size)`` of each item within its budget; what one leaves goes to the next."""
        parts = []
        spare = 0
        for (_, item, name), budget in zip(entries, budgets, strict=False):
            clipped, size = self.value(item, max(budget + spare, 2), depth + 1)
            spare += budget - size
            parts.append((name, clipped, size))
        return parts


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not stop a record
        return f"<unprintable {type(value).__name__}>"
