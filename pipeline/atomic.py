"""One way to write a file so readers see the old bytes or the new, never a part."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path


def replace_file(path: Path, data: bytes, read_only: bool = False) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then `os.replace` it into place."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if read_only:
            tmp.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
