"""Compile C into the WebAssembly modules that wasmrun loads and links.

wasmrun links modules at run time the way ``ld.so`` does, so its tests need
real dynamic-linking binaries: a position-independent ``libc.so``, shared
libraries that record their NEEDED list in a ``dylink.0`` section, and main
programs (PIE or not) that import what those libraries export.  Nothing here
needs a system toolchain: the ``ziglang`` package from PyPI carries clang,
LLD's ``wasm-ld`` and the wasi-libc sources, and this module drives them.

Why this is more than ``zig cc -shared``: zig links its static libc into
every output, and it cannot produce a *shared* libc.  So sources are compiled
with ``zig cc -c`` and linked with ``wasm-ld`` by hand, against a ``libc.so``
that is itself linked from the PIC archives zig leaves in its global cache.

Usable as a module (``build_shared(...)`` etc.) and as a command line::

    python toolchain/wasmcc.py libc   -o libc.so
    python toolchain/wasmcc.py shared -o libfoo.so foo.c --lib libc.so
    python toolchain/wasmcc.py pie    -o main.wasm main.c --lib libfoo.so --lib libc.so
    python toolchain/wasmcc.py nopie  -o main.wasm main.c --lib libfoo.so --lib libc.so
    python toolchain/wasmcc.py static -o prog.wasm main.c foo.c

Every output is written to a private temporary directory next to it and then
moved into place with ``os.replace``, so readers never see a half-written
module and concurrent builds of the same file cannot corrupt each other.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KINDS",
    "RECIPE_VERSION",
    "BuildResult",
    "LibcArchives",
    "ToolchainError",
    "build",
    "build_libc",
    "build_nopie",
    "build_pie",
    "build_shared",
    "build_static",
    "find_libc_archives",
    "main",
    "sha256_file",
    "strip_debug_sections",
    "zig_version",
]

log = logging.getLogger("wasmcc")

# Bump when the compile or link recipe below changes in a way that changes
# outputs: corpus.py folds it into its stamps so stale binaries get rebuilt.
RECIPE_VERSION = "1"

KINDS = ("libc", "shared", "pie", "nopie", "static")

TARGET = ("-target", "wasm32-wasi")
# -O2 also keeps zig from turning on UBSan (its default in debug builds),
# which would leave imports of __ubsan_handle_* that nothing provides;
# -fno-sanitize=undefined makes that hold even if a caller adds -O0.
# -fvisibility=default because clang hides symbols on wasm by default, and a
# shared library whose symbols are hidden exports nothing.
PIC_CFLAGS = (*TARGET, "-O2", "-fno-sanitize=undefined", "-fPIC", "-fvisibility=default")
STATIC_CFLAGS = (*TARGET, "-O2", "-fno-sanitize=undefined")

# wasm-ld always says this for -shared/-pie; it is noise, not a problem.
HARMLESS_WARNINGS = ("creating shared libraries, with -shared, is not yet stable",)

# A non-PIE main owns memory, stack and table; the runtime needs them
# exported to place libraries after the main's data and to grow the table.
NOPIE_EXPORTS = (
    "--export-memory",
    "--export-table",
    "--growable-table",
    "--export=__stack_pointer",
    "--export=__heap_base",
    "--export=__heap_end",
    "--export=__stack_low",
    "--export=__stack_high",
)

_LIBC_ARCHIVE_NAMES = ("libc.a", "libzigc.a", "libcompiler_rt.a", "crt1-command.o")


class ToolchainError(Exception):
    """A build failure whose message can be shown to a user as it is.

    The command line prints it without a traceback: a compile error's useful
    content is the compiler's own stderr, which the message carries.
    """


@dataclass(frozen=True)
class LibcArchives:
    """Paths of the PIC wasi-libc pieces in zig's global cache.

    These are the *PIC* builds (zig keys its cache on -fPIC), which is what
    lets them be linked into a shared ``libc.so`` and a PIE ``crt1``.
    """

    libc: Path
    libzigc: Path
    compiler_rt: Path
    crt1: Path


@dataclass(frozen=True)
class BuildResult:
    """What one build produced and which user files it read.

    ``inputs`` lists the C sources and every header they included, outside
    zig's own headers (those are pinned by the zig version).  corpus.py
    hashes them so that editing a header triggers a rebuild.
    """

    output: Path
    inputs: tuple[Path, ...] = ()


def _zig(*args: str) -> list[str]:
    """Return an argv running zig through the ``ziglang`` package.

    Using ``sys.executable -m ziglang`` (not a ``zig`` on PATH) means the zig
    version is the one pinned in the project's environment.
    """
    return [sys.executable, "-m", "ziglang", *args]


def _check_zig_installed() -> None:
    """Fail with a readable message when the ziglang package is missing.

    Without this check the user gets Python's "No module named ziglang"
    from a child process, which does not say which interpreter lacks it.
    """
    if importlib.util.find_spec("ziglang") is None:
        raise ToolchainError(
            f"zig not found: the 'ziglang' package is not installed for {sys.executable}"
            " (pip install ziglang)"
        )


def _clean_stderr(text: str) -> str:
    """Drop known-harmless linker warnings so real messages stand out."""
    lines = [ln for ln in text.splitlines() if not any(w in ln for w in HARMLESS_WARNINGS)]
    return "\n".join(lines).strip()


def _run(
    argv: Sequence[str],
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    echo_stderr: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a toolchain command, turning failure into a ToolchainError.

    Warnings on success are passed on to our stderr (minus the harmless
    ones) because they often explain a later runtime failure; callers that
    parse stderr themselves turn that off with ``echo_stderr=False``.
    """
    _check_zig_installed()
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise ToolchainError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    err = _clean_stderr(proc.stderr)
    if proc.returncode != 0:
        detail = err or proc.stdout.strip() or "(no output)"
        raise ToolchainError(f"{what} failed (exit {proc.returncode}):\n{detail}")
    if err and echo_stderr:
        print(err, file=sys.stderr)
    return proc


