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
from typing import Final

import attrs
import wasmtime

from .dylink import DylinkInfo, parse_dylink0, parse_legacy_dylink
from .errors import LoadError
from .wasmbin import KIND_FUNC, KIND_GLOBAL, KIND_MEMORY, ModuleInfo, parse_module

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
    kind: str
    _data: bytes = attrs.field(repr=False)
    _compiler: Callable[[str, bytes], wasmtime.Module] = attrs.field(repr=False)
    _compiled: list[wasmtime.Module] = attrs.field(factory=list, repr=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, repr=False)

    @property
    def display(self) -> str:
        return os.path.basename(self.path) or self.path

    @property
    def needed(self) -> tuple[str, ...]:
        return self.dylink.needed if self.dylink else ()

    @property
    def is_executable(self) -> bool:
        return "_start" in self.info.exports

    def with_location(self, name: str, path: str) -> ModuleImage:
        """The same bytes under another name: shares the compiled code."""
        return attrs.evolve(self, name=name, path=path)

    def module(self) -> wasmtime.Module:
        """The compiled module (compiled on first use, then kept)."""
        if not self._compiled:
            with self._lock:
                if not self._compiled:
                    try:
                        self._compiled.append(self._compiler(self.digest, self._data))
                    except wasmtime.WasmtimeError as e:
                        first = str(e).strip().splitlines()[0] if str(e).strip() else "invalid"
                        raise LoadError(
                            f"{self.path}: invalid WebAssembly module: {first}"
                        ) from None
        return self._compiled[0]

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


def classify(info: ModuleInfo, dylink: DylinkInfo | None) -> str:
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
    compiler: Callable[[str, bytes], wasmtime.Module] | None = None,
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
    if compiler is None:

        def compiler(_digest: str, raw: bytes) -> wasmtime.Module:
            return wasmtime.Module(engine, raw)

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
