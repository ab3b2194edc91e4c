"""The in-process module cache: decoded (and, once used, compiled) modules.

A file is identified first by its stat identity (device, inode, size,
mtime); a changed identity forces a re-read, and identical bytes under
another name share one image through the content digest, so a file that
changes on disk is never served stale and a copied libc compiles once.
"""

from __future__ import annotations

import hashlib
import os
import threading

import wasmtime

from .errors import LoadError
from .module import ModuleImage, decode


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ModuleCache:
    """Thread-safe cache of :class:`ModuleImage` by file identity and digest."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self.engine = engine
        self._by_identity: dict[tuple[int, int, int, int], ModuleImage] = {}
        self._by_digest: dict[str, ModuleImage] = {}
        self._lock = threading.Lock()

    def load(self, path: str, name: str | None = None) -> ModuleImage:
        """Decode ``path`` (or return the cached image); LoadError if it cannot
        be opened or is not a valid module."""
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                key = _identity(st)
                with self._lock:
                    hit = self._by_identity.get(key)
                if hit is not None and hit.path == path:
                    return hit
                data = f.read()
        except IsADirectoryError:
            raise LoadError(f"{path}: is a directory") from None
        except OSError as e:
            raise LoadError(f"{path}: cannot open shared object file: {e.strerror}") from None
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            same = self._by_digest.get(digest)
        if same is not None and same.path == path:
            image = same
        else:
            image = decode(data, name or os.path.basename(path), path, self.engine)
            if same is not None:
                # Same bytes elsewhere: reuse its compiled code.
                image = same.with_location(name or os.path.basename(path), path)
        with self._lock:
            self._by_identity[key] = image
            self._by_digest.setdefault(digest, image)
        return image
