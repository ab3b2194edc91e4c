"""The one place wasmrun uses wasmtime-py's internals.

wasmrun runs on wasmtime-py's public API except where that API is too slow
or lacks a feature. Those few uses of private modules (``wasmtime._ffi``,
``wasmtime._extern``, ``wasmtime._func``) and private methods all live in
this module, so an upgrade of wasmtime-py is checked and adapted here only.

Supported: wasmtime-py ``SUPPORTED_VERSIONS`` (the pin in pyproject.toml).
At import, :func:`load_internals` checks that everything listed below
exists and otherwise raises :class:`WasmtimeIncompatible`, one line naming
the missing internal and the supported versions, instead of an
``AttributeError`` deep inside a run.

The internals, why each is used, and the public fallback where one exists:

* ``wasmtime_instance_export_get`` through ``_ffi`` with ``Store._context()``
  and ``Instance._instance`` (:func:`get_export`, :func:`fill_exports`): one
  export by name. ``Instance.exports(store)`` builds a Python object for
  every export (~90 ms for libc.so's 1,700); ``fill_exports`` even writes the
  extern straight into the import array wasmtime reads, with no Python
  object per import. Public fallback: ``Instance.exports(store)[name]``
  (slow), or ``Linker.define_instance`` then ``Linker.get`` (~0.25 µs per
  export and run).
* ``wasmtime_instance_new`` with ``Module.ptr()``, ``enter_wasm``,
  ``WasmtimeError._from_ptr`` and ``Instance._from_raw``
  (:func:`new_instance`): instantiate from that filled array. Public
  fallback: ``wasmtime.Instance(store, module, [Python externs])``.
* ``Func._as_extern()`` (:func:`copy_func_extern`): a host function (WASI,
  dyld) into the same array. Fallback: as above.
* ``wasmtime_store_epoch_deadline_callback`` with ``Store.ptr()`` and
  ``wasmtime_error_new`` (:func:`install_deadline_callback`): decide at each
  epoch deadline whether a run goes on (extend the deadline) or traps
  (timeout, cancellation). wasmtime-py only offers
  ``Store.set_epoch_deadline``, which always traps: no public fallback.
* ``wasmtime_func_call`` with ``Func._func``, ``enter_wasm`` and
  ``WasmtimeError._from_ptr`` (:func:`call_void`): call a function that
  takes i32s and returns nothing (TLS set-up, data relocations,
  constructors, ``_start``). ``Func.__call__`` first asks wasmtime for the
  function's type and converts each value through Python objects: ~9 µs a
  call against ~1.5 µs, and a run makes five such calls or more. wasmtime
  checks the types itself and reports a mismatch as an error. Public
  fallback: ``func(store, *args)``.
* ``_ffi.filename`` (:func:`library_identity`): which wasmtime shared
  library is loaded, part of the disk cache's fingerprint. Public fallback
  (used when it is missing): the installed distribution's version and the
  package's directory.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import wasmtime

SUPPORTED_VERSIONS: Final = ">=50,<51"  # keep in step with pyproject.toml

# wasmtime_update_deadline_kind_t: go on running after the callback.
_UPDATE_DEADLINE_CONTINUE: Final = 0


class WasmtimeIncompatible(ImportError):
    """The installed wasmtime-py lacks an internal wasmrun relies on."""


def installed_version() -> str:
    """The installed wasmtime-py's version, or "unknown"."""
    import importlib.metadata  # ~20 ms to import: only when a message needs it

    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def incompatible(what: str) -> WasmtimeIncompatible:
    """The one-line error for a missing internal."""
    return WasmtimeIncompatible(
        f"wasmrun: wasmtime-py {installed_version()} lacks {what}, which wasmrun uses; "
        f"wasmrun supports wasmtime-py {SUPPORTED_VERSIONS} "
        f"(pip install 'wasmtime{SUPPORTED_VERSIONS}')"
    )


def _need(owner: Any, attr: str, where: str) -> Any:
    try:
        return getattr(owner, attr)
    except AttributeError:
        raise incompatible(f"{where}.{attr}") from None


def _need_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise incompatible(f"the module {name}") from None


class Internals(NamedTuple):
    """What the seam takes from wasmtime-py, resolved once at import."""

    ffi: Any  # the wasmtime._ffi module
    wrap_extern: Callable[[Any], Any]
    enter_wasm: Callable[[Any], Any]
    extern_t: Any  # ctypes structure wasmtime_extern_t
    context_t: Any
    instance_t: Any
    export_get: Any  # our own handle on wasmtime_instance_export_get, no argtypes
    instance_new: Any
    error_new: Any
    deadline_callback: Any
    deadline_kind_t: Any
    error_from_ptr: Callable[[Any], Any]
    instance_from_raw: Callable[[Any], Any]
    library_file: str | None
    func_call: Any  # wasmtime_func_call
    val_t: Any  # ctypes structure wasmtime_val_t
    i32_kind: int  # WASMTIME_I32


