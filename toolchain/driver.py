"""``wasmrun-cc`` / ``wasmrun-c++``: a gcc-style compiler driver for wasmrun.

Build systems know how to call ``cc``: ``make CC=wasmrun-cc`` and
``./configure CC=wasmrun-cc --host=wasm32-wasi`` should just work.  So this
driver takes the options gcc and clang take for ELF and produces what
wasmrun loads: position-independent objects, shared libraries with a
``dylink.0`` section, and PIE programs (the default output, like a modern
gcc), linked against the sysroot's ``libc.so`` (see sysroot.py).

What it adds over calling ``zig cc`` and ``wasm-ld`` by hand:

* Wasm exception handling on by default, so setjmp/longjmp and C++
  exceptions work across libraries.
* ELF's export rule: a program exports the symbols that the shared
  libraries it links against import, so a library reading ``extern int
  app_version`` from its program, or a class's typeinfo, binds to the
  program's single copy.  ``-rdynamic`` (``-Wl,-E``) exports everything, for
  plugins that are only dlopen'ed.
* Shared libraries may leave symbols undefined (imported at load time), as
  with ``ld -shared``.
* One line naming an option it does not support, instead of a compiler
  error or a silently wrong build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from . import wasmcc

__all__ = ["ModuleSummary", "Options", "UsageError", "main_cc", "main_cxx", "parse_args"]

C_SUFFIXES = frozenset({".c", ".i"})
CXX_SUFFIXES = frozenset({".cc", ".cpp", ".cxx", ".c++", ".C", ".cp", ".CPP", ".ii"})
ASM_SUFFIXES = frozenset({".s", ".S"})
# Libraries that live inside libc.so (glibc 2.34 style): -lm, -ldl... add nothing.
IN_LIBC = frozenset(
    {
        *("c", "m", "dl", "pthread", "rt", "util", "xnet", "resolv", "crypt"),
        *("wasi-emulated-signal", "wasi-emulated-mman", "wasi-emulated-getpid"),
        "wasi-emulated-process-clocks",
    }
)
# Names for the C++ runtime, all provided by the sysroot's libc++.so.
IN_LIBCXX = frozenset({"c++", "stdc++", "c++abi", "supc++", "unwind", "gcc_s"})
# Linker-made or runtime-owned names never exported on behalf of libraries.
_NEVER_EXPORT = frozenset(
    {
        "memory",
        "__indirect_function_table",
        "__stack_pointer",
        "__memory_base",
        "__table_base",
        "__tls_base",
        "__tls_size",
        "__tls_align",
        "__heap_base",
        "__heap_end",
        "__data_end",
        "__stack_low",
        "__stack_high",
        "__dso_handle",
        "__c_longjmp",
        "__cpp_exception",
    }
)

# Options passed to clang as they are, with their value in the next word.
_CLANG_WITH_VALUE = frozenset(
    {"-include", "-imacros", "-isystem", "-iquote", "-idirafter", "-MF", "-MT", "-MQ", "-x"}
)
_CLANG_EXACT = frozenset(
    {
        "-M",
        "-MM",
        "-MD",
        "-MMD",
        "-MP",
        "-MG",
        "-P",
        "-C",
        "-dM",
        "-dD",
        "-w",
        "-pedantic",
        "-pedantic-errors",
        "-ansi",
        "-nostdinc",
        "-nostdinc++",
        "-trigraphs",
        "-undef",
        "-H",
        "-mexception-handling",
        "-mno-exception-handling",
        "-msimd128",
        "-mbulk-memory",
        "-mnontrapping-fptoint",
        "-msign-ext",
        "-mmultivalue",
        "-mtail-call",
    }
)
# -f options that would break the dynamic-linking ABI.
_REJECTED_F = ("-fno-pic", "-fno-PIC", "-fno-pie", "-fno-PIE", "-fsanitize")
# -Wl options from GNU ld that mean nothing for wasm (dropped quietly).
_LD_IGNORED = frozenset(
    {
        "--as-needed",
        "--no-as-needed",
        "-O1",
        "-O2",
        "--enable-new-dtags",
        "--disable-new-dtags",
        "--no-undefined",
        "--hash-style=gnu",
        "--hash-style=both",
        "--build-id",
        "--eh-frame-hdr",
        "-Bsymbolic-functions",
        "--sort-common",
        "--warn-common",
    }
)
_LD_IGNORED_WITH_VALUE = frozenset({"-soname", "-h", "-z", "--version-script"})


class UsageError(Exception):
    """An option or input the driver does not support: one line for the user."""


@attrs.define
class Input:
    """One positional input or ``-l``, in command-line order (link order)."""

    kind: str  # "c", "c++", "asm", "obj", "lib" (-l), "stdin"
    value: str


@attrs.define
class Options:
    """A parsed command line."""

    cxx: bool
    mode: str = "link"  # link | compile (-c) | assembly (-S) | preprocess (-E)
    output: str | None = None
    shared: bool = False
    pie: bool = True
    debug: bool = False
    export_dynamic: bool = False
    strip: bool = False
    start_files: bool = True
    default_libs: bool = True
    verbose: bool = False
    inputs: list[Input] = attrs.Factory(list)
    lib_dirs: list[str] = attrs.Factory(list)
    rpaths: list[str] = attrs.Factory(list)
    cflags: list[str] = attrs.Factory(list)
    ldflags: list[str] = attrs.Factory(list)
    info: str | None = None  # --version, -dumpmachine, -dumpversion


def _language(path: str, forced: str | None) -> str:
    if forced:
        return {"c": "c", "c++": "c++", "assembler": "asm", "assembler-with-cpp": "asm"}.get(
            forced, "c"
        )
    suffix = Path(path).suffix
    if suffix in C_SUFFIXES:
        return "c"
    if suffix in CXX_SUFFIXES:
        return "c++"
    if suffix in ASM_SUFFIXES:
        return "asm"
    return "obj"


def _linker_option(opts: Options, words: list[str]) -> None:
    """Translate the words of ``-Wl,...``/``-Xlinker`` for wasm-ld."""
    it = iter(words)
    for w in it:
        if w in ("-rpath", "-R", "--rpath"):
            value = next(it, None)
            if value is None:
                raise UsageError(f"missing argument to linker option '{w}'")
            opts.rpaths.append(value)
        elif w.startswith(("-rpath=", "--rpath=")):
            opts.rpaths.append(w.split("=", 1)[1])
        elif w in ("-E", "--export-dynamic", "-export-dynamic"):
            opts.export_dynamic = True
        elif w in _LD_IGNORED or w.startswith(("-soname=", "--soname=", "--version-script=")):
            continue
        elif w in _LD_IGNORED_WITH_VALUE:
            next(it, None)
        elif w in ("-s", "--strip-all"):
            opts.strip = True
        elif w:
            opts.ldflags.append(w)


def parse_args(argv: Sequence[str], *, cxx: bool) -> Options:
    """Parse gcc-style arguments; raise UsageError naming an unsupported option."""
    opts = Options(cxx=cxx)
    forced_lang: str | None = None
    args = list(argv)
    i = 0

    def value(opt: str) -> str:
        nonlocal i
        if i + 1 >= len(args):
            raise UsageError(f"missing argument to '{opt}'")
        i += 1
        return args[i]

    while i < len(args):
        a = args[i]
        if a == "-" or not a.startswith("-"):
            if a == "-":
                opts.inputs.append(Input("stdin", a))
            else:
                opts.inputs.append(Input(_language(a, forced_lang), a))
        elif a == "-c":
            opts.mode = "compile"
        elif a == "-S":
            opts.mode = "assembly"
        elif a == "-E":
            opts.mode = "preprocess"
        elif a == "-o":
            opts.output = value(a)
        elif a.startswith("-o"):
            opts.output = a[2:]
        elif a in ("-I", "-D", "-U"):
            opts.cflags += [a, value(a)]
        elif a.startswith(("-I", "-D", "-U")):
            opts.cflags.append(a)
        elif a == "-L":
            opts.lib_dirs.append(value(a))
        elif a.startswith("-L"):
            opts.lib_dirs.append(a[2:])
        elif a == "-l":
            opts.inputs.append(Input("lib", value(a)))
        elif a.startswith("-l"):
            opts.inputs.append(Input("lib", a[2:]))
        elif a == "-x":
            forced_lang = value(a)
            forced_lang = None if forced_lang == "none" else forced_lang
            opts.cflags += ["-x", args[i]] if forced_lang else []
        elif a in _CLANG_WITH_VALUE:
            opts.cflags += [a, value(a)]
        elif a in _CLANG_EXACT or a.startswith(("-std=", "-Wp,", "-Wa,")):
            opts.cflags.append(a)
            if a in ("-M", "-MM"):
                opts.mode = "preprocess"  # as with gcc, -M and -MM imply -E
        elif a.startswith("-O"):
            opts.cflags.append(a)
        elif a.startswith("-g"):
            opts.debug = a not in ("-g0", "-ggdb0")
            opts.cflags.append(a)
        elif a == "-shared":
            opts.shared = True
        elif a in ("-pie", "-fPIC", "-fpic", "-fPIE", "-fpie"):
            pass  # everything is position-independent already
        elif a == "-no-pie":
            opts.pie = False
        elif a in ("-rdynamic", "-export-dynamic"):
            opts.export_dynamic = True
        elif a == "-s":
            opts.strip = True
        elif a == "-nostartfiles":
            opts.start_files = False
        elif a in ("-nodefaultlibs", "-nolibc"):
            opts.default_libs = False
        elif a == "-nostdlib":
            opts.start_files = opts.default_libs = False
        elif a.startswith("-Wl,"):
            _linker_option(opts, a[4:].split(","))
        elif a == "-Xlinker":
            _linker_option(opts, [value(a)])
        elif a.startswith("-W") or (a.startswith("-f") and not a.startswith(_REJECTED_F)):
            opts.cflags.append(a)
        elif a == "-v":
            opts.verbose = True
        elif a in ("--version", "-dumpmachine", "-dumpversion"):
            opts.info = a
        elif a == "-pipe":
            pass
        else:
            raise UsageError(f"unsupported option '{a}'")
        i += 1
    if opts.info is None and not opts.inputs:
        raise UsageError("no input files")
    return opts


# --- reading just enough of a wasm module ------------------------------------


@attrs.frozen
class ModuleSummary:
    """Imports (module, name, kind), export names, NEEDED and RUNTIME_PATH."""

    imports: list[tuple[str, str, int]]
    exports: list[str]
    needed: list[str]
    runtime_path: list[str]


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _uleb(data, pos)
    return data[pos : pos + n].decode("utf-8", "replace"), pos + n


def _limits(data: bytes, pos: int) -> int:
    flags = data[pos]
    _, pos = _uleb(data, pos + 1)
    if flags & 1:
        _, pos = _uleb(data, pos)
    return pos


def read_module(data: bytes) -> ModuleSummary:
    """Decode the import and export sections and ``dylink.0`` of a module.

    The driver's own small reader: it needs names only, and a compiler
    driver should not import the runtime (and wasmtime) to get them.
    """
    if data[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module")
    imports: list[tuple[str, str, int]] = []
    exports: list[str] = []
    needed: list[str] = []
    rpath: list[str] = []
    pos = 8
    while pos < len(data):
        sid = data[pos]
        size, body = _uleb(data, pos + 1)
        end = body + size
        if sid == 0:
            cname, p = _name(data, body)
            if cname == "dylink.0":
                while p < end:
                    sub = data[p]
                    sub_size, sp = _uleb(data, p + 1)
                    if sub in (2, 5):  # NEEDED, RUNTIME_PATH
                        count, q = _uleb(data, sp)
                        for _ in range(count):
                            s, q = _name(data, q)
                            (needed if sub == 2 else rpath).append(s)
                    p = sp + sub_size
        elif sid == 2:
            count, p = _uleb(data, body)
            for _ in range(count):
                mod, p = _name(data, p)
                name, p = _name(data, p)
                kind = data[p]
                p += 1
                if kind == 0:
                    _, p = _uleb(data, p)
                elif kind == 1:
                    p = _limits(data, p + 1)
                elif kind == 2:
                    p = _limits(data, p)
                elif kind == 3:
                    p += 2
                elif kind == 4:
                    _, p = _uleb(data, p + 1)
                imports.append((mod, name, kind))
        elif sid == 7:
            count, p = _uleb(data, body)
            for _ in range(count):
                name, p = _name(data, p)
                _, p = _uleb(data, p + 1)
                exports.append(name)
        pos = end
    return ModuleSummary(imports, exports, needed, rpath)


# --- the driver ---------------------------------------------------------------


def _prog(cxx: bool) -> str:
    return "wasmrun-c++" if cxx else "wasmrun-cc"


def _base_cflags(opts: Options, lang: str) -> list[str]:
    """Target, PIC and exception flags, then the user's own flags."""
    from .sysroot import C_EH_FLAGS, CXX_EH_FLAGS, EMULATION_DEFINES

    eh = CXX_EH_FLAGS if lang == "c++" else C_EH_FLAGS
    debug = [] if any(f.startswith("-g") for f in opts.cflags) else ["-g0"]
    return [
        *wasmcc.TARGET,
        "-fPIC",
        "-fvisibility=default",
        "-fno-sanitize=undefined",
        *eh,
        *EMULATION_DEFINES,
        *debug,
        *opts.cflags,
    ]


