"""Messages to frames and frame bodies back to messages.

Decoding is the trust boundary: whatever bytes arrive, ``decode_message``
returns a fully validated message or raises a ProtocolError subclass, never
a msgpack, Key/Type/Value error, so the daemon needs exactly one ``except``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, NamedTuple

import attrs
import msgpack

from .errors import (
    InvalidField,
    MalformedFrame,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
    quote,
)
from .framing import MAX_FRAME_SIZE, encode_frame
from .messages import (
    EXIT_CODES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    CallResult,
    Error,
    Message,
    PreloadResult,
    RunResult,
    type_name,
)

__all__ = [
    "decode_message",
    "encode_message",
    "encode_payload",
    "error_response",
    "message_from_map",
    "message_to_map",
]

_ENVELOPE = ("v", "type")
_MISSING: Any = object()


# --------------------------------------------------------------------------
# Encoding.


def _to_wire(value: Any) -> Any:
    """A message field as plain msgpack data: nested attrs classes become
    maps, tuples become lists (msgpack would accept tuples, but lists make
    ``message_to_map`` output equal to what decoding produces)."""
    if attrs.has(type(value)):
        return {f.name: _to_wire(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if type(value) is tuple:
        return [_to_wire(item) for item in value]
    if type(value) is dict:
        return {key: _to_wire(item) for key, item in value.items()}
    return value


def message_to_map(msg: Message) -> dict[str, Any]:
    """The wire map of ``msg``: ``v``, ``type`` and every field (defaults
    included, so the receiver never depends on the sender's defaults)."""
    if type(msg) not in MESSAGE_TYPES.values():
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    wire = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    for field in attrs.fields(type(msg)):
        wire[field.name] = _to_wire(getattr(msg, field.name))
    return wire


def encode_payload(msg: Message) -> bytes:
    """``msg`` as msgpack (a frame body, without the length header)."""
    packed: bytes = msgpack.packb(message_to_map(msg), use_bin_type=True)
    return packed


def encode_message(msg: Message, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """``msg`` as a whole frame, ready to write to the socket.

    Raises FrameTooLarge if it exceeds ``max_frame_size``, rather than send
    something the peer will reject (a huge environment, say).
    """
    return encode_frame(encode_payload(msg), max_size=max_frame_size)


def error_response(exc: ProtocolError, request_id: int | None = None) -> Error:
    """The Error a server sends before closing a connection that broke the
    protocol, so the client can say why instead of "connection reset"."""
    return Error(
        request_id=request_id,
        kind="protocol",
        message=f"{exc.code}: {exc.message}",
        exit_code=EXIT_CODES["protocol"],
    )


# --------------------------------------------------------------------------
# Decoding.


class _Rejected(Exception):
    """Raised from msgpack hooks to abort unpacking; turned into MalformedFrame."""


def _reject_ext(code: int, data: bytes) -> Any:
    """ext_hook: no ext types in this protocol; they would reach validators as
    opaque objects, and rejecting them at the msgpack level is clearer."""
    raise _Rejected(f"msgpack ext type {code} is not allowed")


# What msgpack decodes ext data to (it builds these exact types, never subclasses).
_EXT_TYPES: Final = frozenset({msgpack.Timestamp, msgpack.ExtType})
_NO_EXT: Final = "msgpack ext types (timestamps) are not allowed"


def _has_ext(values: Iterable[Any]) -> bool:
    """Timestamps (ext -1) bypass ext_hook, so containers check for them."""
    return not _EXT_TYPES.isdisjoint(map(type, values))


def _check_list(items: list[Any]) -> list[Any]:
    """list_hook: reject timestamps inside arrays."""
    if _has_ext(items):
        raise _Rejected(_NO_EXT)
    return items


def _check_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """object_pairs_hook: reject duplicate keys (which parsers resolve
    differently, a classic way to smuggle a field past a check) and
    timestamps inside maps."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected(f"duplicate map key {quote(key)}")
            seen.add(key)
    if _has_ext(result.values()):
        raise _Rejected(_NO_EXT)
    return result


def _unpack(payload: bytes) -> Any:
    """msgpack-decode one frame body, strictly, mapping every failure
    (msgpack documents that "other exceptions can be raised") to
    MalformedFrame."""
    size = len(payload)
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            list_hook=_check_list,
            object_pairs_hook=_check_pairs,
            # The frame size already bounds these; stated so a change of
            # msgpack's defaults cannot loosen them.
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=size,
        )
    except _Rejected as exc:
        raise MalformedFrame(str(exc)) from None
    except msgpack.ExtraData:
        raise MalformedFrame("trailing bytes after the message") from None
    except msgpack.StackError:
        raise MalformedFrame("msgpack data nested too deeply") from None
    except msgpack.FormatError:
        raise MalformedFrame("not msgpack data") from None
    except UnicodeDecodeError:
        raise MalformedFrame("a msgpack string is not valid UTF-8") from None
    except ValueError as exc:
        # Truncated data, non-string map keys, a length above the limits...
        raise MalformedFrame(f"invalid msgpack: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input, see docstring
        raise MalformedFrame(f"invalid msgpack: {type(exc).__name__}") from None
    if _has_ext((obj,)):
        raise MalformedFrame(_NO_EXT)
    return obj


class _Schema(NamedTuple):
    """What _build needs of a message class, worked out once per class."""

    names: frozenset[str]  # its fields
    fields: tuple[tuple[str, bool, type[Any] | None], ...]  # (name, required, nested class)
    expected: str  # the fields, for the unknown-field message


_SCHEMAS: dict[type[Any], _Schema] = {}


def _schema(cls: type[Any]) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _make_schema(cls)
    return schema


def _make_schema(cls: type[Any]) -> _Schema:
    fields = attrs.fields(cls)
    return _Schema(
        frozenset(field.name for field in fields),
        tuple(
            (field.name, field.default is attrs.NOTHING, field.metadata.get("nested"))
            for field in fields
        ),
        "one of " + ", ".join(field.name for field in fields),
    )


def _build(cls: type[Any], wire: dict[Any, Any], envelope: tuple[str, ...] = ()) -> Any:
    """An instance of the attrs class ``cls`` from its wire map: strict about
    unknown and missing fields; the class's own validators check the values."""
    schema = _schema(cls)
    names = schema.names
    for key in wire:
        if key in names:
            continue
        if type(key) is not str:
            raise InvalidField(quote(key), "str field name", type_name(key))
        if key not in envelope:
            raise InvalidField(quote(key), schema.expected, "an unknown field")
    kwargs: dict[str, Any] = {}
    for name, required, nested in schema.fields:
        value = wire.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise InvalidField(name, "a value (required field)", "nothing")
            continue
        if nested is not None:
            if type(value) is not dict:
                raise InvalidField(name, "map", type_name(value))
            try:
                value = _build(nested, value)
            except InvalidField as exc:
                raise exc.nested_in(name) from None
        kwargs[name] = value
    return cls(**kwargs)


def message_from_map(wire: Any) -> Message:
    """The message a decoded msgpack object describes; all validation happens
    here (or in the message class). Raises only ProtocolError subclasses.

    The version is checked before the type, so a message from a newer
    protocol reports UnsupportedVersion rather than a confusing unknown type.
    """
    if type(wire) is not dict:
        raise MalformedFrame(f"message is not a msgpack map (got {type_name(wire)})")
    version = wire.get("v", _MISSING)
    if version is _MISSING:
        raise InvalidField("v", "protocol version (int)", "nothing")
    if type(version) is not int:
        raise InvalidField("v", "protocol version (int)", type_name(version))
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(version, PROTOCOL_VERSION)
    type_ = wire.get("type", _MISSING)
    if type_ is _MISSING:
        raise InvalidField("type", "message type (str)", "nothing")
    if type(type_) is not str:
        raise InvalidField("type", "message type (str)", type_name(type_))
    cls = MESSAGE_TYPES.get(type_)
    if cls is None:
        raise UnknownMessageType(type_)
    message: Message = _build(cls, wire, _ENVELOPE)
    return message


class Answer(NamedTuple):
    """What a forwarder needs of an encoded answer (see :func:`peek_answer`)."""

    type: str  # "run_result", "call_result", "preload_result" or "error"
    request_id: int
    exit_code: int  # RunResult's status; an Error's exit_code; else 0
    kind: str | None  # an Error's kind


# The answers to run, dlopen and preload requests.
_ANSWER_TYPES: Final = frozenset(cls.TYPE for cls in (RunResult, CallResult, PreloadResult, Error))


def peek_answer(payload: bytes) -> Answer:
    """The type, request id and status of an encoded answer, without
    building and validating the whole message.

    For a server that forwards answers other code encoded (wasmrund's front
    forwards what its workers encode from messages they built and
    validated): it checks what it acts on, and a client still validates
    everything it receives. Raises MalformedFrame for anything else.
    """
    try:
        wire = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - see _unpack
        raise MalformedFrame(f"invalid msgpack: {type(exc).__name__}") from None
    if type(wire) is not dict:
        raise MalformedFrame(f"answer is not a msgpack map (got {type_name(wire)})")
    type_ = wire.get("type")
    rid = wire.get("request_id")
    if wire.get("v") != PROTOCOL_VERSION or type_ not in _ANSWER_TYPES or type(rid) is not int:
        raise MalformedFrame("not an answer of this protocol version")
    status = wire.get("exit_code", 0)
    kind = wire.get("kind")
    return Answer(
        type_,
        rid,
        status if type(status) is int else 0,
        kind if type(kind) is str else None,
    )


def decode_message(payload: bytes) -> Message:
    """The message in one frame body (as returned by FrameDecoder.next_frame).

    Raises MalformedFrame, UnsupportedVersion, UnknownMessageType or
    InvalidField, and nothing else, whatever ``payload`` holds.
    """
    return message_from_map(_unpack(payload))
