"""The front's compiled-code store, in process: sealed memfds, the disk
cache behind them, what a compiler process hands over, and the bounds."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

import pytest
import wasmtime
from wasmrun.daemon.codestore import CodeStore, CompileFailed
from wasmrun.runtime.api import make_engine
from wasmrun.runtime.cache import ModuleCache
from wasmrun.runtime.diskcache import DiskCache, engine_fingerprint
from wasmrun.toolchain.synthetic import straight_line_program

ENGINE = make_engine(False)


def _store(disk: Path | None = None, **kw) -> CodeStore:
    cache = ModuleCache(
        ENGINE,
        disk=None if disk is None else DiskCache(disk, ENGINE, engine_fingerprint("test")),
    )
    return CodeStore(cache, kw.pop("budget", 1 << 30), **kw)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _compiled_memfd(data: bytes) -> int:
    """What a compiler process sends: serialized code, written, unsealed."""
    fd = os.memfd_create("test-code", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, wasmtime.Module(ENGINE, data).serialize())
    return fd


def test_code_is_compiled_once_and_lent_sealed() -> None:
    store = _store()
    data = straight_line_program(10)
    first = store.code_for(data)
    second = store.code_for(data)
    try:
        assert (store.compiled, store.served) == (1, 2)
        with pytest.raises(PermissionError):  # F_SEAL_WRITE
            os.write(second, b"planted")
        module = wasmtime.Module.deserialize_file(ENGINE, f"/proc/self/fd/{first}")
        assert [e.name for e in module.exports] == ["_start", "memory"]
    finally:
        os.close(first)
        os.close(second)
        store.close()


def test_a_new_store_finds_code_in_the_disk_cache(tmp_path: Path) -> None:
    data = straight_line_program(11)
    first = _store(tmp_path)
    os.close(first.code_for(data))
    first.close()
    again = _store(tmp_path)
    digest, fd = again.lookup(data)
    assert fd is not None and (again.compiled, again.from_disk) == (0, 1)
    os.close(fd)
    again.close()


def test_a_compilers_memfd_is_sealed_and_saved(tmp_path: Path) -> None:
    store = _store(tmp_path)
    data = straight_line_program(12)
    digest, fd = store.lookup(data)
    assert fd is None
    mine = store.add(digest, _compiled_memfd(data))
    assert fcntl.fcntl(mine, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
    os.close(mine)
    store.close()
    assert _store(tmp_path).lookup(data)[1] is not None  # on disk, authenticated


def test_a_memfd_still_writable_through_a_mapping_is_refused() -> None:
    """A compiler that kept a shared writable mapping could change the code
    after the front lent it: sealing fails, and so does the compile."""
    store = _store()
    data = straight_line_program(13)
    fd = _compiled_memfd(data)
    mapping = mmap.mmap(fd, os.fstat(fd).st_size, mmap.MAP_SHARED, mmap.PROT_WRITE)
    try:
        with pytest.raises(CompileFailed) as e:
            store.add("digest", fd)
        assert e.value.limit and os.strerror(errno.EBUSY) in str(e.value)
        assert store.summary()["code.entries"] == 0
    finally:
        mapping.close()
        store.close()


def test_entries_are_bounded_by_number_and_their_descriptors_closed() -> None:
    """Many small modules must not cost the front a descriptor each."""
    store = _store(max_entries=3)
    before = _open_fds()
    for n in range(20, 28):
        os.close(store.code_for(straight_line_program(n)))
    assert store.summary()["code.entries"] == 3
    assert _open_fds() == before + 3
    store.close()
    assert _open_fds() == before


def test_entries_are_bounded_by_bytes() -> None:
    store = _store(budget=1)  # every entry is over budget: the newest is kept
    for n in range(30, 34):
        os.close(store.code_for(straight_line_program(n)))
    assert store.summary()["code.entries"] == 1
    store.close()
