"""Files the platform keeps on local disk, private to the user who runs it.

The data dir holds the embedded Redis's password and address, its AOF, and
the publish spool (job arguments in plain text): the directory is 0700 and
every file 0600, created so from the start rather than tightened later.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file", "write_private"]


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as a directory readable by this user only (0700)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists as a 0600 file (an existing one is tightened)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``path`` as a 0600 file (never readable by others, even for an instant)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    if Path(path).stat().st_mode & 0o077:
        os.chmod(path, 0o600)
