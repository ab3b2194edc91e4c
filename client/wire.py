"""The client's side of the wire protocol, from the standard library alone.

:mod:`wasmrun.protocol` is the reference implementation, but importing it
(attrs, its validators, msgpack) costs more start-up time than a whole
request to a warm daemon (see docs/benchmarks.md). ``wasmrun`` only builds a
few request types and reads a few response types, so this module writes and
reads exactly the msgpack subset the protocol uses (nil, bool, int, float,
str, array, map) by itself, and checks requests against the protocol's
rules before sending (a request it refuses runs in process instead). Its
frames are byte-identical to the reference encoder's, and its decoder reads
what the reference encoder writes: tests/test_client.py checks both, so the
two implementations cannot drift apart silently.

Requests carry every field (the protocol's rule), in the protocol's order.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # typing and collections.abc cost start-up time; annotations only
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_SIZE = 1 << 20
_HEADER = struct.Struct(">I")
RESPONSE_TYPES = ("run_result", "call_result", "preload_result", "stats_result", "pong", "error")
EXIT_CODES = {
    "protocol": 76,
    "load": 127,
    "trap": 134,
    "limit": 137,
    "timeout": 124,
    "cancelled": 130,
    "internal": 70,
    "refused": 76,
    "busy": 75,
    "shutdown": 69,
    "exit": 1,
    "signal": 141,
}


class WireError(Exception):
    """A request that cannot be encoded, or a response that makes no sense."""


def _limits(
    memory_bytes: int | None = None, timeout_ms: int | None = None, fuel: int | None = None
) -> dict[str, int | None]:
    return {"memory_bytes": memory_bytes, "timeout_ms": timeout_ms, "fuel": fuel}


MAX_STRING_BYTES = 64 * 1024
MAX_PATH_BYTES = 4096
MAX_ITEMS = 4096
MAX_FDS = 253
MAX_DEBUG_BYTES = 256  # a WASMRUN_DEBUG value (protocol.messages.MAX_DEBUG_BYTES)
_I64_MAX = (1 << 63) - 1


def _utf8_len(value: str, what: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise WireError(f"{what}: not valid Unicode") from None


def _check_str(value: Any, what: str, *, path: bool = False, empty_ok: bool = False) -> None:
    if type(value) is not str:
        raise WireError(f"{what}: not a string")
    limit = MAX_PATH_BYTES if path else MAX_STRING_BYTES
    if _utf8_len(value, what) > limit:
        raise WireError(f"{what}: longer than {limit} bytes")
    if "\0" in value:
        raise WireError(f"{what}: contains a NUL character")
    if not value and not empty_ok:
        raise WireError(f"{what}: empty")


def _check_list(value: Any, what: str, max_items: int = MAX_ITEMS) -> list[Any]:
    if type(value) is not list or len(value) > max_items:
        raise WireError(f"{what}: more than {max_items} items")
    return value


def check_request(body: dict[str, Any]) -> None:
    """Raise WireError unless the daemon's validator would accept ``body``
    (a run or dlopen map): the client then runs in process instead of
    getting a protocol error for, say, a 5000-entry environment."""
    for key in ("program", "library"):
        if key in body:
            _check_str(body[key], key, path=True)
    if "symbol" in body:
        _check_str(body["symbol"], "symbol")
    if "cwd" in body:
        _check_str(body["cwd"], "cwd", path=True, empty_ok=True)
    for key in ("library_path", "preload"):
        for item in _check_list(body.get(key, []), key):
            _check_str(item, key, path=True)
    args = _check_list(body.get("args", []), "args")
    if body.get("type") == "run":
        for item in args:
            _check_str(item, "args", empty_ok=True)
    else:
        for item in args:
            if type(item) is int and not -(1 << 63) <= item <= _I64_MAX:
                raise WireError(f"{item}: does not fit a 64-bit integer")
            if type(item) not in (int, float):
                raise WireError(f"{item!r}: not a number")
    for pair in _check_list(body.get("env", []), "env"):
        name, value = pair
        _check_str(name, "environment name")
        if "=" in name:
            raise WireError(f"environment name {name!r} contains '='")
        _check_str(value, "environment value", empty_ok=True)
    debug = body.get("debug", "")
    if type(debug) is not str or len(debug.encode("utf-8", "replace")) > MAX_DEBUG_BYTES:
        raise WireError("WASMRUN_DEBUG is too long for the daemon")
    roles = _check_list(body.get("fd_roles", []), "fd_roles", MAX_FDS)
    if len(set(roles)) != len(roles):
        raise WireError("two descriptors with the same role (a guest path given twice?)")
    for role in roles:
        if role.startswith("dir:"):
            _check_str(role[4:], "guest directory", path=True)
        elif role not in ("stdin", "stdout", "stderr", "program"):
            raise WireError(f"unknown descriptor role {role!r}")
    for key, value in body.get("limits", {}).items():
        if value is not None and (type(value) is not int or not 1 <= value <= _I64_MAX):
            raise WireError(f"limit {key} out of range: {value!r}")


# -- msgpack, the subset the protocol uses ---------------------------------------------

_BE = {
    1: struct.Struct(">B"),
    2: struct.Struct(">H"),
    4: struct.Struct(">I"),
    8: struct.Struct(">Q"),
}
_SIGNED = {
    1: struct.Struct(">b"),
    2: struct.Struct(">h"),
    4: struct.Struct(">i"),
    8: struct.Struct(">q"),
}
_F32, _F64 = struct.Struct(">f"), struct.Struct(">d")


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n < 0x80 or -32 <= n < 0:
        out += (n & 0xFF).to_bytes(1, "big")
    elif n >= 0:
        for size, tag in ((1, 0xCC), (2, 0xCD), (4, 0xCE), (8, 0xCF)):
            if n < 1 << (8 * size):
                out.append(tag)
                out += _BE[size].pack(n)
                return
        raise WireError(f"integer {n} does not fit 64 bits")
    else:
        for size, tag in ((1, 0xD0), (2, 0xD1), (4, 0xD2), (8, 0xD3)):
            if n >= -(1 << (8 * size - 1)):
                out.append(tag)
                out += _SIGNED[size].pack(n)
                return
        raise WireError(f"integer {n} does not fit 64 bits")


def _pack_len(
    n: int, fix: int, fix_max: int, tags: tuple[int | None, int, int], out: bytearray
) -> None:
    """A length header: fix form, then 8/16/32-bit forms (tag None: absent)."""
    if n <= fix_max:
        out.append(fix | n)
        return
    for size, tag in zip((1, 2, 4), tags, strict=True):
        if tag is not None and n < 1 << (8 * size):
            out.append(tag)
            out += _BE[size].pack(n)
            return
    raise WireError("value too large")


def _pack(value: Any, out: bytearray) -> None:
    kind = type(value)
    if value is None:
        out.append(0xC0)
    elif kind is bool:
        out.append(0xC3 if value else 0xC2)
    elif kind is int:
        _pack_int(value, out)
    elif kind is float:
        out.append(0xCB)
        out += _F64.pack(value)
    elif kind is str:
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError("a string is not valid Unicode") from None
        _pack_len(len(data), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out += data
    elif kind in (list, tuple):
        _pack_len(len(value), 0x90, 15, (None, 0xDC, 0xDD), out)
        for item in value:
            _pack(item, out)
    elif kind is dict:
        _pack_len(len(value), 0x80, 15, (None, 0xDE, 0xDF), out)
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    else:
        raise WireError(f"cannot encode a {kind.__name__}")


def packb(value: Any) -> bytes:
    """``value`` as msgpack, byte for byte what ``msgpack.packb(value,
    use_bin_type=True)`` writes for the types above."""
    out = bytearray()
    _pack(value, out)
    return bytes(out)


class _Unpacker:
    """Reads one msgpack value; WireError on anything malformed or outside
    the subset (bin, ext, non-string map keys, truncation)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise WireError("malformed response: truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def length(self, size: int) -> int:
        return int(_BE[size].unpack(self.take(size))[0])

    def value(self, depth: int = 0) -> Any:
        if depth > 32:
            raise WireError("malformed response: nested too deeply")
        b = self.take(1)[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if b == 0xC0:
            return None
        if b in (0xC2, 0xC3):
            return b == 0xC3
        if 0xCC <= b <= 0xCF:
            return self.length(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            size = 1 << (b - 0xD0)
            return int(_SIGNED[size].unpack(self.take(size))[0])
        if b == 0xCA:
            return float(_F32.unpack(self.take(4))[0])
        if b == 0xCB:
            return float(_F64.unpack(self.take(8))[0])
        if 0xD9 <= b <= 0xDB:
            return self.text(self.length(1 << (b - 0xD9)))
        if b in (0xDC, 0xDD):
            return self.array(self.length(2 if b == 0xDC else 4), depth)
        if b in (0xDE, 0xDF):
            return self.map(self.length(2 if b == 0xDE else 4), depth)
        raise WireError(f"malformed response: msgpack type 0x{b:02x} is not used by the protocol")

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed response: invalid UTF-8") from None

    def array(self, n: int, depth: int) -> list[Any]:
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if type(key) is not str or key in out:
                raise WireError("malformed response: bad map key")
            out[key] = self.value(depth + 1)
        return out


def unpackb(data: bytes) -> Any:
    """The one msgpack value in ``data`` (trailing bytes are an error)."""
    unpacker = _Unpacker(data)
    value = unpacker.value()
    if unpacker.pos != len(data):
        raise WireError("malformed response: trailing bytes")
    return value


# -- frames ------------------------------------------------------------------------


def frame(body: dict[str, Any]) -> bytes:
    """A whole frame for a message map (``v`` and ``type`` first)."""
    payload = packb(body)
    if len(payload) > MAX_FRAME_SIZE:
        raise WireError(f"request of {len(payload)} bytes exceeds {MAX_FRAME_SIZE} bytes")
    return _HEADER.pack(len(payload)) + payload


def run_request(
    *,
    program: str,
    args: Sequence[str],
    env: Sequence[tuple[str, str]],
    cwd: str,
    library_path: Sequence[str],
    preload: Sequence[str],
    bind_now: bool,
    memory_bytes: int | None,
    timeout_ms: int | None,
    fd_roles: Sequence[str],
    request_id: int,
    debug: str = "",
) -> bytes:
    """A ``run`` frame; WireError if the daemon would refuse it."""
    return _checked(
        {
            "v": PROTOCOL_VERSION,
            "type": "run",
            "program": program,
            "args": list(args),
            "env": [[name, value] for name, value in env],
            "cwd": cwd,
            "library_path": list(library_path),
            "preload": list(preload),
            "bind_now": bool(bind_now),
            "limits": _limits(memory_bytes, timeout_ms),
            "fd_roles": list(fd_roles),
            "request_id": request_id,
            "debug": debug,
        }
    )


def dlopen_request(
    *,
    library: str,
    symbol: str,
    args: Sequence[int | float],
    library_path: Sequence[str],
    preload: Sequence[str],
    bind_now: bool,
    memory_bytes: int | None,
    timeout_ms: int | None,
    fd_roles: Sequence[str],
    request_id: int,
    debug: str = "",
) -> bytes:
    """A ``dlopen`` frame (load a library, call one function)."""
    return _checked(
        {
            "v": PROTOCOL_VERSION,
            "type": "dlopen",
            "library": library,
            "symbol": symbol,
            "args": list(args),
            "library_path": list(library_path),
            "preload": list(preload),
            "bind_now": bool(bind_now),
            "limits": _limits(memory_bytes, timeout_ms),
            "fd_roles": list(fd_roles),
            "request_id": request_id,
            "debug": debug,
        }
    )


def _checked(body: dict[str, Any]) -> bytes:
    check_request(body)
    return frame(body)


def simple_request(type_: str, request_id: int) -> bytes:
    """A ``cancel``, ``ping`` or ``stats`` frame."""
    if type_ not in ("cancel", "ping", "stats"):
        raise ValueError(type_)
    return frame({"v": PROTOCOL_VERSION, "type": type_, "request_id": request_id})


class Reply:
    """A decoded response: its type and its fields as sent."""

    __slots__ = ("type", "fields")

    def __init__(self, type_: str, fields: dict[str, Any]) -> None:
        self.type = type_
        self.fields = fields

    @property
    def request_id(self) -> int | None:
        value = self.fields.get("request_id", 0)
        return value if type(value) is int else None

    def __repr__(self) -> str:
        return f"Reply({self.type!r}, {self.fields!r})"


def _int(fields: dict[str, Any], name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = fields.get(name, default)
    if type(value) is not int or not lo <= value <= hi:
        raise WireError(f"invalid field {name}: {value!r}")
    return value


def parse_reply(payload: bytes) -> Reply:
    """One frame body from the daemon. Checks what the client relies on:
    the version, a known response type, and the type of every field it
    reads (so a confused daemon gives a clear message, not a traceback)."""
    body = unpackb(payload)
    if type(body) is not dict:
        raise WireError("malformed response: not a map")
    if body.get("v") != PROTOCOL_VERSION:
        raise WireError(f"unsupported protocol version {body.get('v')!r}")
    type_ = body.get("type")
    if type_ not in RESPONSE_TYPES:
        raise WireError(f"unexpected message type {type_!r}")
    fields = {k: v for k, v in body.items() if k not in ("v", "type")}
    if type_ == "run_result":
        _int(fields, "exit_code", 0, (1 << 32) - 1)
    elif type_ == "call_result":
        results = fields.get("results")
        if type(results) is not list or not all(type(r) in (int, float) for r in results):
            raise WireError(f"invalid field results: {results!r}")
    elif type_ == "stats_result":
        stats = fields.get("stats")
        if type(stats) is not dict or not all(type(k) is str for k in stats):
            raise WireError("invalid field stats")
    elif type_ == "error":
        kind = fields.get("kind")
        if kind not in EXIT_CODES:
            raise WireError(f"invalid field kind: {kind!r}")
        if type(fields.get("message")) is not str:
            raise WireError("invalid field message")
        fields["exit_code"] = _int(fields, "exit_code", 1, 255, EXIT_CODES[kind])
    return Reply(type_, fields)


class FrameReader:
    """Splits the byte stream from the daemon into frame bodies."""

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_payload(self) -> bytes | None:
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if not 0 < length <= self.max_size:
            raise WireError(f"bad frame length {length}")
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return payload

    @property
    def pending(self) -> int:
        return len(self._buffer)