@functools.cache
def zig_version() -> str:
    """Return zig's version string, e.g. ``0.17.1``.

    Cached per process; corpus.py puts it into stamps because a new zig
    means new clang, libc and linker, so every output may change.
    """
    return _run(_zig("version"), "zig version").stdout.strip()


@functools.cache
def _zig_lib_dir() -> Path | None:
    """Return zig's lib directory (its bundled headers), if it can be found.

    Headers below it are left out of BuildResult.inputs: they are pinned by
    the zig version, and listing them would put machine-specific absolute
    paths into stamps.
    """
    out = _run(_zig("env"), "zig env").stdout
    m = re.search(r'\.?"?lib_dir"?\s*[=:]\s*"([^"]+)"', out)
    return Path(m.group(1)).resolve() if m else None


@functools.cache
def find_libc_archives() -> LibcArchives:
    """Locate zig's PIC wasi-libc archives, building them if needed.

    zig only builds these lazily, into content-addressed cache folders whose
    names we cannot predict.  So link a trivial shared library with
    ``ZIG_VERBOSE_LINK=1`` and read the paths from the wasm-ld command line
    zig prints.  The first run on a machine builds libc (about 30 s); later
    runs hit zig's cache and take a fraction of a second.
    """
    with tempfile.TemporaryDirectory(prefix="wasmcc-probe-") as tmp:
        src = Path(tmp, "probe.c")
        src.write_text("int wasmcc_probe(void) { return 0; }\n")
        env = dict(os.environ, ZIG_VERBOSE_LINK="1")
        proc = _run(
            _zig("cc", *PIC_CFLAGS, "-shared", "-o", str(Path(tmp, "probe.so")), str(src)),
            "probing zig's wasi-libc",
            cwd=Path(tmp),
            env=env,
            echo_stderr=False,
        )
    # On a cold cache zig also prints "ar rcs .../libc.a ..." lines; only
    # the wasm-ld line names the finished archives together with crt1.
    found: dict[str, Path] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("wasm-ld "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:  # unbalanced quotes: not a command line
            continue
        for word in words:
            name = Path(word).name
            if name in _LIBC_ARCHIVE_NAMES:
                found[name] = Path(word)
    missing = [n for n in _LIBC_ARCHIVE_NAMES if n not in found or not found[n].is_file()]
    if missing:
        raise ToolchainError(
            "could not find zig's wasi-libc pieces "
            + ", ".join(missing)
            + " in its verbose link output:\n"
            + proc.stderr.strip()
        )
    return LibcArchives(
        libc=found["libc.a"],
        libzigc=found["libzigc.a"],
        compiler_rt=found["libcompiler_rt.a"],
        crt1=found["crt1-command.o"],
    )


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes (used for stamps)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _parse_depfile(text: str) -> list[str]:
    """Return the prerequisites listed in a make-style depfile from clang.

    Handles line continuations and backslash-escaped spaces, which is all
    clang emits; the first word (the target, ending in ':') is dropped.
    """
    text = text.replace("\\\r\n", " ").replace("\\\n", " ")
    words: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in " #\\":
            cur.append(text[i + 1])
            i += 2
            continue
        if c == "$" and text[i + 1 : i + 2] == "$":
            cur.append("$")
            i += 2
            continue
        if c.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        words.append("".join(cur))
    if words and words[0].endswith(":"):
        words = words[1:]
    elif len(words) > 1 and words[1] == ":":
        words = words[2:]
    return words


def _user_inputs(deps: Iterable[str], cwd: Path) -> list[Path]:
    """Resolve depfile entries and keep the ones that are not zig's headers."""
    lib_dir = _zig_lib_dir()
    kept: list[Path] = []
    for dep in deps:
        p = (cwd / dep).resolve()
        if lib_dir is not None and p.is_relative_to(lib_dir):
            continue
        kept.append(p)
    return kept


def _check_files(paths: Iterable[Path], what: str) -> None:
    """Fail early, with the path in the message, when an input is missing."""
    for p in paths:
        if not p.is_file():
            raise ToolchainError(f"{what} not found: {p}")


def _compile(
    sources: Sequence[Path],
    obj_dir: Path,
    base_flags: Sequence[str],
    *,
    cflags: Sequence[str],
    debug: bool,
    cwd: Path | None,
) -> tuple[list[Path], list[Path]]:
    """Compile each C source to an object; return objects and inputs read.

    One zig invocation per source, each writing a depfile, so that callers
    learn which headers were used.  Objects are numbered so two sources
    with the same file name in different folders cannot collide.
    """
    run_dir = cwd if cwd is not None else Path.cwd()
    sources = [run_dir / s for s in sources]
    _check_files(sources, "source")
    objects: list[Path] = []
    inputs: list[Path] = []
    for i, src in enumerate(sources):
        obj = obj_dir / f"{i}-{src.stem}.o"
        dep = obj.with_suffix(".d")
        argv = _zig(
            "cc",
            *base_flags,
            "-g" if debug else "-g0",
            *cflags,
            "-MD",
            "-MF",
            str(dep),
            "-c",
            str(src),
            "-o",
            str(obj),
        )
        _run(argv, f"compiling {src}", cwd=run_dir)
        objects.append(obj)
        if dep.is_file():
            inputs.extend(_user_inputs(_parse_depfile(dep.read_text()), run_dir))
        else:
            inputs.append((run_dir / src).resolve())
    return objects, list(dict.fromkeys(inputs))


class _Staging:
    """A private temp directory next to the output, for objects and the link.

    The output is linked under its final file name inside this directory
    (wasm-ld writes that name into the module's name section), then moved
    over the real path with os.replace, which is atomic on one filesystem.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tmp-")
        self.dir = Path(self._tmp.name).resolve()
        self.staged = self.dir / out.name

    def __enter__(self) -> _Staging:
        return self

    def publish(self) -> None:
        """Move the finished output into place."""
        os.replace(self.staged, self.out)

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


def _wasm_ld(args: Sequence[str], staging: _Staging) -> None:
    """Link with zig's wasm-ld into the staging file and publish it.

    zig's own LLD is required: its libc references ``__wasm_first_page_end``,
    which older system wasm-ld versions do not define.
    """
    _run(_zig("wasm-ld", *args, "-o", str(staging.staged)), f"linking {staging.out.name}")
    staging.publish()


def _lib_paths(libs: Sequence[Path | str]) -> list[Path]:
    """Check that each shared library exists; keep the given order (NEEDED order)."""
    paths = [Path(p) for p in libs]
    _check_files(paths, "library")
    return paths


def _rpath_args(rpaths: Sequence[str]) -> list[str]:
    """Return wasm-ld flags recording RUNTIME_PATH entries in dylink.0."""
    return [f"--rpath={r}" for r in rpaths]


def build_libc(out: Path | str, *, debug: bool = False, ldflags: Sequence[str] = ()) -> BuildResult:
    """Link zig's PIC wasi-libc archives into one shared ``libc.so``.

    ``--whole-archive`` so that every libc function is present (programs
    loaded later may need any of them), ``--export-all`` so that all of them
    are exported; compiler_rt is only pulled in as needed.  Debug info is
    stripped unless ``debug``: it triples the size (2.8 MB vs 0.8 MB).
    """
    out = Path(out)
    arch = find_libc_archives()
    with _Staging(out) as st:
        _wasm_ld(
            [
                "-shared",
                "--experimental-pic",
                "--export-all",
                *([] if debug else ["--strip-debug"]),
                *ldflags,
                "--whole-archive",
                str(arch.libc),
                str(arch.libzigc),
                "--no-whole-archive",
                str(arch.compiler_rt),
            ],
            st,
        )
    return BuildResult(out)


def _link_pic(
    out: Path | str,
    sources: Sequence[Path | str],
    mode: Sequence[str],
    *,
    crt1: bool,
    libs: Sequence[Path | str],
    rpaths: Sequence[str],
    cflags: Sequence[str],
    ldflags: Sequence[str],
    debug: bool,
    cwd: Path | None,
) -> BuildResult:
    """Compile ``sources`` as PIC and link them with wasm-ld in ``mode``
    (shared, PIE or non-PIE), the libraries listed last so that their order
    is the NEEDED order."""
    out, srcs, lib_paths = Path(out), [Path(s) for s in sources], _lib_paths(libs)
    start = [str(find_libc_archives().crt1)] if crt1 else []
    with _Staging(out) as st:
        objs, inputs = _compile(srcs, st.dir, PIC_CFLAGS, cflags=cflags, debug=debug, cwd=cwd)
        _wasm_ld(
            [
                *mode,
                *([] if debug else ["--strip-debug"]),
                *_rpath_args(rpaths),
                *ldflags,
                *start,
                *map(str, objs),
                *map(str, lib_paths),
            ],
            st,
        )
    return BuildResult(out, tuple(inputs))


def build_shared(
    out: Path | str,
    sources: Sequence[Path | str],
    *,
    libs: Sequence[Path | str] = (),
    rpaths: Sequence[str] = (),
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    debug: bool = False,
    cwd: Path | None = None,
) -> BuildResult:
    """Build a shared library (``dylink.0`` with NEEDED = ``libs`` in order).

    libc.so is not added implicitly: callers list it in ``libs`` so that
    tests control the NEEDED list exactly (a library may need no libc).
    Undefined symbols are errors unless ``ldflags`` has
    ``--unresolved-symbols=import-dynamic`` (then they become imports, as in ELF).
    """
    return _link_pic(
        out,
        sources,
        ["-shared", "--experimental-pic"],
        crt1=False,
        libs=libs,
        rpaths=rpaths,
        cflags=cflags,
        ldflags=ldflags,
        debug=debug,
        cwd=cwd,
    )


def build_pie(
    out: Path | str,
    sources: Sequence[Path | str],
    *,
    libs: Sequence[Path | str] = (),
    rpaths: Sequence[str] = (),
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    debug: bool = False,
    cwd: Path | None = None,
) -> BuildResult:
    """Build a position-independent main program.

    It imports memory, table, stack pointer and its memory/table bases, so
    the runtime decides where everything goes.  ``__main_argc_argv`` is
    exported when main takes arguments, because libc's ``__main_void``
    (in libc.so) calls it through an import.
    """
    mode = ["-pie", "--experimental-pic", "--import-memory", "--export-if-defined=__main_argc_argv"]
    return _link_pic(
        out,
        sources,
        mode,
        crt1=True,
        libs=libs,
        rpaths=rpaths,
        cflags=cflags,
        ldflags=ldflags,
        debug=debug,
        cwd=cwd,
    )


def build_nopie(
    out: Path | str,
    sources: Sequence[Path | str],
    *,
    libs: Sequence[Path | str] = (),
    rpaths: Sequence[str] = (),
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    debug: bool = False,
    cwd: Path | None = None,
) -> BuildResult:
    """Build a main program at fixed addresses that still uses shared libraries.

    It defines and exports its own memory, table and stack (see
    NOPIE_EXPORTS) and has a ``dylink.0`` section with NEEDED entries.  The
    objects are still compiled PIC (the PIC crt1 is used too), which is what
    makes symbols from shared libraries reachable through GOT imports.
    """
    mode = [
        "-Bdynamic",
        "--experimental-pic",
        *NOPIE_EXPORTS,
        "--export-if-defined=__main_argc_argv",
    ]
    return _link_pic(
        out,
        sources,
        mode,
        crt1=True,
        libs=libs,
        rpaths=rpaths,
        cflags=cflags,
        ldflags=ldflags,
        debug=debug,
        cwd=cwd,
    )


def _read_leb_u32(data: bytes, pos: int) -> tuple[int, int]:
    """Decode an unsigned LEB128 at ``pos``; return (value, next position)."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated LEB128")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def strip_debug_sections(path: Path) -> None:
    """Remove DWARF custom sections (``.debug_*``) from a wasm file in place.

    zig cc has no way to drop only debug info when it links: ``-g0`` leaves
    the DWARF of its static libc in the output (~0.9 MB for hello world),
    and ``-Wl,--strip-debug`` becomes ``-s``, which also drops the name
    section (function names in backtraces) and makes zig build a second
    libc variant.  Dropping the sections afterwards keeps the names.
    """
    data = path.read_bytes()
    if data[:4] != b"\0asm":
        raise ToolchainError(f"{path} is not a WebAssembly module")
    kept = [data[:8]]
    pos = 8
    while pos < len(data):
        start = pos
        section_id = data[pos]
        size, body = _read_leb_u32(data, pos + 1)
        end = body + size
        if section_id == 0:
            name_len, name_pos = _read_leb_u32(data, body)
            name = data[name_pos : name_pos + name_len]
            if name.startswith(b".debug_"):
                pos = end
                continue
        kept.append(data[start:end])
        pos = end
    path.write_bytes(b"".join(kept))