def _clang(lang: str, args: Sequence[str], opts: Options) -> int:
    """Run zig's clang with our stderr passed through (diagnostics stay readable)."""
    argv = wasmcc._zig("c++" if lang == "c++" else "cc", *args)
    if opts.verbose:
        print(" ".join(argv), file=sys.stderr)
    wasmcc._check_zig_installed()
    return subprocess.run(argv, check=False).returncode


def _compile_one(opts: Options, inp: Input, out: str, flag: str) -> int:
    lang = inp.kind if inp.kind in ("c", "c++") else ("c++" if opts.cxx else "c")
    if inp.kind == "stdin" and not any(f == "-x" for f in opts.cflags):
        return _fail(opts, "-E or -x required when input is from standard input")
    return _clang(lang, [*_base_cflags(opts, lang), flag, inp.value, "-o", out], opts)


def _fail(opts: Options, message: str) -> int:
    print(f"{_prog(opts.cxx)}: error: {message}", file=sys.stderr)
    return 1


def _default_object(src: str, suffix: str) -> str:
    return Path(src).with_suffix(suffix).name


def _find_library(name: str, dirs: Iterable[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / f"lib{name}.so", d / f"lib{name}.a"):
            if candidate.is_file():
                return candidate
    return None


def _referenced_symbols(libs: Sequence[Path], dirs: Sequence[Path]) -> list[str]:
    """Names the given shared libraries (and what they need) import.

    A program exports these if it defines them, which is ELF's rule for
    executables linked against shared libraries.  NEEDED entries are found
    like the runtime finds them: the -L dirs, the library's own
    RUNTIME_PATH, then the sysroot.
    """
    seen: set[Path] = set()
    names: dict[str, None] = {}
    todo = list(libs)
    while todo:
        path = todo.pop()
        try:
            real = path.resolve()
            if real in seen or path.suffix == ".a":
                continue
            seen.add(real)
            summary = read_module(real.read_bytes())
        except (OSError, ValueError, IndexError):
            continue
        for mod, name, _kind in summary.imports:
            if mod in ("env", "GOT.mem", "GOT.func") and name not in _NEVER_EXPORT:
                names[name] = None
        origin = str(real.parent)
        extra = [
            Path(r.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
            for r in summary.runtime_path
        ]
        for need in summary.needed:
            if "/" in need:
                todo.append(Path(need))
                continue
            found = _find_library(need.removeprefix("lib").removesuffix(".so"), [*dirs, *extra])
            if found is None:
                for d in (*dirs, *extra):
                    if (d / need).is_file():
                        found = d / need
                        break
            if found is not None:
                todo.append(found)
    return sorted(names)


def _link(opts: Options, objects: list[tuple[str, str]], out: str, tmp: Path) -> int:
    """Link objects and libraries into a program or shared library."""
    from .sysroot import find_sysroot

    cxx = opts.cxx or any(kind == "c++" for kind, _ in objects)
    try:
        sysroot = find_sysroot(cxx=cxx and opts.default_libs)
    except wasmcc.ToolchainError as exc:
        return _fail(opts, f"building the sysroot: {exc}")
    dirs = [Path(d) for d in opts.lib_dirs] + [sysroot.lib]
    inputs: list[str] = []
    shared_libs: list[Path] = []
    for kind, value in objects:
        if kind != "lib":
            inputs.append(value)
            if value.endswith(".so"):
                shared_libs.append(Path(value))
            continue
        if value in IN_LIBC:
            continue
        if value in IN_LIBCXX:
            cxx = True
            continue
        found = _find_library(value, dirs)
        if found is None:
            return _fail(opts, f"cannot find -l{value}")
        inputs.append(str(found))
        if found.suffix == ".so":
            shared_libs.append(found)
    if opts.default_libs:
        if cxx:
            sysroot = find_sysroot(cxx=True)
            inputs.append(str(sysroot.libcxx))
            shared_libs.append(sysroot.libcxx)
        inputs.append(str(sysroot.libc))
        shared_libs.append(sysroot.libc)
    args = ["--experimental-pic", f"--allow-undefined-file={sysroot.runtime_provided}"]
    if opts.shared:
        args += ["-shared", "--unresolved-symbols=import-dynamic"]
    else:
        if opts.pie:
            args += ["-pie", "--import-memory"]
        else:
            args += ["-Bdynamic", *wasmcc.NOPIE_EXPORTS]
        args.append("--export-if-defined=__main_argc_argv")
        if opts.export_dynamic:
            args.append("--export-dynamic")
        wanted = _referenced_symbols(shared_libs, dirs)
        if wanted:
            rsp = tmp / "exports.rsp"
            rsp.write_text("".join(f"--export-if-defined={n}\n" for n in wanted))
            args.append(f"@{rsp}")
        if opts.start_files:
            inputs.insert(0, str(sysroot.crt1))
    if cxx and sysroot.root != _packaged_or_none():
        # libc++.so is built per user (not shipped): record where it is.
        opts.rpaths.append(str(sysroot.lib))
    args += [f"--rpath={r}" for r in dict.fromkeys(opts.rpaths)]
    if opts.strip:
        args.append("--strip-debug")
    argv = wasmcc._zig("wasm-ld", *args, *opts.ldflags, *inputs, "-o", out)
    if opts.verbose:
        print(" ".join(argv), file=sys.stderr)
    proc = subprocess.run(argv, check=False, capture_output=True, text=True)
    err = wasmcc._clean_stderr(proc.stderr)
    if err:
        print(err, file=sys.stderr)
    if proc.returncode == 0 and not opts.shared:
        os.chmod(out, 0o755)  # like cc: a program is marked executable
    return proc.returncode


def _packaged_or_none() -> Path | None:
    from .sysroot import packaged_root

    return packaged_root() if (packaged_root() / "lib" / "libc++.so").is_file() else None


def _info(opts: Options) -> int:
    if opts.info == "-dumpmachine":
        print("wasm32-unknown-wasi")
        return 0
    if opts.info == "-dumpversion":
        return _clang("c", ["-dumpversion"], opts)
    print(f"{_prog(opts.cxx)} (wasmrun toolchain, dynamically linked wasm32-wasi)")
    return _clang("c++" if opts.cxx else "c", ["--version"], opts)


def run(argv: Sequence[str], *, cxx: bool) -> int:
    """The driver: parse, then preprocess, compile or compile-and-link."""
    try:
        opts = parse_args(argv, cxx=cxx)
    except UsageError as exc:
        print(f"{_prog(cxx)}: error: {exc}", file=sys.stderr)
        return 1
    if opts.info:
        return _info(opts)
    sources = [i for i in opts.inputs if i.kind in ("c", "c++", "asm", "stdin")]
    if opts.mode == "preprocess":
        status = 0
        for inp in sources:
            lang = inp.kind if inp.kind in ("c", "c++") else ("c++" if cxx else "c")
            dest = ["-o", opts.output] if opts.output else []
            status |= _clang(lang, [*_base_cflags(opts, lang), "-E", inp.value, *dest], opts)
        return status
    if opts.mode in ("compile", "assembly"):
        flag, suffix = ("-c", ".o") if opts.mode == "compile" else ("-S", ".s")
        if opts.output and len(sources) > 1:
            return _fail(opts, "cannot specify -o with -c or -S with multiple files")
        for inp in sources:
            out = opts.output or _default_object(inp.value, suffix)
            status = _compile_one(opts, inp, out, flag)
            if status:
                return status
        return 0
    out = opts.output or "a.out"
    with tempfile.TemporaryDirectory(prefix="wasmrun-cc-") as tmpdir:
        tmp = Path(tmpdir)
        objects: list[tuple[str, str]] = []
        for n, inp in enumerate(opts.inputs):
            if inp.kind in ("c", "c++", "asm", "stdin"):
                obj = str(tmp / f"{n}-{Path(inp.value).stem}.o")
                status = _compile_one(opts, inp, obj, "-c")
                if status:
                    return status
                objects.append((inp.kind, obj))
            else:
                objects.append((inp.kind, inp.value))
        return _link(opts, objects, out, tmp)


def main_cc(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wasmrun-cc``."""
    return run(sys.argv[1:] if argv is None else argv, cxx=False)


def main_cxx(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``wasmrun-c++``."""
    return run(sys.argv[1:] if argv is None else argv, cxx=True)


def main_ar(argv: Sequence[str] | None = None) -> int:
    """``wasmrun-ar``: zig's ar, which indexes wasm objects (GNU ar does not)."""
    args = sys.argv[1:] if argv is None else argv
    return subprocess.run(wasmcc._zig("ar", *args), check=False).returncode


def main_ranlib(argv: Sequence[str] | None = None) -> int:
    """``wasmrun-ranlib``: zig's ranlib, for Makefiles that run RANLIB."""
    args = sys.argv[1:] if argv is None else argv
    return subprocess.run(wasmcc._zig("ranlib", *args), check=False).returncode


if __name__ == "__main__":
    sys.exit(main_cxx() if Path(sys.argv[0]).name.endswith("++") else main_cc())
