"""Length-prefixed framing: a 4-byte big-endian unsigned length, then that
many bytes of body.

A stream socket delivers bytes in arbitrary chunks; framing restores message
boundaries without parsing msgpack incrementally, and the length header lets
the receiver refuse an oversized frame before buffering it.
"""

from __future__ import annotations

import struct

from .errors import FrameTooLarge, MalformedFrame, ProtocolError

__all__ = ["HEADER_SIZE", "MAX_FRAME_SIZE", "FrameDecoder", "encode_frame"]

HEADER_SIZE = 4
"""Bytes in a frame header."""

MAX_FRAME_SIZE = 1 << 20
"""Default largest body accepted (1 MiB): far above any legitimate request
(argv and environment are bounded well below it) yet small enough that a
misbehaving peer cannot make the daemon allocate much per connection."""

_HEADER = struct.Struct(">I")
_U32_MAX = (1 << 32) - 1


def _check_max_size(max_size: int) -> None:
    """Reject limits the header cannot express or that forbid every frame;
    these are configuration bugs, hence ValueError rather than ProtocolError."""
    if type(max_size) is not int or not 1 <= max_size <= _U32_MAX:
        raise ValueError(f"max_size must be an int in 1..{_U32_MAX}, got {max_size!r}")


def _check_length(length: int, max_size: int) -> None:
    """The rules every header must obey, shared by sender and receiver so a
    frame we send is never one the peer's decoder rejects for its size."""
    if length == 0:
        raise MalformedFrame("zero-length frame (a message is never empty)")
    if length > max_size:
        raise FrameTooLarge(length, max_size)


def encode_frame(payload: bytes, *, max_size: int = MAX_FRAME_SIZE) -> bytes:
    """``payload`` with its length header prepended.

    Raises FrameTooLarge (or MalformedFrame for an empty payload) rather than
    produce a frame a peer with the same limit would reject.
    """
    _check_max_size(max_size)
    _check_length(len(payload), max_size)
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental frame splitter: feed it bytes as they arrive, take frame
    bodies out one at a time.

    Holds no socket: the caller does the reading, so the decoder is testable
    with plain bytes and usable from any I/O framework.
    """

    def __init__(self, max_size: int = MAX_FRAME_SIZE) -> None:
        _check_max_size(max_size)
        self.max_size = max_size
        self._buffer = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        """Append received bytes.

        Raises FrameTooLarge / MalformedFrame immediately if the next frame's
        header is already invalid, so the caller stops reading instead of
        buffering a body that will be rejected anyway.
        """
        if self._eof:
            if not data:
                return
            raise ProtocolError("data received after the end of the stream")
        self._buffer += data
        self._check_head()

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None when more data is needed."""
        length = self._check_head()
        if length is None or len(self._buffer) < HEADER_SIZE + length:
            return None
        end = HEADER_SIZE + length
        body = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]  # bytearray trims its head in O(1) amortised
        return body

    def pending(self) -> int:
        """Bytes buffered and not yet returned as frames (headers included)."""
        return len(self._buffer)

    def eof(self) -> None:
        """Note that the stream ended.

        Complete frames still buffered can be taken afterwards; raises
        MalformedFrame if the stream stopped inside a frame, since the peer's
        last message was then cut short and must not be half-processed.
        """
        self._eof = True
        buffer = self._buffer
        offset = 0
        while offset < len(buffer):
            remaining = len(buffer) - offset
            if remaining < HEADER_SIZE:
                raise MalformedFrame(
                    f"stream ended inside a frame header ({remaining} of {HEADER_SIZE} bytes)"
                )
            (length,) = _HEADER.unpack_from(buffer, offset)
            _check_length(length, self.max_size)
            if remaining - HEADER_SIZE < length:
                raise MalformedFrame(
                    f"stream ended inside a frame ({remaining - HEADER_SIZE} of {length} bytes)"
                )
            offset += HEADER_SIZE + length

    def _check_head(self) -> int | None:
        """Validate the header at the front of the buffer; its length, or
        None while fewer than HEADER_SIZE bytes are buffered."""
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        _check_length(length, self.max_size)
        return length
