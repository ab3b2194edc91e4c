"""The protocol's messages: frozen attrs classes that validate themselves.

Validation lives in the classes, not in the decoder, so a message is valid
however it was made: a daemon handler can trust any ``Run`` it holds, and a
client cannot even build a request the daemon would reject for its shape.
Checks are exact (``True`` is not an int, ``b"x"`` is not a string) and every
size is bounded, because these values come from an untrusted socket and end
up as guest argv, WASI environment and file paths. Every failure is an
:class:`~wasmrun.protocol.errors.InvalidField` naming the field.

Sequence fields accept lists and store tuples, so messages stay immutable
and hashable (dict fields are left out of the hash).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

import attrs

from .errors import InvalidField, quote

__all__ = [
    "DIR_ROLE_PREFIX",
    "ERROR_KINDS",
    "EXIT_CODES",
    "I64_MAX",
    "I64_MIN",
    "MAX_FDS",
    "MAX_ITEMS",
    "MAX_PATH_BYTES",
    "MAX_STRING_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "STD_ROLES",
    "U32_MAX",
    "CallResult",
    "Cancel",
    "Dlopen",
    "Error",
    "Limits",
    "Message",
    "Ping",
    "Pong",
    "Preload",
    "PreloadResult",
    "Request",
    "Response",
    "Run",
    "RunResult",
    "Stats",
    "StatsResult",
    "type_name",
]

PROTOCOL_VERSION = 1
"""The ``v`` every message carries; bumped on any incompatible change."""

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1

MAX_STRING_BYTES = 64 * 1024
"""Longest string (UTF-8 bytes) in any field: an argument, a variable, a message."""

MAX_PATH_BYTES = 4096
"""Longest path (UTF-8 bytes): Linux's PATH_MAX."""

MAX_ITEMS = 4096
"""Most items in any list or map field (argv, environment, search path...)."""

MAX_FDS = 253
MAX_DEBUG_BYTES = 256  # a WASMRUN_DEBUG value
"""Most file descriptors one request may carry: Linux's SCM_MAX_FD, the most
one ``sendmsg`` can pass with SCM_RIGHTS."""

STD_ROLES = ("stdin", "stdout", "stderr", "program")
"""fd roles that name a single descriptor (each may appear once)."""

DIR_ROLE_PREFIX = "dir:"
"""fd role prefix of a preopened directory: ``"dir:" + guest path``."""

ERROR_KINDS = (
    "protocol",
    "load",
    "trap",
    "limit",
    "timeout",
    "cancelled",
    "internal",
    "refused",
    "busy",
    "shutdown",
    "exit",
    "signal",
)
"""What failed, for ``Error.kind``."""

EXIT_CODES: Mapping[str, int] = MappingProxyType(
    {
        "protocol": 76,  # EX_PROTOCOL (sysexits.h)
        "load": 127,  # what ld.so and shells use for "cannot load"
        "trap": 134,  # 128 + SIGABRT: a trap is the guest aborting
        "limit": 137,  # 128 + SIGKILL: what an OOM kill looks like
        "timeout": 124,  # what coreutils timeout(1) exits with
        "cancelled": 130,  # 128 + SIGINT: cancellation usually means ^C
        "internal": 70,  # EX_SOFTWARE (sysexits.h)
        "refused": 76,  # this daemon does not serve the client's uid
        "busy": 75,  # EX_TEMPFAIL: too many connections or queued requests; retry
        "shutdown": 69,  # EX_UNAVAILABLE: the daemon is stopping; retry later
        "exit": 1,  # the guest called exit(N) where no status was expected: N
        "signal": 141,  # 128 + SIGPIPE: a native program would have died of it
    }
)
"""The exit status ``Error.exit_code`` defaults to for each kind, chosen to
match what a shell user would see had the program run natively."""

Check: TypeAlias = Callable[[Any, str], None]
"""A validator: ``check(value, field_path)`` raises InvalidField or returns."""


# --------------------------------------------------------------------------
# Checks. Each builder returns a Check; messages compose them per field.


_TYPE_NAMES: Mapping[type, str] = MappingProxyType(
    {
        type(None): "nil",
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        bytes: "bin (bytes)",
        list: "array",
        tuple: "array (tuple)",
        dict: "map",
    }
)


def type_name(value: object) -> str:
    """The msgpack-flavoured name of a value's type, for error messages the
    sender can relate to what it put on the wire."""
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _int_text(value: int) -> str:
    """An int for an error message; huge ints are described, not printed
    (printing one can be slow or refused by ``sys.set_int_max_str_digits``)."""
    if value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return str(value)


