"""The module cache: in-memory LRU, on-disk AOT cache, link-plan cache, and
their failure modes (corruption, full or unusable disk, concurrent writers)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from wasmrun.runtime import Runtime
from wasmrun.runtime.diskcache import CacheWarning


def fresh(corpus: Path, cache_dir, **kw) -> Runtime:
    return Runtime(library_path=[str(corpus)], environ={}, disk_cache=cache_dir, **kw)


def run_hello(rt: Runtime, corpus: Path, tmp_path: Path) -> str:
    out = tmp_path / "out.txt"
    assert rt.run(str(corpus / "hello.wasm"), stdout=str(out)).exit_code == 0
    return out.read_text()


def test_memory_cache_hits_and_lru_eviction(corpus: Path):
    rt = fresh(corpus, False, memory_budget=5_000)
    small = ["libbase.so", "libleft.so", "libright.so", "libfp.so", "libdata.so"]
    for name in small:
        rt.cache.load(str(corpus / name))
    s = rt.stats()
    assert s["memory.misses"] == 5 and s["memory.evictions"] > 0
    assert s["memory.bytes"] <= 5_000
    rt.cache.load(str(corpus / small[-1]))  # most recent: still there
    assert rt.stats()["memory.hits"] == 1
    rt.cache.load(str(corpus / small[0]))  # least recent: evicted, read again
    assert rt.stats()["memory.misses"] == 6


def test_the_module_caches_can_be_bounded_by_count(corpus: Path, tmp_path: Path):
    """``max_modules`` (wasmrund's workers: each module holds a descriptor)
    bounds the module cache and the generated modules' cache by number,
    whatever their bytes."""
    rt = fresh(corpus, False, max_modules=2)
    for name in ["libbase.so", "libleft.so", "libright.so", "libfp.so"]:
        rt.cache.load(str(corpus / name))
    assert rt.stats()["memory.entries"] == 2
    for name in ["hello.wasm", "datamain.wasm", "fpmain.wasm"]:
        assert rt.run(str(corpus / name), stdout=str(tmp_path / "out")).exit_code == 0
    assert len(rt.generated) <= 2 and rt.stats()["memory.entries"] <= 2
    assert rt.cache._compile_locks == {}  # nothing kept per module compiled


def test_changed_file_is_never_served_stale(corpus: Path, tmp_path: Path):
    lib = tmp_path / "libx.so"
    shutil.copy(corpus / "libleft.so", lib)
    rt = fresh(corpus, False)
    first = rt.cache.load(str(lib))
    shutil.copy(corpus / "libright.so", lib)
    second = rt.cache.load(str(lib))
    assert first.digest != second.digest
    assert "right" in second.info.exports and "left" not in second.info.exports


def test_same_bytes_elsewhere_share_compiled_code(corpus: Path, tmp_path: Path):
    copy = tmp_path / "libc-copy.so"
    shutil.copy(corpus / "libc.so", copy)
    rt = fresh(corpus, False)
    a = rt.cache.load(str(corpus / "libc.so"))
    b = rt.cache.load(str(copy))
    assert b.path == str(copy)
    assert a.module() is b.module()
    assert rt.stats()["memory.compiles"] == 1


def test_threads_compile_a_module_once(corpus: Path):
    rt = fresh(corpus, False)
    image = rt.cache.load(str(corpus / "libc.so"))
    modules = []
    threads = [threading.Thread(target=lambda: modules.append(image.module())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in modules}) == 1
    assert rt.stats()["memory.compiles"] == 1


def test_disk_cache_makes_a_fresh_runtime_compile_nothing(corpus: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = fresh(corpus, cache)
    assert run_hello(first, corpus, tmp_path) == "hello, world\n"
    assert first.stats()["memory.compiles"] > 0
    second = fresh(corpus, cache)
    assert run_hello(second, corpus, tmp_path) == "hello, world\n"
    s = second.stats()
    assert s["memory.compiles"] == 0
    assert s["memory.deserializes"] == first.stats()["memory.compiles"]
    assert (cache / "key").stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.suffix == ".cwasm")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign"])
def test_damaged_entries_are_deleted_and_recompiled(corpus, tmp_path, damage):
    cache = tmp_path / "cache"
    run_hello(fresh(corpus, cache), corpus, tmp_path)
    for entry in _entries(cache):
        data = bytearray(entry.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0xFF
        elif damage == "truncate":
            data = data[: len(data) // 3]
        elif damage == "empty":
            data = bytearray()
        else:  # written by someone else: a valid-looking entry under another key
            other = tmp_path / "other-cache"
            run_hello(fresh(corpus, other), corpus, tmp_path)
            data = bytearray((other / entry.name).read_bytes())
            (cache / "key").write_bytes(os.urandom(32))  # our key now differs
        entry.write_bytes(bytes(data))
    rt = fresh(corpus, cache)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_hello(rt, corpus, tmp_path) == "hello, world\n"
    s = rt.stats()
    assert s["disk.rejected"] == len(_entries(cache)) > 0
    assert s["memory.compiles"] == s["disk.rejected"]
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert len(cache_warnings) == 1  # warned once, not per entry
    assert "corrupted or foreign" in str(cache_warnings[0].message)
    # The entries were rewritten: the next runtime loads them all.
    again = fresh(corpus, cache)
    run_hello(again, corpus, tmp_path)
    assert again.stats()["memory.compiles"] == 0


def test_unusable_cache_directory_falls_back_to_compiling(corpus, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    rt = fresh(corpus, blocker / "cache")
    with pytest.warns(CacheWarning, match="cannot use it"):
        assert run_hello(rt, corpus, tmp_path) == "hello, world\n"
    assert rt.stats()["memory.compiles"] > 0


def test_cache_directory_writable_by_others_is_not_used(corpus, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    rt = fresh(corpus, cache)
    with pytest.warns(CacheWarning, match="writable by others"):
        run_hello(rt, corpus, tmp_path)
    assert _entries(cache) == []


def test_full_disk_warns_once_and_keeps_running(corpus, tmp_path, monkeypatch):
    import tempfile as tempfile_module

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = tmp_path / "cache"
    rt = fresh(corpus, cache)
    rt.cache.disk._prepare()  # key and directory exist; writing entries fails
    monkeypatch.setattr(tempfile_module, "mkstemp", no_space)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_hello(rt, corpus, tmp_path) == "hello, world\n"
        assert run_hello(rt, corpus, tmp_path) == "hello, world\n"
    msgs = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(msgs) == 1 and "the disk is full" in msgs[0]
    assert rt.stats()["disk.errors"] == 1


def test_disk_cache_is_size_bounded(corpus, tmp_path):
    cache = tmp_path / "cache"
    rt = fresh(corpus, cache, disk_cache_max_bytes=30_000)
    for name in ["libbase.so", "libleft.so", "libright.so", "libfp.so", "libdata.so"]:
        rt.cache.load(str(corpus / name)).module()
    total = sum(p.stat().st_size for p in _entries(cache))
    assert total <= 30_000
    assert rt.stats()["disk.evictions"] > 0


def test_two_processes_fill_the_same_cache_at_once(corpus, tmp_path):
    cache = tmp_path / "cache"
    code = (
        "import sys; from wasmrun.runtime import Runtime; "
        f"rt = Runtime(library_path=[{str(corpus)!r}], environ={{}}, disk_cache={str(cache)!r}); "
        f"sys.exit(rt.run({str(corpus / 'diamond.wasm')!r}).exit_code)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert all(o.endswith("left=10 right=200 base_counter=2\n") for o in outs)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp leftovers
    third = fresh(corpus, cache)
    third.run(str(corpus / "diamond.wasm"), stdout=os.devnull)
    assert third.stats()["memory.compiles"] == 0


def test_plan_cache_reuses_and_revalidates(corpus, tmp_path):
    libdir = tmp_path / "lib"
    libdir.mkdir()
    for name in ["libleft.so", "libbase.so", "libc.so"]:
        shutil.copy(corpus / name, libdir / name)
    early = tmp_path / "early"
    early.mkdir()
    rt = Runtime(library_path=[str(early), str(libdir)], environ={}, disk_cache=False)
    p1 = rt.plan(str(libdir / "libleft.so"))
    assert rt.plan(str(libdir / "libleft.so")) is p1
    assert rt.stats()["plan.hits"] == 1
    # A library rebuilt in place: the plan is stale.
    shutil.copy(corpus / "libbase.so", libdir / "libbase.so")
    os.utime(libdir / "libbase.so", ns=(1, 1))
    p2 = rt.plan(str(libdir / "libleft.so"))
    assert p2 is not p1 and rt.stats()["plan.stale"] == 1
    # A library appearing earlier in the search path: the search would now
    # find it, so the plan is stale too.
    shutil.copy(corpus / "libbase.so", early / "libbase.so")
    p3 = rt.plan(str(libdir / "libleft.so"))
    assert p3 is not p2
    assert [m.image.path for m in p3.modules if m.image.name == "libbase.so"] == [
        str(early / "libbase.so")
    ]


def test_runs_get_fresh_instance_sets(runtime, corpus):
    a = runtime.open_library(str(corpus / "libleft.so"))
    b = runtime.open_library(str(corpus / "libleft.so"))
    assert a.plan is b.plan  # the plan is shared ...
    assert a.call("left") == [10] and a.call("left") == [20]
    assert b.call("left") == [10]  # ... but not the memory
    assert a.store is not b.store


def test_cli_preload_stats_and_clear(cli, corpus, tmp_path):
    env = {"WASMRUN_CACHE_DIR": str(tmp_path / "c")}
    p = cli("preload", "-L", str(corpus), "libleft.so", env=env)
    assert p.returncode == 0, p.stderr
    assert f"{corpus}/libc.so" in p.stdout and "compiled 3, loaded 0" in p.stdout
    p = cli("preload", "-L", str(corpus), "libleft.so", env=env)
    assert "compiled 0, loaded 3 from the disk cache" in p.stdout
    p = cli("cache", "stats", env=env)
    assert p.returncode == 0 and "entries: 3" in p.stdout
    p = cli("cache", "clear", env=env)
    assert p.returncode == 0 and "removed 3 entries" in p.stdout
    p = cli("cache", "stats", env=env)
    assert "entries: 0" in p.stdout
    p = cli("preload", "-L", str(corpus), "libnothere.so", env=env)
    assert p.returncode == 127 and "libnothere.so: cannot open shared object file" in p.stderr
