"""The exceptions the protocol layer raises.

Every way a peer can send bad bytes maps to exactly one :class:`ProtocolError`
subclass, so the daemon can catch one type, report it to the peer with a
stable ``code`` and drop the connection, instead of crashing on a stray
``KeyError`` deep inside a handler. Messages are a single line and quote
peer-supplied data with ``repr`` (truncated), so they are safe to log and to
send back to the peer.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConnectionBroken",
    "FrameTooLarge",
    "InvalidField",
    "MalformedFrame",
    "ProtocolError",
    "UnexpectedMessage",
    "UnknownMessageType",
    "UnsupportedVersion",
]

_MAX_QUOTE = 60


def quote(value: object) -> str:
    """``repr(value)``, truncated: error messages quote untrusted data, which
    could be megabytes long or contain newlines that would break log lines."""
    text = repr(value)
    if len(text) > _MAX_QUOTE:
        text = text[: _MAX_QUOTE - 3] + "..."
    return text


class ProtocolError(Exception):
    """Base class: the peer (or the caller) broke the wire protocol.

    ``code`` is a stable machine-readable identifier (it goes into logs and
    ``Error`` responses and must not change between releases); the message is
    one human-readable line.
    """

    code: ClassVar[str] = "protocol_error"

    def __init__(self, message: str) -> None:
        # One line even if a caller formats something multi-line into it.
        message = " ".join(message.splitlines())
        super().__init__(message)
        self.message = message


class FrameTooLarge(ProtocolError):
    """A frame header announced more bytes than the receiver accepts.

    Raised as soon as the 4-byte header is seen, so a hostile peer cannot make
    the receiver buffer a huge body first.
    """

    code: ClassVar[str] = "frame_too_large"

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {max_size} bytes")
        self.size = size
        self.max_size = max_size


class MalformedFrame(ProtocolError):
    """The framing or the msgpack encoding is broken: an empty frame, a
    truncated stream, bytes that are not msgpack, a body that is not a map,
    trailing bytes after the map, ext types, duplicate map keys..."""

    code: ClassVar[str] = "malformed_frame"


class UnsupportedVersion(ProtocolError):
    """The message carries a protocol version this side does not speak; kept
    apart from InvalidField so a client can tell "upgrade the daemon" from
    "bug"."""

    code: ClassVar[str] = "unsupported_version"

    def __init__(self, version: int, supported: int) -> None:
        super().__init__(f"unsupported protocol version {version} (this side speaks {supported})")
        self.version = version
        self.supported = supported


class UnknownMessageType(ProtocolError):
    """The ``type`` field names no message this protocol version defines."""

    code: ClassVar[str] = "unknown_message_type"

    def __init__(self, type_name: str) -> None:
        super().__init__(f"unknown message type {quote(type_name)}")
        self.type_name = type_name


class InvalidField(ProtocolError):
    """A field is missing, unknown, of the wrong type, or out of bounds.

    ``field`` is the dotted/indexed path of the offending value (``"args[3]"``,
    ``"limits.fuel"``) so the sender can find its bug without a debugger.
    """

    code: ClassVar[str] = "invalid_field"

    def __init__(self, field: str, expected: str, got: str) -> None:
        super().__init__(f"invalid field {field}: expected {expected}, got {got}")
        self.field = field
        self.expected = expected
        self.got = got

    def nested_in(self, prefix: str) -> InvalidField:
        """The same error, with its field path placed under ``prefix`` (so a
        bad ``fuel`` inside ``limits`` reports ``limits.fuel``)."""
        return InvalidField(f"{prefix}.{self.field}", self.expected, self.got)


class UnexpectedMessage(ProtocolError):
    """A valid message went the wrong way: a server received a response, or a
    client a request (or the local side tried to send one)."""

    code: ClassVar[str] = "unexpected_message"


class ConnectionBroken(ProtocolError):
    """The connection already failed with a ProtocolError; the byte stream is
    no longer trustworthy (we may be mid-frame), so nothing more is read or
    written. ``cause`` is the original error."""

    code: ClassVar[str] = "connection_broken"

    def __init__(self, cause: ProtocolError) -> None:
        super().__init__(f"connection unusable after an earlier protocol error: {cause}")
        self.cause = cause
