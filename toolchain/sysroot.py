"""The sysroot that wasmrun-cc links against: libc.so, crt1.o and libc++.so.

zig ships wasi-libc as static PIC archives, built without setjmp support in
its shared form, with stub ``dlopen``/``dlsym`` and without the exception
tags; its libc++ for wasm32-wasi is built with ``-fno-exceptions``.  A
sysroot for dynamically linked programs needs more, so it is assembled here
from what the ``ziglang`` package ships:

* ``lib/libc.so``: zig's wasi-libc archives plus the wasm setjmp runtime
  (``__wasm_setjmp``/``__wasm_longjmp`` from wasi-libc's own ``rt.c``) and
  wasmrun's libdl (``toolchain/libdl/libdl.c``) merged in, the way glibc 2.34
  merged libdl into libc: ``dlopen`` works whatever the link order, because
  there is no stub left to bind to.  Exported explicitly, symbol by symbol,
  rather than with ``--export-all``: that flag also exports linker-made
  globals such as ``__tls_base``, which then clash with a program's own
  (``-g`` plus ``_Thread_local`` failed with "symbol type mismatch").
  The exception tags ``__c_longjmp`` and ``__cpp_exception`` are imported,
  never defined: wasmrun creates each once per instance set and hands the
  same tag to every module (see docs/toolchain.md).
* ``lib/crt1.o``: zig's PIC ``crt1-command.o``, the start file of programs.
* ``lib/libc++.so`` (built on first C++ link, not shipped): libc++,
  libc++abi with exceptions (``cxa_exception``/``cxa_personality`` rather
  than ``cxa_noexception``) and libunwind's wasm unwinder, all compiled with
  wasm exception handling.

A stamp (``sysroot.json``) records a key over everything that shapes these
files: the recipe format, zig's version and the bytes of this module and the
C sources it adds.  A sysroot whose key differs (another driver version,
another zig) is stale and is rebuilt.  Builds are reproducible: the same
inputs give byte-identical files.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import attrs

from . import wasmcc

__all__ = [
    "CXX_EH_FLAGS",
    "C_EH_FLAGS",
    "Sysroot",
    "build_sysroot",
    "cache_root",
    "find_sysroot",
    "packaged_root",
]

HERE = Path(__file__).resolve().parent
STAMP = "sysroot.json"
_FORMAT = 1

# Wasm exception handling, the standardised form (try_table/exnref) that
# wasmtime implements; clang still defaults to the legacy try/catch form.
# zig turns the exception-handling feature off for wasm32-wasi, so it has to
# be switched back on explicitly.
_EH_COMMON = ("-mexception-handling", "-mllvm", "-wasm-use-legacy-eh=false")
# setjmp/longjmp are lowered to wasm exceptions (the __c_longjmp tag).
C_EH_FLAGS = (*_EH_COMMON, "-mllvm", "-wasm-enable-sjlj")
CXX_EH_FLAGS = (*_EH_COMMON, "-fwasm-exceptions", "-mllvm", "-wasm-enable-sjlj")

# Symbols that every module may import without any module defining them:
# the runtime provides the tags (one per instance set).
RUNTIME_PROVIDED = ("__c_longjmp", "__cpp_exception")

# Linker-made symbols that --export-all would export from libc.so: each
# module has its own, so exporting libc's copies only causes clashes.
_NOT_EXPORTED = frozenset(
    {
        "__tls_base",
        "__tls_size",
        "__tls_align",
        "__stack_pointer",
        "__memory_base",
        "__table_base",
        "__indirect_function_table",
        "__heap_base",
        "__heap_end",
        "__data_end",
        "__global_base",
        "__stack_low",
        "__stack_high",
        "__dso_handle",
        "__wasm_first_page_end",
    }
)

_LIBCXX_SOURCES = (
    "algorithm.cpp any.cpp bind.cpp call_once.cpp charconv.cpp chrono.cpp error_category.cpp"
    " exception.cpp expected.cpp fstream.cpp functional.cpp hash.cpp ios.cpp"
    " ios.instantiations.cpp iostream.cpp locale.cpp memory.cpp memory_resource.cpp new.cpp"
    " new_handler.cpp new_helpers.cpp optional.cpp ostream.cpp print.cpp random.cpp"
    " random_shuffle.cpp regex.cpp ryu/d2fixed.cpp ryu/d2s.cpp ryu/f2s.cpp stdexcept.cpp"
    " string.cpp strstream.cpp system_error.cpp typeinfo.cpp valarray.cpp variant.cpp"
    " vector.cpp verbose_abort.cpp"
).split()
# cxa_exception + cxa_personality instead of zig's cxa_noexception.
_LIBCXXABI_SOURCES = (
    "abort_message.cpp cxa_aux_runtime.cpp cxa_default_handlers.cpp cxa_demangle.cpp"
    " cxa_exception.cpp cxa_exception_storage.cpp cxa_guard.cpp cxa_handlers.cpp"
    " cxa_personality.cpp cxa_vector.cpp cxa_virtual.cpp fallback_malloc.cpp"
    " private_typeinfo.cpp stdlib_exception.cpp stdlib_new_delete.cpp stdlib_stdexcept.cpp"
    " stdlib_typeinfo.cpp"
).split()
# The flags zig itself builds libc++ with for wasm32-wasi, minus
# -fno-exceptions and -fvisibility=hidden (a shared libc++ exports its API).
_LIBCXX_FLAGS = (
    "-std=c++23",
    "-fstrict-aliasing",
    "-faligned-allocation",
    "-w",
    "-DNDEBUG",
    "-D_LIBCPP_BUILDING_LIBRARY",
    "-D_LIBCXXABI_BUILDING_LIBRARY",
    "-D_LIBCXXABI_HAS_NO_THREADS",
    "-DLIBCXX_BUILDING_LIBCXXABI",
    "-D_LIBCPP_HAS_NO_PRAGMA_SYSTEM_HEADER",
    "-DLIBC_NAMESPACE=__llvm_libc_common_utils",
)


def _zig_lib() -> Path:
    """zig's bundled sources (libc, libcxx, libcxxabi, libunwind)."""
    wasmcc._check_zig_installed()  # an optional dependency: only needed to build
    spec = importlib.util.find_spec("ziglang")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).resolve().parent / "lib"


