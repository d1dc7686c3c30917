"""Numba's on-disk cache of the CPU kernels, kept in step with their sources.

    drop_stale(folder)        # on import of kernels/cpu: forget the folder's cached kernels if any source changed

Numba keys a cached kernel on its own file's contents only, but the kernels here inline functions and LLVM IR
from the other files of this folder (matmul.py's kernels hold qdot.py's tile_dot and lora.py's epilogue). After an
edit, a `git pull` or an upgrade that changes qdot.py alone, Numba would hand back matmul.py's kernels compiled
from the old qdot.py: old code on new data layouts, silently. So a digest of every source file of the folder is
kept beside its cache, and when it differs the folder's cached kernels are deleted; they compile again, as on a
first run. Where Numba's cache cannot be located (its internals moved), nothing is done.
"""

import hashlib
from pathlib import Path

STAMP = "minirs-sources.sha256"


def sources_digest(folder: Path) -> str:
    """sha256 over the names and contents of the folder's .py files, in name order."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_folder(probe) -> Path | None:
    """Where Numba caches the kernels of probe's file (a plain function of that file), or None."""
    try:
        from numba.core.caching import FunctionCache  # what @njit(cache=True) uses; it finds the place as Numba does
        return Path(FunctionCache(probe).cache_path)
    except Exception:  # a Numba without this layout, or no writable place: leave the cache to Numba
        return None


def drop_stale(folder: Path, probe=None) -> bool:
    """Delete the cached kernels of `folder` when its sources changed since they were cached; True if it did.
    probe: a plain function defined in `folder` (default: this file's own, for kernels/cpu)."""
    where = cache_folder(probe or _probe)
    if where is None:
        return False
    digest = sources_digest(folder)
    stamp = where / STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    dropped = False
    for f in list(where.glob("*.nbi")) + list(where.glob("*.nbc")):
        try:
            f.unlink()
            dropped = True
        except OSError:  # another process got there first
            pass
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = where / f"{STAMP}.{digest[:8]}.tmp"
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:
        pass
    return dropped


def _probe():  # a plain function of this folder: Numba's locator finds the folder's cache from it
    pass