def _int(lo: int, hi: int, expected: str) -> Check:
    """An int (exactly: not a bool) within ``lo..hi``."""

    def check(value: Any, field: str) -> None:
        if type(value) is not int:
            raise InvalidField(field, expected, type_name(value))
        if not lo <= value <= hi:
            raise InvalidField(field, expected, _int_text(value))

    return check


def _str(max_bytes: int, *, nonempty: bool = False, c_string: bool = True) -> Check:
    """A str of at most ``max_bytes`` UTF-8 bytes; ``c_string`` forbids NUL
    because the value becomes a C string (argv, environ, a path) where a NUL
    would silently truncate it."""
    what = "path" if max_bytes == MAX_PATH_BYTES else "str"

    def check(value: Any, field: str) -> None:
        if type(value) is not str:
            raise InvalidField(field, what, type_name(value))
        if nonempty and not value:
            raise InvalidField(field, f"non-empty {what}", "an empty string")
        if c_string and "\0" in value:
            raise InvalidField(field, f"{what} without NUL characters", "a NUL character")
        if value.isascii():
            size = len(value)
        else:
            try:
                size = len(value.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidField(field, "valid Unicode text", "a lone surrogate") from None
        if size > max_bytes:
            raise InvalidField(field, f"{what} of at most {max_bytes} bytes", f"{size} bytes")

    return check


def _bool(value: Any, field: str) -> None:
    """Exactly True or False (not 0/1, not nil)."""
    if type(value) is not bool:
        raise InvalidField(field, "bool", type_name(value))


_i64 = _int(I64_MIN, I64_MAX, "int (64-bit signed)")
_request_id = _int(0, I64_MAX, f"int in 0..{I64_MAX}")
_positive = _int(1, I64_MAX, f"int in 1..{I64_MAX}")
_text = _str(MAX_STRING_BYTES, c_string=False)
_c_text = _str(MAX_STRING_BYTES)
_name = _str(MAX_STRING_BYTES, nonempty=True)
_path = _str(MAX_PATH_BYTES, nonempty=True)


def _number(value: Any, field: str) -> None:
    """A wasm value: an int that fits i64 or any float (NaN and infinities are
    legitimate wasm f32/f64 values)."""
    if type(value) is float:
        return
    if type(value) is not int:
        raise InvalidField(field, "int or float", type_name(value))
    _i64(value, field)


def _duration(value: Any, field: str) -> None:
    """A duration in seconds: a finite, non-negative float."""
    if type(value) is not float:
        raise InvalidField(field, "float (seconds)", type_name(value))
    if not (math.isfinite(value) and value >= 0.0):
        raise InvalidField(field, "finite non-negative float", repr(value))


def _stat_value(value: Any, field: str) -> None:
    """A flat statistic: a 64-bit int, a float or a short string."""
    if type(value) is float:
        return
    if type(value) is int:
        _i64(value, field)
    elif type(value) is str:
        _text(value, field)
    else:
        raise InvalidField(field, "int, float or str", type_name(value))


def _optional(inner: Check) -> Check:
    """``inner`` or nil."""

    def check(value: Any, field: str) -> None:
        if value is not None:
            inner(value, field)

    return check


def _one_of(choices: tuple[str, ...]) -> Check:
    """A str from a fixed vocabulary."""
    expected = "one of " + ", ".join(choices)

    def check(value: Any, field: str) -> None:
        if type(value) is not str:
            raise InvalidField(field, expected, type_name(value))
        if value not in choices:
            raise InvalidField(field, expected, quote(value))

    return check


def _array(item: Check, max_items: int = MAX_ITEMS) -> Check:
    """A tuple (an array on the wire) of at most ``max_items`` valid items."""

    def check(value: Any, field: str) -> None:
        if type(value) is not tuple:
            raise InvalidField(field, "array", type_name(value))
        if len(value) > max_items:
            raise InvalidField(field, f"at most {max_items} items", f"{len(value)} items")
        for index, element in enumerate(value):
            item(element, f"{field}[{index}]")

    return check


def _map(value_check: Check, max_items: int = MAX_ITEMS) -> Check:
    """A flat dict with str keys and valid values."""

    def check(value: Any, field: str) -> None:
        if type(value) is not dict:
            raise InvalidField(field, "map", type_name(value))
        if len(value) > max_items:
            raise InvalidField(field, f"at most {max_items} entries", f"{len(value)} entries")
        for key, element in value.items():
            _text(key, f"{field} key")
            value_check(element, f"{field}[{quote(key)}]")

    return check


def _env_var(value: Any, field: str) -> None:
    """A ``(name, value)`` pair destined for WASI's ``NAME=VALUE`` environ: the
    name cannot contain ``=`` or the guest would split it differently."""
    if type(value) is not tuple or len(value) != 2:
        got = f"{len(value)} items" if type(value) is tuple else type_name(value)
        raise InvalidField(field, "[name, value] pair", got)
    name, text = value
    _name(name, f"{field}.name")
    if "=" in name:
        raise InvalidField(f"{field}.name", "variable name without '='", quote(name))
    _c_text(text, f"{field}.value")


_dir_path = _str(MAX_PATH_BYTES, nonempty=True)


def _fd_roles(value: Any, field: str) -> None:
    """What each passed descriptor is, in SCM_RIGHTS order. A role appears at
    most once: two stdins (or two preopens at one guest path) would leave the
    daemon guessing which to use."""
    _array(_c_text, MAX_FDS)(value, field)
    seen: set[str] = set()
    for index, role in enumerate(value):
        where = f"{field}[{index}]"
        if role.startswith(DIR_ROLE_PREFIX):
            _dir_path(role[len(DIR_ROLE_PREFIX) :], f"{where} (guest path)")
        elif role not in STD_ROLES:
            expected = " or ".join(STD_ROLES) + f" or {DIR_ROLE_PREFIX}<guest path>"
            raise InvalidField(where, expected, quote(role))
        if role in seen:
            raise InvalidField(where, "each role at most once", f"{quote(role)} again")
        seen.add(role)


def _instance_of(cls: type) -> Check:
    """An instance of a nested attrs class (Limits); the decoder builds it
    from the wire map before this runs."""

    def check(value: Any, field: str) -> None:
        if type(value) is not cls:
            raise InvalidField(field, cls.__name__, type_name(value))

    return check


# --------------------------------------------------------------------------
# Field helpers: attrs fields wired to a Check, with list-to-tuple conversion.


def _tuple_converter(value: Any) -> Any:
    """Lists become tuples (msgpack arrays decode as lists; callers often hold
    lists); anything else passes through for the validator to reject."""
    return tuple(value) if type(value) is list else value


def _pairs_converter(value: Any) -> Any:
    """Like _tuple_converter, one level deeper, for ``[[name, value], ...]``."""
    value = _tuple_converter(value)
    if type(value) is tuple:
        value = tuple(_tuple_converter(pair) for pair in value)
    return value


def _validator(check: Check) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """Adapt a Check to attrs' validator signature."""

    def validate(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(value, attribute.name)

    return validate


_REQUIRED: Any = attrs.NOTHING


def _field(check: Check, default: Any = _REQUIRED, **kwargs: Any) -> Any:
    """A validated field; no default means the field is required on the wire."""
    return attrs.field(default=default, validator=_validator(check), **kwargs)


def _seq(check: Check, *, required: bool = False) -> Any:
    """A tuple field that also accepts a list; defaults to empty."""
    return attrs.field(
        default=_REQUIRED if required else (),
        converter=_tuple_converter,
        validator=_validator(check),
    )


def _dict_field(check: Check, *, required: bool = False) -> Any:
    """A dict field; copied on construction so later changes to the caller's
    dict do not alter the message, and excluded from the hash (dicts have none)."""
    return attrs.field(
        default=_REQUIRED if required else attrs.Factory(dict),
        converter=lambda value: dict(value) if type(value) is dict else value,
        validator=_validator(check),
        hash=False,
    )


# --------------------------------------------------------------------------
# Messages.


@attrs.frozen(kw_only=True)
class Limits:
    """Resource limits for one request; None means the daemon's default.

    Always positive when set: a zero limit would make the request fail before
    it starts, which is never what the sender meant.
    """

    memory_bytes: int | None = _field(_optional(_positive), None)
    """Most bytes of linear memory the instance set may use."""
    timeout_ms: int | None = _field(_optional(_positive), None)
    """Wall-clock time limit for the whole request, in milliseconds."""
    fuel: int | None = _field(_optional(_positive), None)
    """wasmtime fuel: a deterministic instruction budget."""


_limits = _instance_of(Limits)


@attrs.frozen(kw_only=True)
class Run:
    """Request: load, link and run a program to completion (``wasmrun run``).

    The daemon runs it with the client's stdio and preopened directories,
    passed as file descriptors alongside this frame (see ``fd_roles``), so the
    guest sees the client's terminal and files, not the daemon's.
    """

    TYPE: ClassVar[str] = "run"

    program: str = _field(_path)
    """Path of the program (resolved against ``cwd`` if relative); with a
    ``"program"`` fd it is only the name used in messages."""
    args: tuple[str, ...] = _seq(_array(_c_text))
    """The guest's argv *including* argv[0]; empty means ``[program]``."""
    env: tuple[tuple[str, str], ...] = attrs.field(
        default=(), converter=_pairs_converter, validator=_validator(_array(_env_var))
    )
    """The guest's whole environment, in order (nothing is inherited from the
    daemon); ``[[name, value], ...]`` on the wire."""
    cwd: str = _field(_str(MAX_PATH_BYTES), "")
    """The client's working directory, absolute, for resolving relative
    paths; empty means "none given"."""
    library_path: tuple[str, ...] = _seq(_array(_path))
    """Extra library search directories, searched first (``-L``)."""
    preload: tuple[str, ...] = _seq(_array(_path))
    """Libraries loaded right after the program (``--preload``)."""
    bind_now: bool = _field(_bool, False)
    """Resolve every function at load time (``--bind-now``)."""
    limits: Limits = _field(_limits, attrs.Factory(Limits), metadata={"nested": Limits})
    fd_roles: tuple[str, ...] = _seq(_fd_roles)
    """What each SCM_RIGHTS descriptor sent with this frame is, in order:
    ``"stdin"``, ``"stdout"``, ``"stderr"``, ``"program"`` (the program file,
    opened by the client) or ``"dir:<guest path>"`` (a preopened directory)."""
    request_id: int = _field(_request_id, 0)
    """Chosen by the client; echoed in the response and used by Cancel."""
    debug: str = _field(_str(MAX_DEBUG_BYTES), "")
    """The client's ``WASMRUN_DEBUG``: the linker's trace goes to the
    client's stderr, as in process."""

    def __attrs_post_init__(self) -> None:
        """cwd is checked here because its rule (absolute unless empty) is
        specific to it."""
        if self.cwd and not self.cwd.startswith("/"):
            raise InvalidField("cwd", "absolute path or empty", quote(self.cwd))


@attrs.frozen(kw_only=True)
class Dlopen:
    """Request: open a library with its dependencies in a fresh instance set,
    run its constructors, then call ``symbol`` with numeric ``args``.

    ``fd_roles`` works as in Run; there ``"program"`` is the library file.
    """

    TYPE: ClassVar[str] = "dlopen"

    library: str = _field(_path)
    """A library name (searched for) or a path (contains ``/``)."""
    symbol: str = _field(_name)
    """The exported function to call."""
    args: tuple[int | float, ...] = _seq(_array(_number))
    """The call's arguments: ints (i32/i64) or floats (f32/f64)."""
    library_path: tuple[str, ...] = _seq(_array(_path))
    preload: tuple[str, ...] = _seq(_array(_path))
    bind_now: bool = _field(_bool, False)
    limits: Limits = _field(_limits, attrs.Factory(Limits), metadata={"nested": Limits})
    fd_roles: tuple[str, ...] = _seq(_fd_roles)
    request_id: int = _field(_request_id, 0)
    debug: str = _field(_str(MAX_DEBUG_BYTES), "")
    """As in Run."""


@attrs.frozen(kw_only=True)
class Preload:
    """Request: load and compile libraries into the daemon's cache now, so the
    first real request does not pay for it."""

    TYPE: ClassVar[str] = "preload"

    libraries: tuple[str, ...] = _seq(_array(_path), required=True)
    library_path: tuple[str, ...] = _seq(_array(_path))
    request_id: int = _field(_request_id, 0)


@attrs.frozen(kw_only=True)
class Stats:
    """Request: the daemon's counters (cache sizes, requests served...)."""

    TYPE: ClassVar[str] = "stats"

    request_id: int = _field(_request_id, 0)


@attrs.frozen(kw_only=True)
class Ping:
    """Request: liveness and version check; answered with Pong."""

    TYPE: ClassVar[str] = "ping"

    request_id: int = _field(_request_id, 0)


@attrs.frozen(kw_only=True)
class Cancel:
    """Request: cancel the in-flight request with this id on this connection.

    ``request_id`` is the *target*, so it is required: a default of 0 would
    silently cancel whatever request happened to use id 0. No response of its
    own: the cancelled request ends with ``Error(kind="cancelled")``, or with
    its normal result if it finished first.
    """

    TYPE: ClassVar[str] = "cancel"

    request_id: int = _field(_request_id)


@attrs.frozen(kw_only=True)
class RunResult:
    """Response to Run: the program ran to completion."""

    TYPE: ClassVar[str] = "run_result"

    request_id: int = _field(_request_id, 0)
    exit_code: int = _field(_int(0, U32_MAX, f"int in 0..{U32_MAX} (a WASI exit status)"))
    """The guest's exit status (WASI's is a u32; the client maps it to 0..255)."""
    timings: dict[str, float] = _dict_field(_map(_duration))
    """Seconds spent per phase (``plan``, ``instantiate``, ``run``...)."""


@attrs.frozen(kw_only=True)
class CallResult:
    """Response to Dlopen: the function returned."""

    TYPE: ClassVar[str] = "call_result"

    request_id: int = _field(_request_id, 0)
    results: tuple[int | float, ...] = _seq(_array(_number), required=True)
    """The function's results (empty for a void function)."""
    timings: dict[str, float] = _dict_field(_map(_duration))


@attrs.frozen(kw_only=True)
class PreloadResult:
    """Response to Preload."""

    TYPE: ClassVar[str] = "preload_result"

    request_id: int = _field(_request_id, 0)
    loaded: tuple[str, ...] = _seq(_array(_path), required=True)
    """Paths of every file now cached (the libraries and their dependencies)."""


@attrs.frozen(kw_only=True)
class StatsResult:
    """Response to Stats: flat counters, so clients can print them without
    knowing them."""

    TYPE: ClassVar[str] = "stats_result"

    request_id: int = _field(_request_id, 0)
    stats: dict[str, int | float | str] = _dict_field(_map(_stat_value), required=True)


@attrs.frozen(kw_only=True)
class Pong:
    """Response to Ping."""

    TYPE: ClassVar[str] = "pong"

    request_id: int = _field(_request_id, 0)
    version: int = _field(_int(0, I64_MAX, "non-negative int"), PROTOCOL_VERSION)
    """The protocol version the daemon speaks."""
    server: str = _field(_text, "")
    """Free-form server identification, e.g. ``"wasmrund 0.1.0"``."""


def _default_exit_code(error: Error) -> int:
    """EXIT_CODES[kind]; must not raise on a bad kind (the kind validator
    reports that, and it runs after defaults are computed)."""
    kind = error.kind
    if type(kind) is str and kind in EXIT_CODES:
        return EXIT_CODES[kind]
    return EXIT_CODES["internal"]


@attrs.frozen(kw_only=True)
class Error:
    """Response: the request (or, with ``request_id`` nil, the connection)
    failed.

    ``exit_code`` is what a client should exit with, so every client maps
    failures to the same statuses; it defaults from ``kind`` (EXIT_CODES).
    """

    TYPE: ClassVar[str] = "error"

    request_id: int | None = _field(_optional(_request_id), None)
    """The failed request, or nil for a connection-level failure (such as a
    malformed frame, whose request id cannot be trusted)."""
    kind: str = _field(_one_of(ERROR_KINDS))
    message: str = _field(_text)
    """One human-readable line (ld.so style for load errors)."""
    exit_code: int = _field(
        _int(1, 255, "int in 1..255 (a failure exit status)"),
        attrs.Factory(_default_exit_code, takes_self=True),
    )


Request: TypeAlias = Run | Dlopen | Preload | Stats | Ping | Cancel
Response: TypeAlias = RunResult | CallResult | PreloadResult | StatsResult | Pong | Error
Message: TypeAlias = Request | Response

REQUEST_TYPES: Mapping[str, type[Request]] = MappingProxyType(
    {cls.TYPE: cls for cls in (Run, Dlopen, Preload, Stats, Ping, Cancel)}
)
"""Wire ``type`` to class, for messages a client sends."""

RESPONSE_TYPES: Mapping[str, type[Response]] = MappingProxyType(
    {cls.TYPE: cls for cls in (RunResult, CallResult, PreloadResult, StatsResult, Pong, Error)}
)
"""Wire ``type`` to class, for messages a server sends."""

MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType({**REQUEST_TYPES, **RESPONSE_TYPES})
"""Every wire ``type``."""
