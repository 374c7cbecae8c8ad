"""Files on disk: writes that are whole or absent, the per-user cache folder, checksums.

Standard library only; the lowest floor of the engine (every stage may import it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final: Path, suffix: str = ""):
    """Yield a temporary path next to ``final``; rename it to ``final`` on success, delete it on
    any failure or interruption."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".partial{suffix}",
                               dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        if exc.filename not in (tmp, None):
            raise
        # name the file the user asked for, not its temporary name
        raise type(exc)(exc.errno, exc.strerror, str(final)) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """Where the sample lives: $LKM_CACHE_DIR, else $XDG_CACHE_HOME/lkm_segment, else ~/.cache."""
    if os.environ.get("LKM_CACHE_DIR"):
        return Path(os.environ["LKM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lkm_segment"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
