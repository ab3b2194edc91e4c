"""A sans-I/O connection: one side's view of a byte stream of messages.

The caller owns the socket (trio in the daemon, blocking in the client) and
shuttles bytes: ``receive_data`` what it read, write what ``send`` returns.
The connection splits frames, decodes and validates messages, and checks
that each travels in the right direction, so that logic is written and
tested once for both sides.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NoReturn

from .codec import decode_message, encode_message
from .errors import ConnectionBroken, ProtocolError, UnexpectedMessage
from .framing import MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .messages import (
    MAX_FDS,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    CallResult,
    Dlopen,
    Error,
    Message,
    Preload,
    PreloadResult,
    Run,
    RunResult,
)

MAX_PENDING_FDS = 2 * MAX_FDS
"""Descriptors a server holds for requests that have not arrived yet."""

_TRACKED = (Run, Dlopen, Preload)  # requests answered later, by request id
_FINAL = (RunResult, CallResult, PreloadResult, Error)

__all__ = ["Connection", "ConnectionState", "Role"]


class Role(enum.StrEnum):
    """Which end of the socket this is; it decides what may be received."""

    SERVER = "server"
    CLIENT = "client"


class ConnectionState(enum.Enum):
    """OPEN: messages flow. CLOSED: the peer ended the stream cleanly and every
    message before the end was taken. ERROR: a ProtocolError happened; the
    stream cannot be resynchronised, so the caller should close the socket."""

    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


class Connection:
    """One end of a wasmrun protocol connection, without I/O.

    A server receives requests and sends responses; a client the reverse.

    A server also keeps the per-connection rules: a request id names one
    request in flight at a time (it is free again once its final response
    is sent), and every descriptor that arrives belongs to the next request
    that names descriptors in ``fd_roles``: the caller reports arrivals
    with ``receive_fds`` and takes ``fds_for(msg)`` of them per request
    (with ``descriptors=True``; a byte stream without descriptors skips
    the count).

    Any ProtocolError (from bad input or a wrong-way message) moves the
    connection to ERROR, after which every call raises ConnectionBroken: a
    stream that broke once cannot be trusted to be at a frame boundary. To
    tell the peer why, a server can still write
    ``encode_message(error_response(exc))`` itself before closing.
    """

    def __init__(
        self,
        role: Role | str,
        max_frame_size: int = MAX_FRAME_SIZE,
        *,
        descriptors: bool = False,
    ) -> None:
        self.role = Role(role)
        self.max_frame_size = max_frame_size
        self._decoder = FrameDecoder(max_frame_size)
        self._peer_eof = False
        self._state = ConnectionState.OPEN
        self._error: ProtocolError | None = None
        self._inflight: set[int] = set()
        self.last_payload = b""
        """The frame body of the message ``next_message`` returned last (a
        server can hand a request on without encoding it again)."""
        self._fds_pending = 0
        self._count_fds = descriptors  # a socket that carries SCM_RIGHTS
        self._receives: Mapping[str, type[Message]]
        self._sends: Mapping[str, type[Message]]
        if self.role is Role.SERVER:
            self._receives, self._sends = REQUEST_TYPES, RESPONSE_TYPES
        else:
            self._receives, self._sends = RESPONSE_TYPES, REQUEST_TYPES

    @property
    def state(self) -> ConnectionState:
        """Where the connection stands (see ConnectionState)."""
        return self._state

    @property
    def error(self) -> ProtocolError | None:
        """The error that moved the connection to ERROR, if any."""
        return self._error

    @property
    def inflight(self) -> frozenset[int]:
        """Ids of requests received and not yet answered (server side)."""
        return frozenset(self._inflight)

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held: non-zero means the peer is in
        the middle of sending a message."""
        return self._decoder.pending()

    def receive_fds(self, count: int, truncated: bool = False) -> None:
        """Note ``count`` descriptors that arrived with the bytes last read
        (``truncated``: the kernel dropped some, MSG_CTRUNC)."""
        self._check_usable()
        try:
            if truncated:
                raise ProtocolError("too many file descriptors in one message")
            self._fds_pending += count
            if self._fds_pending > MAX_PENDING_FDS:
                raise ProtocolError("file descriptors sent without requests")
        except ProtocolError as exc:
            self._fail(exc)

    def receive_data(self, data: bytes) -> None:
        """Hand over bytes read from the socket; ``b""`` means the peer closed
        its end (what ``recv`` returns at EOF)."""
        self._check_usable()
        try:
            if not data:
                self._peer_eof = True
            elif self._peer_eof:
                raise ProtocolError("data received after the end of the stream")
            else:
                self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)

    def next_message(self) -> Message | None:
        """The next complete, validated message, or None if there is none yet.

        None also comes once the peer has closed and everything before the
        close was taken; ``state`` is then CLOSED. A stream that ends mid-frame
        raises MalformedFrame (only after the complete messages before it).
        """
        self._check_usable()
        if self._state is ConnectionState.CLOSED:
            return None
        try:
            payload = self._decoder.next_frame()
            if payload is None:
                if self._peer_eof:
                    self._decoder.eof()
                    self._state = ConnectionState.CLOSED
                return None
            message = decode_message(payload)
            self.last_payload = payload
            if self._receives.get(message.TYPE) is not type(message):
                raise UnexpectedMessage(
                    f"unexpected message type for this side: a {self.role} cannot "
                    f"receive {message.TYPE!r}"
                )
            if isinstance(message, _TRACKED):
                self._take_request(message)
        except ProtocolError as exc:
            self._fail(exc)
        return message

    def _take_request(self, msg: Run | Dlopen | Preload) -> None:
        wanted = len(getattr(msg, "fd_roles", ())) if self._count_fds else 0
        if wanted > self._fds_pending:
            raise ProtocolError(
                f"request {msg.request_id} names {wanted} descriptors but "
                f"{self._fds_pending} arrived"
            )
        if msg.request_id in self._inflight:
            raise ProtocolError(f"request id {msg.request_id} is already in use")
        self._fds_pending -= wanted
        self._inflight.add(msg.request_id)

    @staticmethod
    def fds_for(msg: Message) -> int:
        """How many of the received descriptors belong to ``msg``."""
        return len(getattr(msg, "fd_roles", ())) if isinstance(msg, _TRACKED) else 0

    def send(self, msg: Message) -> bytes:
        """The bytes to write to the socket for ``msg``.

        Raises UnexpectedMessage for a message this side must not send (a
        server sending a request), and FrameTooLarge if it does not fit a
        frame; both are treated like any ProtocolError.
        """
        self._check_usable()
        try:
            if self._sends.get(msg.TYPE) is not type(msg):
                raise UnexpectedMessage(
                    f"unexpected message type for this side: a {self.role} cannot send {msg.TYPE!r}"
                )
            data = encode_message(msg, max_frame_size=self.max_frame_size)
        except ProtocolError as exc:
            self._fail(exc)
        if isinstance(msg, _FINAL) and msg.request_id is not None:
            self._inflight.discard(msg.request_id)
        return data

    def send_answer(self, request_id: int, payload: bytes) -> bytes:
        """The bytes to write for an answer to request ``request_id`` that
        arrives encoded already (a frame body from a wasmrund worker, which
        encoded the message it built). The caller has checked what it
        needs of it (:func:`~wasmrun.protocol.codec.peek_answer`); like
        :meth:`send`, this ends the request and refuses a body that does
        not fit a frame."""
        self._check_usable()
        try:
            data = encode_frame(payload, max_size=self.max_frame_size)
        except ProtocolError as exc:
            self._fail(exc)
        self._inflight.discard(request_id)
        return data

    def _check_usable(self) -> None:
        """Refuse to do anything once the connection has failed."""
        if self._error is not None:
            raise ConnectionBroken(self._error)

    def _fail(self, exc: ProtocolError) -> NoReturn:
        """Enter ERROR and re-raise ``exc``."""
        self._state = ConnectionState.ERROR
        self._error = exc
        raise exc