def build_static(
    out: Path | str,
    sources: Sequence[Path | str],
    *,
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    debug: bool = False,
    cwd: Path | None = None,
) -> BuildResult:
    """Build an ordinary, statically linked WASI program.

    This is the reference the dynamically linked builds are compared with,
    and also what a plain non-dylink WASI program looks like.  zig cc does
    the link (its static libc, its default 16 MiB stack); ``ldflags`` are
    handed to the linker through ``-Wl,``.  Debug info is removed after the
    link unless ``debug`` (see strip_debug_sections).
    """
    out, srcs = Path(out), [Path(s) for s in sources]
    with _Staging(out) as st:
        objs, inputs = _compile(srcs, st.dir, STATIC_CFLAGS, cflags=cflags, debug=debug, cwd=cwd)
        _run(
            _zig(
                "cc",
                *STATIC_CFLAGS,
                "-g" if debug else "-g0",
                *(f"-Wl,{f}" for f in ldflags),
                "-o",
                str(st.staged),
                *map(str, objs),
            ),
            f"linking {out.name}",
            cwd=cwd,
        )
        if not debug:
            strip_debug_sections(st.staged)
        st.publish()
    return BuildResult(out, tuple(inputs))


def build(
    kind: str,
    out: Path | str,
    sources: Sequence[Path | str] = (),
    *,
    libs: Sequence[Path | str] = (),
    rpaths: Sequence[str] = (),
    cflags: Sequence[str] = (),
    ldflags: Sequence[str] = (),
    debug: bool = False,
    cwd: Path | None = None,
) -> BuildResult:
    """Build one output of the given kind; one entry point for corpus.py.

    Rejects options that make no sense for the kind (sources for libc,
    libraries for a static build) instead of silently ignoring them.
    """
    if kind not in KINDS:
        raise ToolchainError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    if kind == "libc":
        if sources or libs or rpaths or cflags:
            raise ToolchainError("kind 'libc' takes no sources, libs, rpath or cflags")
        return build_libc(out, debug=debug, ldflags=ldflags)
    if not sources:
        raise ToolchainError(f"kind {kind!r} needs at least one source file")
    if kind == "static":
        if libs or rpaths:
            raise ToolchainError("kind 'static' takes no libs or rpath")
        return build_static(out, sources, cflags=cflags, ldflags=ldflags, debug=debug, cwd=cwd)
    fn = {"shared": build_shared, "pie": build_pie, "nopie": build_nopie}[kind]
    return fn(
        out, sources, libs=libs, rpaths=rpaths, cflags=cflags, ldflags=ldflags, debug=debug, cwd=cwd
    )


