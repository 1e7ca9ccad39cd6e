"""What redaction costs on adversarial text: ``python benchmarks/bench_redact.py``.

For 1 MB of each pattern's worst case (text that starts, or nearly completes,
a match at every character), the least CPU time of three runs of:

* ``redact_text(text)``: what the platform does (the scan bounded to
  ``MAX_TEXT_CHARS``, the rest cut with a marker);
* ``redact_text(text, None)``: the whole megabyte scanned, to show the time
  grows linearly (per character about the same as on 64 KiB);

and of ``redact_bounded`` turning a 1 MB argument into a dead-letter field.
No Redis is needed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1 << 20


def _fill(unit: str, size: int) -> str:
    return (unit * (size // len(unit) + 1))[:size]


#: Each pattern's worst case, by name: a function of the size wanted.
ADVERSARIAL = {
    "letters (issue 15)": lambda n: _fill("a", n),
    "hex (issue 15)": lambda n: _fill("0123456789abcdef", n),
    "pass repeated (issue 15)": lambda n: _fill("pass", n),
    "name prefixes": lambda n: _fill("passwor", n),
    "name and a long identifier": lambda n: _fill("token" + "a" * 40 + " ", n),
    "dense secrets": lambda n: _fill("pwd=x ", n),
    "dense quoted secrets": lambda n: _fill('password="a" ', n),
    "unterminated quotes": lambda n: _fill('password="', n),
    "escapes in a quoted value": lambda n: 'password="' + _fill("\\", n),
    "escaped quotes": lambda n: _fill("password=\\'", n),
    "quotes closed too early": lambda n: _fill('password="a"b ', n),
    "escapes after an escaped quote": lambda n: "password=\\'" + _fill("\\", n),
    "header lines": lambda n: _fill("Authorization: x\n", n),
    "url starts": lambda n: _fill("://", n),
    "url authority without @": lambda n: "://" + _fill("a:", n),
    "url authority of @": lambda n: "://" + _fill("@", n),
    "bearer words": lambda n: _fill("Bearer ", n),
    "bearer tokens": lambda n: _fill("bearer x ", n),
    "jwt starts": lambda n: _fill("eyJ", n),
    "jwt parts": lambda n: _fill("eyJa.", n),
    "token prefixes": lambda n: _fill("ghp_", n),
    "pem headers": lambda n: _fill("-----BEGIN PRIVATE KEY-----", n),
    "pem without end": lambda n: "-----BEGIN PRIVATE KEY-----" + _fill("-", n),
    "digit groups": lambda n: _fill("card=1 1 ", n),
    "camel case": lambda n: _fill("aB", n),
    "short names": lambda n: _fill("AUTH_", n),
    "spaces after a name": lambda n: "password:" + _fill(" ", n),
    "prose": lambda n: _fill("The token count is 3, session ok; a bearer of news. ", n),
}


def cpu_best_of_3(fn) -> float:
    """The least CPU time of three runs on this thread, in seconds."""
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        fn()
        best = min(best, time.thread_time() - started)
    return best


def main() -> None:
    from resilience.deadletter import MAX_ARGS_BYTES
    from resilience.redact import redact_bounded, redact_text

    print(f"{'1 MB of':34} {'bounded':>9} {'whole MB':>9} {'ns/char':>8}")
    worst = worst_whole = 0.0
    for name, make in ADVERSARIAL.items():
        text = make(MB)
        bounded = cpu_best_of_3(lambda text=text: redact_text(text))
        whole = cpu_best_of_3(lambda text=text: redact_text(text, None))
        worst, worst_whole = max(worst, bounded), max(worst_whole, whole)
        print(f"{name:34} {bounded * 1000:7.2f}ms {whole * 1000:7.1f}ms {whole / MB * 1e9:8.0f}")
    print(f"{'worst':34} {worst * 1000:7.2f}ms {worst_whole * 1000:7.1f}ms")
    argument = ["x" * 1_000_000, {"password": "p", "note": "y" * 1_000_000}]
    spent = cpu_best_of_3(lambda: redact_bounded(argument, MAX_ARGS_BYTES))
    print(f"a 1 MB argument to a {MAX_ARGS_BYTES // 1024} KiB dead-letter field: {spent * 1000:.2f}ms")


if __name__ == "__main__":
    main()