def load_internals() -> Internals:
    """Find every internal the seam uses; :class:`WasmtimeIncompatible`
    naming the first one missing."""
    ffi = _need_module("wasmtime._ffi")
    extern_mod = _need_module("wasmtime._extern")
    func_mod = _need_module("wasmtime._func")
    for cls, names in (
        (wasmtime.Store, ("_context", "ptr")),
        (wasmtime.Module, ("ptr",)),
        (wasmtime.Func, ("_as_extern",)),
    ):
        for attr in names:
            _need(cls, attr, f"wasmtime.{cls.__name__}")
    dll = _need(ffi, "dll", "wasmtime._ffi")
    context_t = _need(ffi, "wasmtime_context_t", "wasmtime._ffi")
    instance_t = _need(ffi, "wasmtime_instance_t", "wasmtime._ffi")
    _need(ffi, "wasmtime_instance_export_get", "wasmtime._ffi")
    # Our own handle on the C function (dll[...] returns a fresh function
    # object: wasmtime-py's own binding is left untouched), with no argtypes:
    # every argument is passed as a ctypes object or bytes that needs no
    # conversion (see fill_exports), which halves the cost of a call.
    try:
        export_get = dll["wasmtime_instance_export_get"]
    except (AttributeError, KeyError):
        raise incompatible("the C function wasmtime_instance_export_get") from None
    export_get.restype = ctypes.c_bool
    filename = getattr(ffi, "filename", None)
    i32_kind = _need(ffi, "WASMTIME_I32", "wasmtime._ffi")
    return Internals(
        ffi=ffi,
        wrap_extern=_need(extern_mod, "wrap_extern", "wasmtime._extern"),
        enter_wasm=_need(func_mod, "enter_wasm", "wasmtime._func"),
        extern_t=_need(ffi, "wasmtime_extern_t", "wasmtime._ffi"),
        context_t=context_t,
        instance_t=instance_t,
        export_get=export_get,
        instance_new=_need(ffi, "wasmtime_instance_new", "wasmtime._ffi"),
        error_new=_need(ffi, "wasmtime_error_new", "wasmtime._ffi"),
        deadline_callback=_need(ffi, "wasmtime_store_epoch_deadline_callback", "wasmtime._ffi"),
        deadline_kind_t=_need(ffi, "wasmtime_update_deadline_kind_t", "wasmtime._ffi"),
        error_from_ptr=_need(wasmtime.WasmtimeError, "_from_ptr", "wasmtime.WasmtimeError"),
        instance_from_raw=_need(wasmtime.Instance, "_from_raw", "wasmtime.Instance"),
        library_file=None if filename is None else str(filename),
        func_call=_need(ffi, "wasmtime_func_call", "wasmtime._ffi"),
        val_t=_need(ffi, "wasmtime_val_t", "wasmtime._ffi"),
        i32_kind=int(getattr(i32_kind, "value", i32_kind)),
    )


_I: Final = load_internals()
EXTERN_SIZE: Final = ctypes.sizeof(_I.extern_t)


def _instance_ref(instance: wasmtime.Instance) -> Any:
    try:
        raw = instance._instance
    except AttributeError:
        raise incompatible("wasmtime.Instance._instance") from None
    return ctypes.byref(raw)


# -- exports and instantiation ---------------------------------------------------


def get_export(store: wasmtime.Store, instance: wasmtime.Instance, name: str) -> Any:
    """One export by name (a Func, Global, Memory, Table or Tag), or None,
    without building all exports (libc has ~1,700: ``Instance.exports``
    would cost ~90 ms)."""
    item = _I.extern_t()
    raw = name.encode("utf-8")
    try:
        ref = ctypes.byref(instance._instance)
    except AttributeError:
        raise incompatible("wasmtime.Instance._instance") from None
    ok = _I.ffi.wasmtime_instance_export_get(
        store._context(),
        ref,
        ctypes.create_string_buffer(raw),
        len(raw),
        ctypes.byref(item),
    )
    return _I.wrap_extern(item) if ok else None


def new_extern_array(n: int) -> ctypes.Array:
    """An import array of ``n`` externs, for :func:`fill_exports`."""
    return (_I.extern_t * n)()


