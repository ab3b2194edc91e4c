"""wasmrun.protocol: the wire protocol between ``wasmrun`` and ``wasmrund``.

Sans-I/O: nothing here touches a socket, a file or a thread. The client and
the daemon read and write bytes however they like and hand them to a
:class:`Connection` (or use :func:`encode_message` / :class:`FrameDecoder` /
:func:`decode_message` directly), so every rule below is enforced in one
place and tested with plain bytes.

Wire format
===========

Transport: a Unix stream socket. File descriptors (the client's stdio, the
program file, preopened directories) travel with a request as SCM_RIGHTS
ancillary data on the ``sendmsg`` that carries the request's first byte;
the request's ``fd_roles`` says what each one is.

Framing
-------
Each message is one frame::

    +-------------------------+-------------------------------+
    | length: u32 big-endian  | body: `length` bytes, msgpack |
    +-------------------------+-------------------------------+

* ``length`` is 1..max (default ``MAX_FRAME_SIZE`` = 1 MiB; each side may
  configure its own). A zero length is a MalformedFrame; a larger one is a
  FrameTooLarge, raised as soon as the header arrives, before the body.
* The stream ending inside a frame is a MalformedFrame.
* After any protocol error the stream is unusable: the receiver may send one
  ``error`` message (``request_id`` nil, ``kind`` "protocol") and closes.

Body
----
Exactly one msgpack map (anything after it is a MalformedFrame) with string
keys::

    {"v": 1, "type": "<message type>", <field>: <value>, ...}

* ``v`` is the protocol version, an int (``PROTOCOL_VERSION`` = 1); any other
  value is UnsupportedVersion. It is checked before ``type``.
* ``type`` selects the message (unknown: UnknownMessageType).
* Senders write every field; receivers require only ``v``, ``type`` and the
  fields marked *required* below, and use the defaults for the rest.
* Unknown fields are rejected (InvalidField), as are duplicate keys, ext types
  (including timestamps) and invalid UTF-8 (MalformedFrame).
* Types are exact: ``bool`` is not an int, ``bin`` is not a string, an int
  where a float is expected is wrong. Ints fit in i64. Strings are UTF-8, at
  most 64 KiB (``MAX_STRING_BYTES``); paths at most 4096 bytes
  (``MAX_PATH_BYTES``) and non-empty; argv, environment and path strings may
  not contain NUL. Arrays and maps hold at most 4096 items (``MAX_ITEMS``),
  ``fd_roles`` at most 253 (``MAX_FDS``, the kernel's SCM_RIGHTS limit).

Types in the tables: ``str``, ``path`` (non-empty str, no NUL, <= 4096 bytes),
``id`` (int 0..2**63-1), ``[T]`` (array), ``{str: T}`` (map), ``num`` (i64 int
or float, any float including NaN/inf), ``T|nil``.

Requests (client -> server)

=============  ===================  ==========================  ==================
type           field                type                        default
=============  ===================  ==========================  ==================
run            program              path                        *required*
               args                 [str], full argv            [] (= [program])
               env                  [[name, value]]             []
               cwd                  absolute path or ""         ""
               library_path         [path]                      []
               preload              [path]                      []
               bind_now             bool                        false
               limits               Limits map                  all nil
               fd_roles             [str]                       []
               request_id           id                          0
               debug                str (WASMRUN_DEBUG), <=256  ""
dlopen         library              path                        *required*
               symbol               non-empty str               *required*
               args                 [num]                       []
               library_path,        as for run                  as for run
               preload, bind_now,
               limits, fd_roles,
               request_id, debug
preload        libraries            [path]                      *required*
               library_path         [path]                      []
               request_id           id                          0
stats          request_id           id                          0
ping           request_id           id                          0
cancel         request_id           id (the request to cancel)  *required*
=============  ===================  ==========================  ==================

``Limits`` map: ``memory_bytes``, ``timeout_ms``, ``fuel``: each an int in
1..2**63-1 or nil (the daemon's default); missing keys mean nil.

Environment names are non-empty and contain no ``=``. ``fd_roles`` entries
are ``"stdin"``, ``"stdout"``, ``"stderr"``, ``"program"`` (the file to run,
opened by the client; for dlopen, the library) or ``"dir:<guest path>"`` (a
preopened directory); no role may appear twice.

Responses (server -> client); each echoes its request's ``request_id``.

==============  ==========  =============================  ===================
type            field       type                           default
==============  ==========  =============================  ===================
run_result      exit_code   int 0..2**32-1 (WASI status)   *required*
                timings     {str: float >= 0, seconds}     {}
call_result     results     [num]                          *required*
                timings     {str: float >= 0}              {}
preload_result  loaded      [path]                         *required*
stats_result    stats       {str: int|float|str}           *required*
pong            version     int >= 0                       1
                server      str                            ""
error           request_id  id|nil (nil: the connection)   nil
                kind        protocol|load|trap|limit|      *required*
                            timeout|cancelled|internal|
                            refused|busy|shutdown|exit|
                            signal
                message     str (one line, by convention)  *required*
                exit_code   int 1..255                     by kind (EXIT_CODES)
==============  ==========  =============================  ===================

Every response also has ``request_id`` (id, default 0). ``cancel`` has no
response of its own: the cancelled request ends with an ``error`` of kind
``cancelled`` (or its normal result if it finished first). ``exit_code`` is
what the client exits with: 127 load, 134 trap, 137 limit, 124 timeout,
130 cancelled, 70 internal, 76 protocol, 76 refused (a uid the daemon does
not serve), 75 busy (a cap or a full queue: retry), 69 shutdown (the daemon
is stopping), for ``exit`` (a guest called ``exit(N)`` where no status
was expected, as in ``wasmrun call``) N itself, and for ``signal`` 128 + the
signal a native program would have died of (141: the guest wrote to a pipe
nobody reads any more, SIGPIPE); the client then dies of that signal itself,
silently, as ``wasmrun`` does in process.

Example: ``Ping(request_id=7)`` is the 30-byte frame ``00 00 00 1a`` followed
by the 26 bytes of msgpack ``{"v": 1, "type": "ping", "request_id": 7}``.
"""

