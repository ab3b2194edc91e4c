"""Decoded modules: bytes in, everything the linker needs out.

A :class:`ModuleImage` is immutable once built and holds no per-run state, so
one image serves any number of runs (and threads). Compilation is deferred
until a run needs it: ``wasmrun ldd`` only decodes.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Final, Literal

import attrs
import wasmtime

from .codegen import uleb
from .dylink import DylinkInfo, parse_dylink0, parse_legacy_dylink
from .errors import LimitError, LoadError, wasmtime_message
from .wasmbin import (
    KIND_FUNC,
    KIND_GLOBAL,
    KIND_MEMORY,
    KIND_NAMES,
    FuncType,
    GlobalType,
    Limits,
    ModuleInfo,
    parse_module,
    valtype_name,
)

# A module's bytes, or a function making them (a compiler calls it only if it
# must compile: a disk cache hit needs no bytes).
ModuleBytes = bytes | Callable[[], bytes]


def module_bytes(data: ModuleBytes) -> bytes:
    """The bytes of ``data`` (see :data:`ModuleBytes`)."""
    return data if isinstance(data, bytes) else data()


# How a module links: "pic" imports env.memory (a PIE main or a shared
# library); "nonpie" has dylink.0 but defines its own memory (a non-PIE
# main); "plain" has no dylink.0 (an ordinary WASI program, run as is).
ModuleKind = Literal["pic", "nonpie", "plain"]

# Exports that belong to a module's own start-up protocol and never enter the
# global symbol scope (every library has its own).
HOUSEKEEPING_EXPORTS: Final = frozenset(
    {
        "__wasm_call_ctors",
        "__wasm_apply_data_relocs",
        "__wasm_apply_global_relocs",
        "__wasm_init_tls",
        "__wasm_init_memory",
        "__tls_size",
        "__tls_align",
        "__tls_base",
        "__memory_base",
        "__table_base",
        "__stack_pointer",
        "__indirect_function_table",
        "memory",
        "_initialize",
    }
)


# Names the variant of a module without its active data (see
# ModuleImage.module_without_data) in caches keyed by digest.
_DATALESS: Final = "wasmrun: active data segments emptied, v1"


@attrs.frozen(eq=False)
class ModuleImage:
    """One decoded module file.

    ``kind`` is ``"pic"`` (imports ``env.memory``: a PIE main or a shared
    library), ``"nonpie"`` (a dylink main that defines and exports memory), or
    ``"plain"`` (no ``dylink.0``: an ordinary WASI program).
    """

    name: str  # as the user or a NEEDED entry named it
    path: str  # resolved path
    digest: str  # sha256 of the bytes
    size: int
    info: ModuleInfo
    dylink: DylinkInfo | None
    kind: ModuleKind
    _data: bytes = attrs.field(repr=False)
    _compiler: Callable[[str, ModuleBytes], wasmtime.Module] = attrs.field(repr=False)
    _compiled: list[wasmtime.Module] = attrs.field(factory=list, repr=False)
    _dataless: list[wasmtime.Module] = attrs.field(factory=list, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)
    file_identity: tuple[int, ...] | None = attrs.field(default=None, repr=False)
    """(dev, ino, size, mtime, ctime) of the file these bytes were read
    from, as fstat saw it on the open file: what a cached plan checks."""

    @property
    def display(self) -> str:
        return os.path.basename(self.path) or self.path

    @property
    def needed(self) -> tuple[str, ...]:
        return self.dylink.needed if self.dylink else ()

    @property
    def is_executable(self) -> bool:
        return "_start" in self.info.exports

    def with_location(
        self, name: str, path: str, file_identity: tuple[int, ...] | None = None
    ) -> ModuleImage:
        """The same bytes under another name: shares the compiled code."""
        return attrs.evolve(self, name=name, path=path, file_identity=file_identity)

    def module(self) -> wasmtime.Module:
        """The compiled module (compiled on first use, then kept)."""
        if not self._compiled:
            with self._lock:
                if not self._compiled:
                    self._compiled.append(self._compile(self.digest, self._data))
        return self._compiled[0]

    def relocatable_data(self) -> tuple[tuple[int, int, int], ...] | None:
        """The active data segments as (offset from ``__memory_base``, file
        offset of the bytes, size), when every one of them lands at
        ``__memory_base`` plus a constant in the memory and within the
        module's ``dylink.0`` memory size; None otherwise (or when there is
        none), and then the module initialises its data itself.

        What load-time linking moves into the memory image (see
        :meth:`module_without_data`): the address of each segment is known
        once the plan has placed the module.
        """
        if self.kind != "pic" or self.dylink is None or not self.info.data:
            return None
        globals_ = [imp for imp in self.info.imports if imp.kind == KIND_GLOBAL]
        base = next(
            (
                g
                for g, imp in enumerate(globals_)
                if (imp.module, imp.name) == ("env", "__memory_base")
            ),
            None,
        )
        if base is None:
            return None
        out = []
        for seg in self.info.data:
            if not seg.active:
                continue
            ops = seg.offset.ops if seg.offset is not None else ()
            if seg.memory != 0 or not ops or ops[0] != (0x23, base):
                return None
            if len(ops) == 1:
                offset = 0
            elif len(ops) == 3 and ops[1][0] == 0x41 and ops[2][0] == 0x6A:
                offset = ops[1][1] & 0xFFFFFFFF
            else:
                return None
            if offset + seg.size > self.dylink.mem_size:
                return None
            out.append((offset, seg.payload, seg.size))
        return tuple(out) or None

    def data_bytes(self, start: int, size: int) -> bytes:
        """``size`` bytes of the module file from ``start`` (a segment's)."""
        return self._data[start : start + size]

    def module_without_data(self) -> wasmtime.Module:
        """The module compiled with its active data segments emptied (their
        offsets kept, so indices and bounds checks are unchanged), for a run
        whose memory image already holds that data
        (:meth:`relocatable_data`). Compiled on first use, then kept."""
        if not self._dataless:
            with self._lock:
                if not self._dataless:
                    # Named after the module's own digest, so a disk cache hit
                    # neither builds the variant nor hashes it (a CLI run
                    # would pay ~2 ms for libc.so's 800 KB).
                    digest = hashlib.sha256(f"{_DATALESS} {self.digest}".encode()).hexdigest()
                    self._dataless.append(self._compile(digest, self._without_active_data))
        return self._dataless[0]

    def _compile(self, digest: str, data: ModuleBytes) -> wasmtime.Module:
        """Compiled code from the compiler this image was given; its
        failures named after this file. A LimitError comes from a compiler
        with bounds (wasmrund's): the module is not at fault, its cost is."""
        try:
            return self._compiler(digest, data)
        except wasmtime.WasmtimeError as e:
            raise LoadError(
                f"{self.path}: invalid WebAssembly module: {wasmtime_message(str(e))}"
            ) from None
        except LimitError as e:
            raise LimitError(f"{self.path}: {e}") from None

    def _without_active_data(self) -> bytes:
        """The variant's bytes. Changing what this makes needs a new
        ``_DATALESS`` (compiled variants are cached under it)."""
        info, data = self.info, self._data
        assert info.data_section is not None
        body = bytearray(uleb(len(info.data)))
        for seg in info.data:
            if seg.active:
                body += data[seg.entry : seg.header_end] + b"\x00"
            else:
                body += data[seg.entry : seg.payload + seg.size]
        start, end = info.data_section
        return data[:start] + b"\x0b" + uleb(len(body)) + bytes(body) + data[end:]

    def global_export_type(self, name: str) -> str | None:
        """The value type of an exported global (``"i32"`` for a data
        symbol), None if ``name`` is not an exported global."""
        exp = self.info.exports.get(name)
        if exp is None or exp.kind != KIND_GLOBAL:
            return None
        gt = self.info.global_type(exp.index)
        return valtype_name(gt.valtype) if gt is not None else None

    def export_value(self, name: str, memory_base: int, table_base: int) -> int | None:
        """The address an exported data symbol (an i32 global) stands for.

        Exports of a PIC module are relative to its ``__memory_base`` unless
        their initialiser already adds it (or the ABSOLUTE flag is set).
        """
        exp = self.info.exports.get(name)
        if exp is None or exp.kind != KIND_GLOBAL:
            return None
        init = self.info.global_init(exp.index)
        if init is None:
            return None
        refs = init.global_refs()
        if refs:
            names = self.info.imported_global_names()
            env = {}
            for idx in refs:
                mod_name = names.get(idx)
                if mod_name == ("env", "__memory_base"):
                    env[idx] = memory_base
                elif mod_name == ("env", "__table_base"):
                    env[idx] = table_base
            return init.eval_i32(env)
        value = init.eval_i32()
        if value is None:
            return None
        flags = self.dylink.export_flags.get(name, 0) if self.dylink else 0
        if flags & 0x200:  # SYMBOL_ABSOLUTE
            return value
        return (value + memory_base) & 0xFFFFFFFF


_VOID: Final = FuncType((), ())
# Functions the loader itself calls, and the signature it calls them with.
ENTRY_POINTS: Final = {
    "_start": _VOID,
    "_initialize": _VOID,
    "__wasm_call_ctors": _VOID,
    "__wasm_apply_data_relocs": _VOID,
    "__wasm_init_tls": FuncType((b"\x7f",), ()),
}
# Globals the loader provides, and the type it provides them with
# (None: either mutability is fine, the loader matches it).
_I32: Final = b"\x7f"
_PROVIDED_GLOBALS: Final = {
    "__stack_pointer": True,
    "__memory_base": None,
    "__table_base": None,
    "__tls_base": None,
}


def check_abi(info: ModuleInfo, dylink: DylinkInfo | None, path: str) -> None:
    """What the loader relies on beyond WebAssembly validity: the entry points
    it calls have the signatures it calls them with, and the globals it
    provides (GOT entries, bases, the stack pointer) are imported as i32.

    Without this a mutated ``_start`` would fail only when called, as a
    "too few parameters" error dressed up as a trap.
    """
    for name, expected in ENTRY_POINTS.items():
        exp = info.exports.get(name)
        if exp is None:
            continue
        if exp.kind != KIND_FUNC:
            raise LoadError(
                f"{path}: {name} is exported as a {KIND_NAMES[exp.kind]}, not a function"
            )
        actual = info.func_type(exp.index)
        if actual != expected:
            raise LoadError(f"{path}: {name} has type {actual}, expected {expected}")
    sp = info.exports.get("__stack_pointer")
    if sp is not None:  # a non-PIE main's, bound to every library's import
        gt = info.global_type(sp.index) if sp.kind == KIND_GLOBAL else None
        if gt is None or gt.valtype != _I32 or not gt.mutable:
            raise LoadError(f"{path}: exports __stack_pointer but not as a mut i32 global")
    if dylink is None:
        return
    for imp in info.imports:
        if imp.kind == KIND_MEMORY and imp.module == "env":
            lim = imp.desc
            if isinstance(lim, Limits) and (lim.is64 or lim.shared):
                what = "a 64-bit" if lim.is64 else "a shared"
                raise LoadError(
                    f"{path}: imports {what} memory (env.{imp.name}); only 32-bit unshared "
                    "memories can be linked"
                )
        if imp.kind != KIND_GLOBAL:
            continue
        desc = imp.desc
        if not isinstance(desc, GlobalType):  # the decoder makes one for every global
            continue
        gt = desc
        if imp.module in ("GOT.mem", "GOT.func"):
            mutable = None
        elif imp.module == "env" and imp.name in _PROVIDED_GLOBALS:
            mutable = _PROVIDED_GLOBALS[imp.name]
        else:
            continue
        if gt.valtype != _I32 or (mutable is not None and gt.mutable != mutable):
            want = "i32" if mutable is None else ("mut i32" if mutable else "i32")
            have = ("mut " if gt.mutable else "") + valtype_name(gt.valtype)
            raise LoadError(
                f"{path}: imports {imp.module}.{imp.name} as a {have} global, expected {want}"
            )


def classify(info: ModuleInfo, dylink: DylinkInfo | None) -> ModuleKind:
    """How a module links (see :data:`ModuleKind`)."""
    if dylink is None:
        return "plain"
    for imp in info.imports:
        if imp.kind == KIND_MEMORY:
            return "pic"
    return "nonpie" if info.memories else "pic"


def decode(
    data: bytes,
    name: str,
    path: str,
    engine: wasmtime.Engine | None = None,
    digest: str | None = None,
    compiler: Callable[[str, ModuleBytes], wasmtime.Module] | None = None,
) -> ModuleImage:
    """Decode bytes into an image (no compilation). ``compiler`` produces the
    compiled module on first use (the cache passes its disk-aware one);
    without it, ``engine`` compiles directly."""
    info = parse_module(data, path)
    dylink: DylinkInfo | None = None
    for c in info.customs:
        if c.name == "dylink.0":
            dylink = parse_dylink0(c, path)
            break
        if c.name == "dylink" and c.first:
            dylink = parse_legacy_dylink(c, path)
            break
    check_abi(info, dylink, path)
    if compiler is None:

        def compiler(_digest: str, raw: ModuleBytes) -> wasmtime.Module:
            if engine is None:  # decoded for inspection only (ldd, tests)
                raise LoadError(f"{path}: decoded without an engine, cannot be compiled")
            return wasmtime.Module(engine, module_bytes(raw))

    return ModuleImage(
        name=name,
        path=path,
        digest=digest or hashlib.sha256(data).hexdigest(),
        size=len(data),
        info=info,
        dylink=dylink,
        kind=classify(info, dylink),
        data=data,
        compiler=compiler,
    )


def function_exports(image: ModuleImage) -> list[str]:
    return [n for n, e in image.info.exports.items() if e.kind == KIND_FUNC]