def instance_ref(instance: wasmtime.Instance) -> Any:
    """What :func:`fill_exports` takes for ``instance`` (compute once per
    instance, not per import)."""
    return _instance_ref(instance)


# size_t arguments, made once per length (a name's length).
_SIZES: dict[int, ctypes.c_size_t] = {}


def fill_exports(
    store: wasmtime.Store, externs: ctypes.Array, entries: Sequence[tuple[int, Any, bytes]]
) -> int:
    """For each ``(index, instance_ref, name)``, write export ``name`` of
    that instance of ``store`` into ``externs[index]``; returns the index of
    the first export that does not exist, or -1.

    One C call per import and nothing else: it is the per-import cost of a
    warm run (see recipe.py). The function has no argtypes, so each argument
    must already be what C receives: the context and instance pointers as
    ctypes objects, the name as bytes, its length as a ``c_size_t``, the
    destination as a ``byref`` into the array (~0.6 µs a call against ~1 µs
    with argtypes converting them)."""
    get = _I.export_get
    ctx = store._context()
    byref = ctypes.byref
    sizes = _SIZES
    for index, ref, name in entries:
        n = len(name)
        size = sizes.get(n)
        if size is None:
            size = sizes.setdefault(n, ctypes.c_size_t(n))
        if not get(ctx, ref, name, size, byref(externs, index * EXTERN_SIZE)):
            return index
    return -1


def copy_func_extern(func: wasmtime.Func, address: int) -> None:
    """Write a host function's extern at ``address`` of an import array."""
    ctypes.memmove(address, ctypes.byref(func._as_extern()), EXTERN_SIZE)


def new_instance(
    store: wasmtime.Store, module: wasmtime.Module, externs: ctypes.Array, n: int
) -> wasmtime.Instance:
    """``wasmtime_instance_new`` on an import array filled in place."""
    instance = _I.instance_t()
    with _I.enter_wasm(store) as trap:
        error = _I.instance_new(
            store._context(), module.ptr(), externs, n, ctypes.byref(instance), trap
        )
        if error:
            raise _I.error_from_ptr(error)
    return _I.instance_from_raw(instance)


# -- epoch deadlines -------------------------------------------------------------

# wasmtime_store_epoch_deadline_callback's C signature.
_CALLBACK: Final = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(_I.context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(_I.deadline_kind_t),
)
_NO_FINALIZER: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(0)


def _error_ptr(message: str) -> int:
    err = _I.error_new(ctypes.create_string_buffer(message.encode("utf-8")))
    return ctypes.cast(err, ctypes.c_void_p).value or 0


def call_void(store: wasmtime.Store, func: wasmtime.Func, *args: int) -> None:
    """``func(store, *args)`` for a function of type [i32, ...] -> [], without
    wasmtime-py's per-call type query and value conversion. Traps, exits and
    host-function exceptions surface exactly as from ``Func.__call__``."""
    raw = getattr(func, "_func", None)
    if raw is None:  # not a function wasmtime-py made: the public way
        func(store, *args)
        return
    n = len(args)
    params = (_I.val_t * n)()
    for i, value in enumerate(args):
        params[i].kind = _I.i32_kind
        params[i].of.i32 = value
    with _I.enter_wasm(store) as trap:
        error = _I.func_call(store._context(), ctypes.byref(raw), params, n, None, 0, trap)
        if error:
            raise _I.error_from_ptr(error)


def install_deadline_callback(store: wasmtime.Store, verdict: Callable[[], str | None]) -> object:
    """At each epoch deadline of ``store`` (one epoch ahead), ask
    ``verdict``: None lets guest code run one more epoch, a message traps it
    with that message. Returns the callback object, which the caller must
    keep alive as long as the store runs."""

    def on_deadline(_ctx: Any, _data: Any, delta: Any, kind: Any) -> int:
        message = verdict()
        if message is None:
            delta[0] = 1
            kind[0] = _UPDATE_DEADLINE_CONTINUE
            return 0
        return _error_ptr(message)

    callback = _CALLBACK(on_deadline)
    store.set_epoch_deadline(1)
    _I.deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)
    return callback


# -- identity ------------------------------------------------------------------------


def library_identity() -> str:
    """Which wasmtime build is loaded: its shared library's path, size and
    mtime (a reinstall or an upgrade changes it); without ``_ffi.filename``,
    the distribution's version and the package's directory."""
    lib = _I.library_file
    if lib is None:
        return f"wasmtime-py {installed_version()} at {os.path.dirname(wasmtime.__file__)}"
    try:
        st = os.stat(lib)
    except OSError:
        return lib
    return f"{lib}:{st.st_size}:{st.st_mtime_ns}"