def _parser() -> argparse.ArgumentParser:
    """Build the command-line parser (one subcommand per output kind)."""
    p = argparse.ArgumentParser(
        prog="wasmcc",
        description="Build wasm32-wasi modules for wasmrun's dynamic linker.",
        epilog="Repeat --cflag/--ldflag per flag: --cflag -DNAME=1 --ldflag --export=foo.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="print each command run")
    sub = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    helps = {
        "libc": "libc.so from zig's PIC wasi-libc",
        "shared": "a shared library (.so with dylink.0)",
        "pie": "a position-independent main program",
        "nopie": "a fixed-address main program linked against shared libraries",
        "static": "a plain statically linked WASI program",
    }
    for kind in KINDS:
        sp = sub.add_parser(kind, help=helps[kind])
        sp.add_argument("-o", "--output", required=True, type=Path, help="output file")
        if kind != "libc":
            sp.add_argument("sources", nargs="+", type=Path, metavar="SRC.c")
            sp.add_argument("--cflag", action="append", default=[], help="extra compiler flag")
        if kind not in ("libc", "static"):
            sp.add_argument(
                "--lib",
                action="append",
                default=[],
                type=Path,
                help="shared library to link (repeat; order = NEEDED order)",
            )
            sp.add_argument(
                "--rpath",
                action="append",
                default=[],
                help="RUNTIME_PATH entry for dylink.0 (repeat)",
            )
        sp.add_argument("--ldflag", action="append", default=[], help="extra linker flag")
        sp.add_argument(
            "-g", "--debug", action="store_true", help="keep debug info (default: stripped)"
        )
    return p


_VALUE_OPTIONS = ("--cflag", "--ldflag", "--rpath")


def _attach_flag_values(argv: Sequence[str]) -> list[str]:
    """Rewrite ``--cflag -DX`` as ``--cflag=-DX`` before argparse sees it.

    argparse refuses a separate value that starts with '-', and compiler
    flags always do; attaching them keeps the natural spelling working.
    """
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _VALUE_OPTIONS:
            value = next(it, None)
            out.append(arg if value is None else f"{arg}={value}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = _parser().parse_args(_attach_flag_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="wasmcc: %(message)s"
    )
    try:
        build(
            args.kind,
            args.output,
            getattr(args, "sources", ()),
            libs=getattr(args, "lib", ()),
            rpaths=getattr(args, "rpath", ()),
            cflags=getattr(args, "cflag", ()),
            ldflags=args.ldflag,
            debug=args.debug,
        )
    except ToolchainError as exc:
        print(f"wasmcc: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"wasmcc: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
