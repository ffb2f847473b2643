"""Private files: the one way GridHub writes a secret (a key, a token, a code).

The data goes to a temporary file in the same directory, created with mode
0600 (``mkstemp``: no moment where others could read it, whatever the umask
allows) and synced, then takes the path's place in one step, so a reader
sees the whole old content or the whole new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: str | os.PathLike[str], data: bytes | str, *, replace: bool = True) -> Path:
    """Write ``data`` to ``path``, mode 0600 from its creation; return the path.

    ``replace``: an existing file is replaced atomically (``os.replace``).
    Else the file is only created (``os.link`` refuses to replace): an
    existing one is kept and ``FileExistsError`` raised, so of processes
    racing to create a secret exactly one wins and the others can read its
    value.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # (gone after os.replace)
    return path