from .codec import (
    Answer,
    decode_message,
    encode_message,
    encode_payload,
    error_response,
    message_from_map,
    message_to_map,
    peek_answer,
)
from .connection import Connection, ConnectionState, Role
from .errors import (
    ConnectionBroken,
    FrameTooLarge,
    InvalidField,
    MalformedFrame,
    ProtocolError,
    UnexpectedMessage,
    UnknownMessageType,
    UnsupportedVersion,
)
from .framing import HEADER_SIZE, MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .messages import (
    ERROR_KINDS,
    EXIT_CODES,
    MAX_FDS,
    MAX_ITEMS,
    MAX_PATH_BYTES,
    MAX_STRING_BYTES,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    CallResult,
    Cancel,
    Dlopen,
    Error,
    Limits,
    Message,
    Ping,
    Pong,
    Preload,
    PreloadResult,
    Request,
    Response,
    Run,
    RunResult,
    Stats,
    StatsResult,
)

__all__ = [
    "Answer",
    "ERROR_KINDS",
    "EXIT_CODES",
    "HEADER_SIZE",
    "MAX_FDS",
    "MAX_FRAME_SIZE",
    "MAX_ITEMS",
    "MAX_PATH_BYTES",
    "MAX_STRING_BYTES",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "CallResult",
    "Cancel",
    "Connection",
    "ConnectionBroken",
    "ConnectionState",
    "Dlopen",
    "Error",
    "FrameDecoder",
    "FrameTooLarge",
    "InvalidField",
    "Limits",
    "MalformedFrame",
    "Message",
    "Ping",
    "Pong",
    "Preload",
    "PreloadResult",
    "ProtocolError",
    "Request",
    "Response",
    "Role",
    "Run",
    "RunResult",
    "Stats",
    "StatsResult",
    "UnexpectedMessage",
    "UnknownMessageType",
    "UnsupportedVersion",
    "decode_message",
    "encode_frame",
    "encode_message",
    "encode_payload",
    "error_response",
    "message_from_map",
    "message_to_map",
    "peek_answer",
]
