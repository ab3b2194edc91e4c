"""The on-disk AOT cache: compiled modules serialized by wasmtime.

Deserializing is only safe for bytes wasmtime itself produced, for this
engine: a crafted file is arbitrary native code. So every entry is written
by this cache and carries an HMAC-SHA256 under a secret key that lives in the
cache directory (mode 0600, directory 0700, both owned by the user). An entry
whose magic, engine fingerprint, length or MAC does not match is deleted and
the module is compiled again: a corrupted, truncated or foreign file is never
handed to ``Module.deserialize``.

Writes are atomic (a temporary file in the same directory, then rename), so
two processes filling the cache at once each see whole entries. Any
``OSError`` (full disk, read-only or foreign-owned directory) turns the
cache off for writing and is reported once, as a warning; runs go on
compiling.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Final

import attrs
import wasmtime

MAGIC: Final = b"WASMRUN-AOT\x00"
FORMAT: Final = 1
MAC_SIZE: Final = 32
KEY_FILE: Final = "key"
ENTRY_SUFFIX: Final = ".cwasm"
DEFAULT_MAX_BYTES: Final = 1 << 30  # 1 GiB
ENV_CACHE_DIR: Final = "WASMRUN_CACHE_DIR"


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$WASMRUN_CACHE_DIR``, else ``$XDG_CACHE_HOME/wasmrun``, else
    ``~/.cache/wasmrun``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR])
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasmrun"


def engine_fingerprint(settings: str) -> str:
    """What must match for a serialized module to be usable: the exact
    wasmtime library (path, size, mtime: a reinstall or upgrade changes it),
    the engine settings and the machine. wasmtime also refuses incompatible
    data itself; this keeps such entries from even being read."""
    from .wasmtime_seam import library_identity

    ident = library_identity()
    uname = os.uname()
    text = f"wasmtime {ident}; {settings}; {uname.machine}; {uname.sysname}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CacheWarning(UserWarning):
    """A problem with the disk cache; wasmrun continues without it."""


@attrs.define
class DiskStats:
    hits: int = 0
    misses: int = 0
    writes: int = 0
    rejected: int = 0  # corrupted, truncated or foreign entries deleted
    evictions: int = 0
    errors: int = 0


class DiskCache:
    """Serialized compiled modules under ``directory``, bounded by
    ``max_bytes`` with least-recently-used eviction (by mtime)."""

    def __init__(
        self,
        directory: Path | str,
        engine: wasmtime.Engine,
        fingerprint: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.engine = engine
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.stats = DiskStats()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._key: bytes | None = None
        self.writable = True
        self.usable = True

    # -- set-up ---------------------------------------------------------------

    def _warn(self, what: str, detail: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(f"wasmrun cache {self.directory}: {detail}", CacheWarning, stacklevel=3)

    def _prepare(self) -> bytes | None:
        """Create or check the directory and the key; None if unusable."""
        if self._key is not None or not self.usable:
            return self._key
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.directory.stat()
            if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                self.usable = False
                self._warn(
                    "owner",
                    "not owned by this user or writable by others; not using it",
                )
                return None
            self._key = self._read_or_create_key()
        except OSError as e:
            self.usable = False
            self._warn("setup", f"cannot use it ({e.strerror}); compiling without a disk cache")
            return None
        return self._key

    def _read_or_create_key(self) -> bytes:
        path = self.directory / KEY_FILE
        for _ in range(50):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                import secrets
                import tempfile

                fd_tmp, tmp = tempfile.mkstemp(dir=self.directory, prefix=".key-")
                try:
                    os.write(fd_tmp, secrets.token_bytes(32))
                    os.fsync(fd_tmp)
                finally:
                    os.close(fd_tmp)
                try:
                    os.link(tmp, path)  # atomic; loses to a concurrent creator
                except FileExistsError:
                    pass
                finally:
                    os.unlink(tmp)
                continue
            try:
                st = os.fstat(fd)
                key = os.read(fd, 64)
            finally:
                os.close(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                raise OSError(errno.EPERM, "the cache key is readable or owned by others")
            if len(key) == 32:
                return key
        raise OSError(errno.EIO, "cannot read the cache key")

    # -- entries ----------------------------------------------------------------

    def _entry(self, digest: str) -> Path:
        return self.directory / f"{digest}-{self.fingerprint}{ENTRY_SUFFIX}"

    def _mac(self, key: bytes, header: bytes, payload: bytes | bytearray) -> bytes:
        mac = hmac.new(key, header, hashlib.sha256)
        mac.update(payload)
        return mac.digest()

    def load(self, digest: str) -> wasmtime.Module | None:
        """The compiled module for a content digest, or None (miss)."""
        found = self.load_payload(digest)
        if found is None:
            return None
        path, payload = found
        try:
            return wasmtime.Module.deserialize(self.engine, payload)
        except wasmtime.WasmtimeError:
            self._reject(path)
            return None

    def load_payload(self, digest: str) -> tuple[Path, bytes] | None:
        """The entry's path and its serialized code, authenticated and
        made for this engine, or None (miss). Not deserialized: wasmrund's
        front lends the bytes to workers as they are."""
        key = self._prepare()
        if key is None:
            return None
        path = self._entry(digest)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            with self._lock:
                self.stats.misses += 1
            return None
        except OSError as e:
            with self._lock:
                self.stats.errors += 1
            self._warn("read", f"cannot read an entry ({e.strerror}); compiling instead")
            return None
        payload = self._verify(blob, digest, key)
        if payload is None:
            self._reject(path)
            return None
        try:
            os.utime(path)  # recently used: last to be evicted
        except OSError:
            pass
        with self._lock:
            self.stats.hits += 1
        return path, payload

    def _verify(self, blob: bytes, digest: str, key: bytes) -> bytes | None:
        if len(blob) < len(MAGIC) + 4 + MAC_SIZE or not blob.startswith(MAGIC):
            return None
        pos = len(MAGIC)
        hlen = int.from_bytes(blob[pos : pos + 4], "little")
        pos += 4
        if hlen > 4096 or pos + hlen + MAC_SIZE > len(blob):
            return None
        header = blob[pos : pos + hlen]
        payload = blob[pos + hlen : len(blob) - MAC_SIZE]
        mac = blob[len(blob) - MAC_SIZE :]
        if not hmac.compare_digest(mac, self._mac(key, header, payload)):
            return None
        try:
            meta = json.loads(header)
        except ValueError:
            return None
        if meta != {
            "format": FORMAT,
            "digest": digest,
            "fingerprint": self.fingerprint,
            "size": len(payload),
        }:
            return None
        return payload

    def _reject(self, path: Path) -> None:
        with self._lock:
            self.stats.rejected += 1
        self._warn("corrupt", f"deleted a corrupted or foreign entry {path.name}; recompiling")
        try:
            path.unlink()
        except OSError:
            pass

    def store(self, digest: str, module: wasmtime.Module) -> int:
        """Serialize and write an entry; returns its size (0 if not written)."""
        if self._prepare() is None or not self.writable:
            return 0
        return self.store_payload(digest, module.serialize())

    def store_payload(self, digest: str, payload: bytes | bytearray) -> int:
        """Write an entry holding ``payload``, code serialized by this
        engine's settings; returns its size (0 if not written)."""
        key = self._prepare()
        if key is None or not self.writable:
            return 0
        header = json.dumps(
            {
                "format": FORMAT,
                "digest": digest,
                "fingerprint": self.fingerprint,
                "size": len(payload),
            },
            sort_keys=True,
        ).encode()
        blob = (
            MAGIC
            + len(header).to_bytes(4, "little")
            + header
            + payload
            + self._mac(key, header, payload)
        )
        import tempfile  # only writers need it: keep start-up imports small

        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=ENTRY_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, self._entry(digest))
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as e:
            with self._lock:
                self.stats.errors += 1
            self.writable = False
            reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
            self._warn("write", f"cannot write ({reason}); continuing without saving compiled code")
            return 0
        with self._lock:
            self.stats.writes += 1
        self._evict()
        return len(blob)

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, size, mtime) of every entry, oldest first."""
        out = []
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    if e.name.endswith(ENTRY_SUFFIX) and not e.name.startswith("."):
                        try:
                            st = e.stat()
                        except OSError:
                            continue
                        out.append((Path(e.path), st.st_size, st.st_mtime))
        except OSError:
            return []
        out.sort(key=lambda t: t[2])
        return out

    def _evict(self) -> None:
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for path, size, _ in entries:
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
            except OSError:
                continue
            total -= size
            with self._lock:
                self.stats.evictions += 1

    def clear(self) -> int:
        """Delete every entry (and stale temporary files); returns how many."""
        n = 0
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    if e.name.endswith(ENTRY_SUFFIX):
                        try:
                            os.unlink(e.path)
                            n += not e.name.startswith(".")
                        except OSError:
                            pass
        except OSError:
            return 0
        return n

    def summary(self) -> dict[str, int | str]:
        entries = self.entries()
        return {
            "disk.directory": str(self.directory),
            "disk.entries": len(entries),
            "disk.bytes": sum(size for _, size, _ in entries),
            "disk.max_bytes": self.max_bytes,
            **{f"disk.{k}": v for k, v in attrs.asdict(self.stats).items()},
        }