# zig's libc.a already contains wasi-libc's emulations of what WASI lacks
# (signal/raise, mmap, getpid, clock/getrusage/times), so libc.so exports
# them; the headers only declare them under these macros, which the driver
# defines, so that software finds them as on any Unix.
EMULATION_DEFINES = (
    "-D_WASI_EMULATED_SIGNAL",
    "-D_WASI_EMULATED_MMAN",
    "-D_WASI_EMULATED_GETPID",
    "-D_WASI_EMULATED_PROCESS_CLOCKS",
)


def _extra_c_sources() -> list[Path]:
    """Our own C files added to libc.so (part of the stamp key)."""
    return [HERE / "libdl" / "libdl.c", HERE / "libc_extra" / "eh_tags.c"]


def packaged_root() -> Path:
    """Where a wheel carries the prebuilt C sysroot (package data)."""
    return HERE / "sysroot"


def cache_root() -> Path:
    """The per-user sysroot, built on demand (``$XDG_CACHE_HOME/wasmrun-sysroot``).

    Not inside ``~/.cache/wasmrun``: that directory is the module cache,
    which ``wasmrun cache clear`` empties and whose size it budgets.
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "wasmrun-sysroot")


def _key(part: str) -> str:
    """The stamp key of one part (``c`` or ``c++``) of the sysroot."""
    h = hashlib.sha256()
    h.update(f"format={_FORMAT} part={part} zig={wasmcc.zig_version()}\n".encode())
    for path in (Path(__file__), *_extra_c_sources()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@attrs.frozen
class Sysroot:
    """A built sysroot directory and what a link needs from it."""

    root: Path

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    @property
    def libc(self) -> Path:
        return self.lib / "libc.so"

    @property
    def crt1(self) -> Path:
        return self.lib / "crt1.o"

    @property
    def libcxx(self) -> Path:
        return self.lib / "libc++.so"

    @property
    def runtime_provided(self) -> Path:
        """File for ``--allow-undefined-file``: the runtime-provided tags."""
        return self.root / "runtime-provided.txt"


def _read_stamp(root: Path) -> dict[str, str]:
    try:
        doc = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _fresh(root: Path, cxx: bool) -> bool:
    """True when the sysroot at ``root`` was built by this recipe (and zig)."""
    stamp = _read_stamp(root)
    if stamp.get("c") != _key("c") or not (root / "lib" / "libc.so").is_file():
        return False
    return not cxx or (stamp.get("c++") == _key("c++") and (root / "lib" / "libc++.so").is_file())


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise builds of one sysroot (``make -j`` starts many drivers)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json(path: Path, doc: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _cc(args: Sequence[str], what: str, cxx: bool = False) -> None:
    wasmcc._run(wasmcc._zig("c++" if cxx else "cc", *args), what)


def _exports_of(path: Path) -> list[str]:
    """Export names of a wasm module, in order (a tiny export-section reader)."""
    from .driver import read_module  # here: avoids an import cycle

    return read_module(path.read_bytes()).exports


def _build_c(dest: Path) -> None:
    """Build libc.so, crt1.o and the tag list into ``dest`` (an empty dir)."""
    arch = wasmcc.find_libc_archives()
    lib = dest / "lib"
    lib.mkdir(parents=True)
    obj = dest / "obj"
    obj.mkdir()
    (dest / "runtime-provided.txt").write_text("".join(f"{n}\n" for n in RUNTIME_PROVIDED))
    rt_c = _zig_lib() / "libc/wasi/libc-top-half/musl/src/setjmp/wasm32/rt.c"
    objects = []
    for src in (rt_c, *_extra_c_sources()):
        o = obj / f"{src.stem}.o"
        _cc(
            [*wasmcc.PIC_CFLAGS, "-g0", *C_EH_FLAGS, "-c", str(src), "-o", str(o)],
            f"compiling {src.name}",
        )
        objects.append(str(o))
    inputs = [
        *objects,
        "--whole-archive",
        str(arch.libc),
        str(arch.libzigc),
        "--no-whole-archive",
        str(arch.compiler_rt),
    ]
    common = [
        "-shared",
        "--experimental-pic",
        "--strip-debug",
        f"--allow-undefined-file={dest / 'runtime-provided.txt'}",
    ]
    # wasi-libc is compiled with hidden visibility, so nothing would be
    # exported by default: take the names --export-all gives, minus the
    # linker-made ones, and export exactly those.
    probe = obj / "libc-all.so"
    wasmcc._run(
        wasmcc._zig("wasm-ld", *common, "--export-all", *inputs, "-o", str(probe)), "libc.so"
    )
    names = [n for n in _exports_of(probe) if n not in _NOT_EXPORTED]
    rsp = obj / "exports.rsp"
    rsp.write_text("".join(f"--export-if-defined={n}\n" for n in names))
    wasmcc._run(
        wasmcc._zig("wasm-ld", *common, f"@{rsp}", *inputs, "-o", str(lib / "libc.so")),
        "linking libc.so",
    )
    shutil.copyfile(arch.crt1, lib / "crt1.o")
    shutil.rmtree(obj)


def _build_cxx(sysroot: Sysroot, jobs: int) -> None:
    """Build libc++.so (libc++, libc++abi, libunwind with wasm EH) into the sysroot."""
    zl = _zig_lib()
    srcs = [zl / "libcxx/src" / s for s in _LIBCXX_SOURCES]
    srcs += [zl / "libcxxabi/src" / s for s in _LIBCXXABI_SOURCES]
    with tempfile.TemporaryDirectory(dir=sysroot.root, prefix=".cxx-") as tmp:
        includes = [
            *("-I", str(zl / "libcxxabi/include")),
            *("-I", str(zl / "libcxx/src")),
            *("-I", str(zl / "libcxx/libc")),
            *("-I", str(zl / "libunwind/include")),
        ]
        base = [*wasmcc.PIC_CFLAGS, "-g0", *CXX_EH_FLAGS, *_LIBCXX_FLAGS, *includes]

        def compile_one(i_src: tuple[int, Path]) -> str:
            i, src = i_src
            o = Path(tmp, f"{i:03d}-{src.stem}.o")
            _cc([*base, "-c", str(src), "-o", str(o)], f"compiling {src.name}", cxx=True)
            return str(o)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            objects = list(pool.map(compile_one, enumerate(srcs)))
        unwind = Path(tmp, "unwind-wasm.o")
        _cc(
            [
                *wasmcc.PIC_CFLAGS,
                "-g0",
                *C_EH_FLAGS,
                "-w",
                "-D_LIBUNWIND_HIDE_SYMBOLS",  # plain default visibility, not __declspec
                "-I",
                str(zl / "libunwind/include"),
                "-c",
                str(zl / "libunwind/src/Unwind-wasm.c"),
                "-o",
                str(unwind),
            ],
            "compiling Unwind-wasm.c",
        )
        out = Path(tmp, "libc++.so")
        wasmcc._run(
            wasmcc._zig(
                "wasm-ld",
                "-shared",
                "--experimental-pic",
                "--strip-debug",
                f"--allow-undefined-file={sysroot.runtime_provided}",
                *objects,
                str(unwind),
                str(sysroot.libc),
                "-o",
                str(out),
            ),
            "linking libc++.so",
        )
        os.replace(out, sysroot.libcxx)


def build_sysroot(root: Path, *, cxx: bool = False, force: bool = False, jobs: int = 2) -> Sysroot:
    """Make ``root`` a fresh sysroot (with libc++.so if ``cxx``); return it.

    Rebuilds only what is missing or stale.  The C part is built in a
    temporary directory and swapped in, so a reader never sees half of it.
    """
    root = Path(root).absolute()
    with _locked(root):
        stamp = {} if force else _read_stamp(root)
        if force or stamp.get("c") != _key("c") or not (root / "lib/libc.so").is_file():
            root.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.new-"))
            tmp.chmod(0o755)  # mkdtemp makes it private; a sysroot is shared
            try:
                _build_c(tmp)
                stamp = {"c": _key("c")}
                _write_json(tmp / STAMP, stamp)
                if root.exists():
                    old = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.old-"))
                    os.replace(root, old / "x")
                    shutil.rmtree(old, ignore_errors=True)
                os.replace(tmp, root)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        sysroot = Sysroot(root)
        if cxx and (stamp.get("c++") != _key("c++") or not sysroot.libcxx.is_file()):
            _build_cxx(sysroot, jobs)
            stamp = {**stamp, "c++": _key("c++")}
            _write_json(root / STAMP, stamp)
    return sysroot


def find_sysroot(*, cxx: bool = False) -> Sysroot:
    """The sysroot a link uses, built or rebuilt if needed.

    ``$WASMRUN_SYSROOT`` if set; else the one shipped in the wheel when it
    is fresh (and has libc++ if needed); else the per-user cache.
    """
    env = os.environ.get("WASMRUN_SYSROOT")
    if env:
        return build_sysroot(Path(env), cxx=cxx)
    packaged = packaged_root()
    if _fresh(packaged, cxx):
        return Sysroot(packaged)
    return build_sysroot(cache_root(), cxx=cxx)


def stage_for_wheel(source: Sysroot | None = None, dest: Path | None = None) -> Path:
    """Copy the C part of a sysroot into ``toolchain/sysroot`` (package data).

    Run before building a wheel, so ``pip install wasmrun`` brings libc.so.
    libc++.so is left out (see docs/toolchain.md): it is 1.8 MB for the few
    programs in C++, and wasmrun-c++ builds it on first use.
    """
    src = source or build_sysroot(cache_root())
    dest = dest or packaged_root()
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "lib").mkdir(parents=True)
    for name in ("libc.so", "crt1.o"):
        shutil.copyfile(src.lib / name, dest / "lib" / name)
    shutil.copyfile(src.runtime_provided, dest / "runtime-provided.txt")
    _write_json(dest / STAMP, {"c": _read_stamp(src.root)["c"]})
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wasmrun.toolchain.sysroot build DIR [--c++] | stage``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m wasmrun.toolchain.sysroot")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or refresh) a sysroot in DIR")
    b.add_argument("dir", type=Path)
    b.add_argument("--c++", dest="cxx", action="store_true", help="also build libc++.so")
    b.add_argument("--force", action="store_true", help="rebuild even if fresh")
    sub.add_parser("stage", help="put the C sysroot into the package, for a wheel")
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build_sysroot(args.dir, cxx=args.cxx, force=args.force).root)
        else:
            print(stage_for_wheel())
    except wasmcc.ToolchainError as exc:
        print(f"sysroot: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
