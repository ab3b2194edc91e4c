"""Tests for wasmrun.protocol: round-trips, framing, strict validation, fuzzing.

Everything runs on plain bytes (the package does no I/O), so these tests need
neither the C corpus nor a daemon.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wasmrun.protocol import (
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
    Connection,
    ConnectionBroken,
    ConnectionState,
    Dlopen,
    Error,
    FrameDecoder,
    FrameTooLarge,
    InvalidField,
    Limits,
    MalformedFrame,
    Message,
    Ping,
    Pong,
    Preload,
    PreloadResult,
    ProtocolError,
    Run,
    RunResult,
    Stats,
    StatsResult,
    UnexpectedMessage,
    UnknownMessageType,
    UnsupportedVersion,
    decode_message,
    encode_frame,
    encode_message,
    encode_payload,
    error_response,
    message_to_map,
    peek_answer,
)
from wasmrun.protocol.messages import I64_MAX, I64_MIN, STD_ROLES

# --------------------------------------------------------------------------
# Strategies for valid messages.

_chars = st.characters(exclude_characters="\0", exclude_categories=("Cs",))
text = st.text(_chars, max_size=12)
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # NUL allowed
paths = st.text(_chars, min_size=1, max_size=12)
_name_chars = st.characters(exclude_characters="\0=", exclude_categories=("Cs",))
env_names = st.text(_name_chars, min_size=1, max_size=8)
i64 = st.integers(I64_MIN, I64_MAX)
ids = st.integers(0, I64_MAX)
positive = st.none() | st.integers(1, I64_MAX)
numbers = i64 | st.floats(allow_nan=False)
durations = st.floats(min_value=0.0, allow_infinity=False, allow_nan=False)
limits = st.builds(Limits, memory_bytes=positive, timeout_ms=positive, fuel=positive)


def tuples(elements: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    """Short tuples: messages store sequences as tuples."""
    return st.lists(elements, max_size=max_size).map(tuple)


@st.composite
def fd_roles(draw: st.DrawFn) -> tuple[str, ...]:
    """Valid roles: each std role at most once, distinct dirs, any order."""
    std = draw(st.lists(st.sampled_from(STD_ROLES), unique=True))
    dirs = draw(st.lists(paths.map(lambda p: "dir:" + p), unique=True, max_size=3))
    return tuple(draw(st.permutations(std + dirs)))


link = {
    "library_path": tuples(paths),
    "preload": tuples(paths),
    "bind_now": st.booleans(),
    "limits": limits,
    "fd_roles": fd_roles(),
    "request_id": ids,
}
requests = st.one_of(
    st.builds(
        Run,
        program=paths,
        args=tuples(text),
        env=tuples(st.tuples(env_names, text)),
        cwd=st.just("") | paths.map(lambda p: "/" + p),
        **link,
    ),
    st.builds(Dlopen, library=paths, symbol=paths, args=tuples(numbers), **link),
    st.builds(Preload, libraries=tuples(paths), library_path=tuples(paths), request_id=ids),
    st.builds(Stats, request_id=ids),
    st.builds(Ping, request_id=ids),
    st.builds(Cancel, request_id=ids),
)
responses = st.one_of(
    st.builds(
        RunResult,
        request_id=ids,
        exit_code=st.integers(0, 2**32 - 1),
        timings=st.dictionaries(any_text, durations, max_size=4),
    ),
    st.builds(
        CallResult,
        request_id=ids,
        results=tuples(numbers),
        timings=st.dictionaries(any_text, durations, max_size=4),
    ),
    st.builds(PreloadResult, request_id=ids, loaded=tuples(paths)),
    st.builds(
        StatsResult,
        request_id=ids,
        stats=st.dictionaries(any_text, i64 | st.floats(allow_nan=False) | any_text, max_size=4),
    ),
    st.builds(Pong, request_id=ids, version=st.integers(0, I64_MAX), server=any_text),
    st.builds(
        Error,
        request_id=st.none() | ids,
        kind=st.sampled_from(sorted(EXIT_CODES)),
        message=any_text,
        exit_code=st.integers(1, 255),
    ),
)
messages = requests | responses

# Arbitrary msgpack-representable data, for fuzzing the validators.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_keys = st.text(max_size=6) | st.sampled_from(["memory_bytes", "timeout_ms", "fuel", "stdin"])
objects = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=12,
)


def pack(obj: Any) -> bytes:
    """msgpack the way a conforming peer would (bytes as bin, str as str)."""
    return msgpack.packb(obj, use_bin_type=True)


def decode_map(wire: dict[Any, Any]) -> Message:
    """Decode a hand-built wire map, as if it had arrived in a frame."""
    return decode_message(pack(wire))


def frames_of(decoder: FrameDecoder) -> list[bytes]:
    """Every complete frame the decoder holds."""
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


# --------------------------------------------------------------------------
# Round trips.


@settings(max_examples=300)
@given(messages)
def test_round_trip(msg: Message) -> None:
    frame = encode_message(msg)
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode_message(frame[4:]) == msg
    assert encode_payload(msg) == frame[4:]


@settings(max_examples=150)
@given(requests, responses)
def test_round_trip_through_connections(request: Message, response: Message) -> None:
    client, server = Connection("client"), Connection("server")
    server.receive_data(client.send(request))
    assert server.next_message() == request
    assert server.next_message() is None
    client.receive_data(server.send(response))
    assert client.next_message() == response


_ANSWERS = (RunResult, CallResult, PreloadResult, Error)


@settings(max_examples=200)
@given(responses)
def test_peek_answer_reads_what_a_forwarder_acts_on(msg: Message) -> None:
    payload = encode_payload(msg)
    if not isinstance(msg, _ANSWERS) or msg.request_id is None:
        with pytest.raises(MalformedFrame):
            peek_answer(payload)
        return
    answer = peek_answer(payload)
    assert (answer.type, answer.request_id) == (msg.TYPE, msg.request_id)
    assert answer.exit_code == getattr(msg, "exit_code", 0)
    assert answer.kind == (msg.kind if isinstance(msg, Error) else None)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never used in msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({"v": PROTOCOL_VERSION + 1, "type": "run_result", "request_id": 1}),
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "run", "request_id": 1}),  # a request
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "pong", "request_id": 1}),  # not final
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "run_result", "request_id": "1"}),
        msgpack.packb({"v": PROTOCOL_VERSION, "type": "error"}),  # answers no request
    ],
)
def test_peek_answer_refuses_anything_else(payload: bytes) -> None:
    with pytest.raises(MalformedFrame):
        peek_answer(payload)


@settings(max_examples=100)
@given(requests.filter(lambda m: isinstance(m, Run | Dlopen | Preload)), responses)
def test_an_answer_forwarded_encoded_reaches_the_client_as_sent(
    request: Message, response: Message
) -> None:
    if not isinstance(response, _ANSWERS):
        return
    response = attrs.evolve(response, request_id=request.request_id)
    client, server = Connection("client"), Connection("server")
    server.receive_data(client.send(request))
    assert server.next_message() == request
    client.receive_data(server.send_answer(request.request_id, encode_payload(response)))
    assert client.next_message() == response
    # The request is over for the server: its id may be used again.
    server.receive_data(client.send(request))
    assert server.next_message() == request


def test_send_answer_refuses_a_body_larger_than_a_frame() -> None:
    server = Connection("server", max_frame_size=1024)
    with pytest.raises(FrameTooLarge):
        server.send_answer(1, b"x" * 2000)


def test_nan_survives_round_trip() -> None:
    msg = Dlopen(library="libm.so", symbol="f", args=(math.nan, -math.inf, 1))
    decoded = decode_message(encode_payload(msg))
    assert isinstance(decoded, Dlopen)
    assert math.isnan(decoded.args[0])
    assert decoded.args[1:] == (-math.inf, 1)
    assert type(decoded.args[2]) is int


def test_encoding_writes_every_field() -> None:
    wire = message_to_map(Run(program="hello.wasm"))
    assert wire == {
        "v": PROTOCOL_VERSION,
        "type": "run",
        "program": "hello.wasm",
        "args": [],
        "env": [],
        "cwd": "",
        "library_path": [],
        "preload": [],
        "bind_now": False,
        "limits": {"memory_bytes": None, "timeout_ms": None, "fuel": None},
        "fd_roles": [],
        "request_id": 0,
        "debug": "",
    }


@pytest.mark.parametrize(
    "wire, expected",
    [
        ({"type": "run", "program": "a"}, Run(program="a")),
        ({"type": "dlopen", "library": "l", "symbol": "s"}, Dlopen(library="l", symbol="s")),
        ({"type": "preload", "libraries": ["l"]}, Preload(libraries=("l",))),
        ({"type": "stats"}, Stats()),
        ({"type": "ping"}, Ping()),
        ({"type": "cancel", "request_id": 3}, Cancel(request_id=3)),
        ({"type": "run_result", "exit_code": 0}, RunResult(exit_code=0)),
        ({"type": "call_result", "results": []}, CallResult(results=())),
        ({"type": "preload_result", "loaded": []}, PreloadResult(loaded=())),
        ({"type": "stats_result", "stats": {}}, StatsResult(stats={})),
        ({"type": "pong"}, Pong(version=PROTOCOL_VERSION)),
        ({"type": "error", "kind": "trap", "message": "m"}, Error(kind="trap", message="m")),
        (
            {"type": "run", "program": "a", "limits": {"fuel": 5}},
            Run(program="a", limits=Limits(fuel=5)),
        ),
    ],
)
def test_decoding_needs_only_required_fields(wire: dict[str, Any], expected: Message) -> None:
    assert decode_map({"v": PROTOCOL_VERSION, **wire}) == expected


@pytest.mark.parametrize("kind", sorted(EXIT_CODES))
def test_error_exit_code_defaults_from_kind(kind: str) -> None:
    assert Error(kind=kind, message="m").exit_code == EXIT_CODES[kind]
    assert EXIT_CODES["load"] == 127 and EXIT_CODES["trap"] == 134


def test_messages_are_frozen_hashable_and_accept_lists() -> None:
    run = Run(program="p", args=["p", "x"], env=[["A", "1"]])
    assert run.args == ("p", "x") and run.env == (("A", "1"),)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        run.program = "q"  # type: ignore[misc]
    assert hash(run) == hash(Run(program="p", args=("p", "x"), env=(("A", "1"),)))
    timings = {"run": 1.0}
    result = RunResult(exit_code=0, timings=timings)
    timings["run"] = 2.0
    assert result.timings == {"run": 1.0}  # copied, not aliased
    hash(result)


def test_message_registries() -> None:
    assert set(REQUEST_TYPES) == {"run", "dlopen", "preload", "stats", "ping", "cancel"}
    assert set(RESPONSE_TYPES) == {
        "run_result",
        "call_result",
        "preload_result",
        "stats_result",
        "pong",
        "error",
    }
    assert all(cls.TYPE == name for name, cls in MESSAGE_TYPES.items())


def test_documented_ping_frame() -> None:
    frame = encode_message(Ping(request_id=7))
    assert len(frame) == 30 and frame[:4] == b"\x00\x00\x00\x1a"


def test_error_response_for_protocol_error() -> None:
    err = error_response(MalformedFrame("not msgpack data"))
    assert err == Error(
        request_id=None, kind="protocol", message="malformed_frame: not msgpack data", exit_code=76
    )


# --------------------------------------------------------------------------
# Framing.

SAMPLE = [
    Run(program="a.wasm", args=("a.wasm", "x" * 40), env=(("HOME", "/h"),), fd_roles=("stdout",)),
    Ping(request_id=1),
    Dlopen(library="libg.so", symbol="greet", args=(1, 2.5), request_id=2),
]
SAMPLE_BYTES = b"".join(encode_message(m) for m in SAMPLE)
SAMPLE_FRAMES = [encode_payload(m) for m in SAMPLE]


def test_frames_split_at_every_byte_boundary() -> None:
    for cut in range(len(SAMPLE_BYTES) + 1):
        decoder = FrameDecoder()
        decoder.feed(SAMPLE_BYTES[:cut])
        got = frames_of(decoder)
        decoder.feed(SAMPLE_BYTES[cut:])
        got += frames_of(decoder)
        assert got == SAMPLE_FRAMES, cut
        assert decoder.pending() == 0
        decoder.eof()


def test_frames_fed_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    got = []
    for i in range(len(SAMPLE_BYTES)):
        decoder.feed(SAMPLE_BYTES[i : i + 1])
        got += frames_of(decoder)
        assert decoder.pending() == (i + 1) - sum(len(f) + 4 for f in got)
    assert [decode_message(f) for f in got] == SAMPLE


@settings(max_examples=200)
@given(st.lists(st.integers(0, len(SAMPLE_BYTES)), max_size=8))
def test_frames_with_arbitrary_chunking(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SAMPLE_BYTES)]
    conn = Connection("server")
    got = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        if end > start:  # an empty chunk would mean EOF
            conn.receive_data(SAMPLE_BYTES[start:end])
        while (msg := conn.next_message()) is not None:
            got.append(msg)
    assert got == SAMPLE


def test_oversized_header_rejected_before_body() -> None:
    decoder = FrameDecoder(max_size=100)
    decoder.feed(b"\x00\x00")
    assert decoder.next_frame() is None
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", 101)[2:])  # header complete, no body yet
    assert (info.value.size, info.value.max_size, info.value.code) == (101, 100, "frame_too_large")
    assert decoder.pending() == 4
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_default_max_frame_size() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", 1 << 20))  # exactly the limit: fine, waits for body
    assert decoder.next_frame() is None
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(struct.pack(">I", (1 << 20) + 1))
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_oversized_header_after_a_good_frame() -> None:
    decoder = FrameDecoder(max_size=100)
    decoder.feed(encode_frame(b"\x80") + struct.pack(">I", 1000))
    assert decoder.next_frame() == b"\x80"  # the good frame is not lost
    with pytest.raises(FrameTooLarge):
        decoder.next_frame()


def test_zero_length_frame_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    with pytest.raises(MalformedFrame):
        encode_frame(b"")


def test_encode_frame_refuses_what_the_peer_would_reject() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 101, max_size=100)
    assert encode_frame(b"x" * 100, max_size=100)[:4] == b"\x00\x00\x00\x64"
    with pytest.raises(FrameTooLarge):
        encode_message(Run(program="p", args=("x" * 60000,) * 20))
    with pytest.raises(ValueError):
        FrameDecoder(max_size=0)


def test_eof_inside_a_frame_is_malformed() -> None:
    for cut in (1, 3, 4, len(SAMPLE_BYTES) - 1):
        decoder = FrameDecoder()
        decoder.feed(SAMPLE_BYTES[:cut])
        with pytest.raises(MalformedFrame):
            decoder.eof()


def test_eof_after_whole_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(SAMPLE_BYTES)
    decoder.eof()  # only whole frames buffered: fine, and they can still be taken
    assert frames_of(decoder) == SAMPLE_FRAMES
    decoder.feed(b"")
    with pytest.raises(ProtocolError):
        decoder.feed(b"more")


# --------------------------------------------------------------------------
# Malformed input: every case maps to the right ProtocolError subclass.

PING = {"v": PROTOCOL_VERSION, "type": "ping", "request_id": 1}


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(pack([1, 2]), id="array-not-map"),
        pytest.param(pack("ping"), id="str-not-map"),
        pytest.param(pack(None), id="nil-not-map"),
        pytest.param(pack(PING) + b"\x00", id="trailing-garbage"),
        pytest.param(pack(PING) + pack(PING), id="two-messages-in-one-frame"),
        pytest.param(pack(PING)[:-1], id="truncated"),
        pytest.param(b"\x81\xa4type\xa4pin\xff", id="invalid-utf8"),
        pytest.param(b"\x81\x01\x02", id="int-map-key"),
        pytest.param(b"\x81\x90\x01", id="array-map-key"),
        pytest.param(b"\x91" * 3000 + b"\xc0", id="nested-too-deeply"),
        pytest.param(
            b"\x83" + pack("v") + pack(1) + pack("type") + pack("ping") + pack("v") + pack(1),
            id="duplicate-key",
        ),
        pytest.param(pack({**PING, "x": msgpack.ExtType(5, b"ab")}), id="ext-type"),
        pytest.param(pack(msgpack.ExtType(5, b"ab")), id="ext-top-level"),
        pytest.param(pack({**PING, "x": msgpack.Timestamp(1, 2)}), id="timestamp-in-map"),
        pytest.param(pack({**PING, "x": [msgpack.Timestamp(1, 2)]}), id="timestamp-in-array"),
        pytest.param(pack(msgpack.Timestamp(1, 2)), id="timestamp-top-level"),
    ],
)
def test_malformed_frame(payload: bytes) -> None:
    with pytest.raises(MalformedFrame) as info:
        decode_message(payload)
    assert info.value.code == "malformed_frame"
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("version", [0, 2, -1, 2**64 - 1])
def test_unsupported_version(version: int) -> None:
    with pytest.raises(UnsupportedVersion) as info:
        decode_map({**PING, "v": version})
    assert info.value.version == version


def test_version_checked_before_type() -> None:
    with pytest.raises(UnsupportedVersion):
        decode_map({"v": 2, "type": "from_the_future"})


def test_unknown_message_type() -> None:
    with pytest.raises(UnknownMessageType) as info:
        decode_map({"v": 1, "type": "exec"})
    assert info.value.type_name == "exec"
    assert info.value.code == "unknown_message_type"


def _run(**fields: Any) -> dict[str, Any]:
    """A valid run wire map with some fields replaced."""
    return {"v": 1, "type": "run", "program": "p", **fields}


def _dlopen(**fields: Any) -> dict[str, Any]:
    """A valid dlopen wire map with some fields replaced."""
    return {"v": 1, "type": "dlopen", "library": "l", "symbol": "s", **fields}


LONG_STR = "x" * (MAX_STRING_BYTES + 1)
LONG_PATH = "p" * (MAX_PATH_BYTES + 1)


@pytest.mark.parametrize(
    "wire, field",
    [
        # envelope
        ({"type": "ping"}, "v"),
        ({**PING, "v": True}, "v"),
        ({**PING, "v": "1"}, "v"),
        ({**PING, "v": 1.0}, "v"),
        ({"v": 1}, "type"),
        ({"v": 1, "type": b"ping"}, "type"),
        ({"v": 1, "type": None}, "type"),
        ({**PING, b"request_id": 1}, "b'request_id'"),
        # strictness about fields
        ({**PING, "extra": 1}, "'extra'"),
        (_run(limits={"fuel": 1, "gas": 2}), "limits.'gas'"),
        ({"v": 1, "type": "run"}, "program"),
        ({"v": 1, "type": "dlopen", "library": "l"}, "symbol"),
        ({"v": 1, "type": "cancel"}, "request_id"),
        ({"v": 1, "type": "error", "kind": "load"}, "message"),
        ({"v": 1, "type": "run_result"}, "exit_code"),
        # exact types
        ({**PING, "request_id": True}, "request_id"),
        ({**PING, "request_id": 1.0}, "request_id"),
        ({**PING, "request_id": None}, "request_id"),
        ({**PING, "request_id": -1}, "request_id"),
        ({**PING, "request_id": 2**63}, "request_id"),
        (_run(program=b"p"), "program"),
        (_run(program=["p"]), "program"),
        (_run(args="p"), "args"),
        (_run(args=["a", b"b"]), "args[1]"),
        (_run(args=["a", 1]), "args[1]"),
        (_run(args={"a": "b"}), "args"),
        (_run(bind_now=1), "bind_now"),
        (_run(bind_now=None), "bind_now"),
        (_run(limits=None), "limits"),
        (_run(limits=[1]), "limits"),
        (_run(limits={"fuel": 0}), "limits.fuel"),
        (_run(limits={"memory_bytes": -5}), "limits.memory_bytes"),
        (_run(limits={"timeout_ms": True}), "limits.timeout_ms"),
        (_run(limits={"timeout_ms": 1.5}), "limits.timeout_ms"),
        (_run(limits={"fuel": 2**64 - 1}), "limits.fuel"),
        (_dlopen(args=[2**63]), "args[0]"),
        (_dlopen(args=[True]), "args[0]"),
        (_dlopen(args=["1"]), "args[0]"),
        (_dlopen(args=[None]), "args[0]"),
        (_dlopen(symbol=""), "symbol"),
        ({"v": 1, "type": "call_result", "results": [1, [2]]}, "results[1]"),
        ({"v": 1, "type": "run_result", "exit_code": 0, "timings": {"run": 1}}, "timings['run']"),
        (
            {"v": 1, "type": "run_result", "exit_code": 0, "timings": {"run": -1.0}},
            "timings['run']",
        ),
        (
            {"v": 1, "type": "run_result", "exit_code": 0, "timings": {"run": float("nan")}},
            "timings['run']",
        ),
        ({"v": 1, "type": "run_result", "exit_code": 0, "timings": [1.0]}, "timings"),
        ({"v": 1, "type": "run_result", "exit_code": 0, "timings": {b"k": 1.0}}, "timings key"),
        ({"v": 1, "type": "run_result", "exit_code": -1}, "exit_code"),
        ({"v": 1, "type": "run_result", "exit_code": 2**32}, "exit_code"),
        ({"v": 1, "type": "stats_result", "stats": {"a": [1]}}, "stats['a']"),
        ({"v": 1, "type": "stats_result", "stats": {"a": None}}, "stats['a']"),
        ({"v": 1, "type": "stats_result", "stats": {"a": True}}, "stats['a']"),
        ({"v": 1, "type": "error", "kind": "oops", "message": "m"}, "kind"),
        ({"v": 1, "type": "error", "kind": ["load"], "message": "m"}, "kind"),
        ({"v": 1, "type": "error", "kind": "load", "message": "m", "exit_code": 0}, "exit_code"),
        ({"v": 1, "type": "error", "kind": "load", "message": "m", "exit_code": 256}, "exit_code"),
        ({"v": 1, "type": "error", "kind": "load", "message": b"m"}, "message"),
        ({"v": 1, "type": "pong", "server": None}, "server"),
        ({"v": 1, "type": "preload", "libraries": [""]}, "libraries[0]"),
        # environment
        (_run(env={"A": "1"}), "env"),
        (_run(env=[["A"]]), "env[0]"),
        (_run(env=[["A", "1", "2"]]), "env[0]"),
        (_run(env=["A=1"]), "env[0]"),
        (_run(env=[["A=B", "1"]]), "env[0].name"),
        (_run(env=[["", "1"]]), "env[0].name"),
        (_run(env=[["A", 1]]), "env[0].value"),
        (_run(env=[["A", "x\0y"]]), "env[0].value"),
        # C strings and paths
        (_run(args=["a\0b"]), "args[0]"),
        (_run(program=""), "program"),
        (_run(program="a\0b"), "program"),
        (_run(cwd="relative/dir"), "cwd"),
        (_run(library_path=[""]), "library_path[0]"),
        # sizes
        (_run(args=[""] * (MAX_ITEMS + 1)), "args"),
        (_run(env=[["A", ""]] * (MAX_ITEMS + 1)), "env"),
        (_run(args=[LONG_STR]), "args[0]"),
        (_run(args=["é" * (MAX_STRING_BYTES // 2 + 1)]), "args[0]"),  # bytes, not chars
        (_run(program=LONG_PATH), "program"),
        (_run(preload=[LONG_PATH]), "preload[0]"),
        (_dlopen(symbol=LONG_STR), "symbol"),
        (_dlopen(args=[0] * (MAX_ITEMS + 1)), "args"),
        ({"v": 1, "type": "error", "kind": "load", "message": LONG_STR}, "message"),
        # fd roles
        (_run(fd_roles=["stdin", "stdin"]), "fd_roles[1]"),
        (_run(fd_roles=["program", "stdout", "program"]), "fd_roles[2]"),
        (_run(fd_roles=["dir:/a", "dir:/a"]), "fd_roles[1]"),
        (_run(fd_roles=["dir:"]), "fd_roles[0] (guest path)"),
        (_run(fd_roles=["dir:" + LONG_PATH]), "fd_roles[0] (guest path)"),
        (_run(fd_roles=["stdio"]), "fd_roles[0]"),
        (_run(fd_roles=["STDIN"]), "fd_roles[0]"),
        (_run(fd_roles=[0]), "fd_roles[0]"),
        (_run(fd_roles="stdin"), "fd_roles"),
        (_dlopen(fd_roles=[f"dir:/d{i}" for i in range(MAX_FDS + 1)]), "fd_roles"),
    ],
)
def test_invalid_field(wire: dict[Any, Any], field: str) -> None:
    with pytest.raises(InvalidField) as info:
        decode_map(wire)
    assert info.value.field == field
    assert info.value.code == "invalid_field"
    message = str(info.value)
    assert field in message and "\n" not in message and len(message) < 500


@pytest.mark.parametrize(
    "wire",
    [
        _run(args=[""] * MAX_ITEMS),
        _run(args=["x" * MAX_STRING_BYTES]),
        _run(program="p" * MAX_PATH_BYTES),
        _run(cwd="/"),
        _run(fd_roles=[*STD_ROLES, "dir:/", "dir:."]),
        _dlopen(args=[I64_MIN, I64_MAX, 0.5]),
        _dlopen(fd_roles=[f"dir:/d{i}" for i in range(MAX_FDS)]),
        {"v": 1, "type": "error", "request_id": None, "kind": "internal", "message": "a\nb"},
        {"v": 1, "type": "stats_result", "stats": {"": "", "n": -1, "f": float("inf")}},
    ],
)
def test_values_at_the_limits_are_accepted(wire: dict[str, Any]) -> None:
    msg = decode_map(wire)
    assert decode_message(encode_payload(msg)) == msg


@pytest.mark.parametrize(
    "build",
    [
        lambda: Run(program=""),
        lambda: Run(program="p", args=(1,)),
        lambda: Run(program="p", args=("\udc80",)),  # lone surrogate (os.fsdecode)
        lambda: Run(program="p", limits=Limits(fuel=0)),
        lambda: Run(program="p", limits={"fuel": 1}),
        lambda: Run(program="p", fd_roles=("stdin", "stdin")),
        lambda: Run(program="p", request_id=2**100),
        lambda: Dlopen(library="l", symbol="s", args=(False,)),
        lambda: Cancel(request_id=True),
        lambda: Error(kind="bogus", message="m"),
        lambda: Error(kind=[], message="m"),
        lambda: RunResult(exit_code=0, timings={"t": 1}),
    ],
)
def test_constructors_validate(build: Any) -> None:
    with pytest.raises(InvalidField):
        build()


# --------------------------------------------------------------------------
# Fuzzing: nothing but ProtocolError escapes, whatever the input.


def _decode_all(data: bytes, max_size: int) -> None:
    """Run bytes through the whole receive path; only ProtocolError may escape."""
    decoder = FrameDecoder(max_size)
    try:
        decoder.feed(data)
        while (frame := decoder.next_frame()) is not None:
            decode_message(frame)
        decoder.eof()
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _decode_all(data, 256)
    try:
        decode_message(data)
    except ProtocolError:
        pass


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=200))
def test_fuzz_arbitrary_frame_bodies(body: bytes) -> None:
    # A valid header, so the fuzz reaches msgpack rather than dying in framing.
    _decode_all(encode_frame(body), 1 << 20)


@settings(max_examples=300)
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.data(),
)
def test_fuzz_arbitrary_msgpack_fields(type_name: str, data: st.DataObject) -> None:
    names = [f.name for f in attrs.fields(MESSAGE_TYPES[type_name])]
    fields = data.draw(st.dictionaries(st.sampled_from([*names, "x"]) | _keys, objects, max_size=6))
    payload = pack({**fields, "v": PROTOCOL_VERSION, "type": type_name})
    try:
        msg = decode_message(payload)
    except ProtocolError:
        return
    _assert_stable(msg)


@settings(max_examples=300)
@given(messages, st.data())
def test_fuzz_one_field_of_a_valid_message(msg: Message, data: st.DataObject) -> None:
    wire = message_to_map(msg)
    key = data.draw(st.sampled_from(sorted(wire)))
    wire[key] = data.draw(objects)
    try:
        decoded = decode_map(wire)
    except ProtocolError:
        return
    _assert_stable(decoded)


@settings(max_examples=200)
@given(messages, st.integers(0, 400), st.binary(min_size=1, max_size=4))
def test_fuzz_corrupted_valid_frames(msg: Message, position: int, junk: bytes) -> None:
    frame = bytearray(encode_message(msg))
    position %= len(frame)
    frame[position : position + len(junk)] = junk
    _decode_all(bytes(frame), 1 << 20)


@settings(max_examples=200)
@given(st.sampled_from(["server", "client"]), st.lists(st.binary(max_size=40), max_size=6))
def test_fuzz_connection(role: str, chunks: list[bytes]) -> None:
    conn = Connection(role, max_frame_size=1024)
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while conn.next_message() is not None:
                pass
    except ProtocolError:
        assert conn.state is ConnectionState.ERROR


def _assert_stable(msg: Message) -> None:
    """Whatever decodes re-encodes to bytes that decode to the same bytes
    again (compared as bytes because NaN != NaN)."""
    payload = encode_payload(msg)
    assert encode_payload(decode_message(payload)) == payload


# --------------------------------------------------------------------------
# Connection: direction, EOF and the error state.


@pytest.mark.parametrize("request_msg", [Run(program="p"), Ping(), Cancel(request_id=1)])
def test_client_cannot_receive_requests(request_msg: Message) -> None:
    client = Connection("client")
    client.receive_data(encode_message(request_msg))
    with pytest.raises(UnexpectedMessage, match="unexpected message type for this side"):
        client.next_message()
    assert client.state is ConnectionState.ERROR


@pytest.mark.parametrize(
    "response", [Pong(), RunResult(exit_code=0), Error(kind="trap", message="")]
)
def test_server_cannot_receive_responses(response: Message) -> None:
    server = Connection("server")
    server.receive_data(encode_message(response))
    with pytest.raises(UnexpectedMessage, match="unexpected message type for this side"):
        server.next_message()


def test_sides_cannot_send_the_other_sides_messages() -> None:
    with pytest.raises(UnexpectedMessage):
        Connection("server").send(Ping())
    with pytest.raises(UnexpectedMessage):
        Connection("client").send(Pong())
    with pytest.raises(ValueError):
        Connection("peer")


def test_error_state_is_sticky() -> None:
    server = Connection("server")
    server.receive_data(encode_message(Ping(request_id=1)) + encode_frame(b"\xc1"))
    assert server.next_message() == Ping(request_id=1)
    with pytest.raises(MalformedFrame) as info:
        server.next_message()
    assert server.state is ConnectionState.ERROR and server.error is info.value
    for call in (
        server.next_message,
        lambda: server.receive_data(encode_message(Ping())),
        lambda: server.receive_data(b""),
        lambda: server.send(Pong()),
    ):
        with pytest.raises(ConnectionBroken) as broken:
            call()
        assert broken.value.cause is info.value
    # The server can still tell the client why, bypassing the connection.
    client = Connection("client")
    client.receive_data(encode_message(error_response(info.value)))
    reply = client.next_message()
    assert isinstance(reply, Error) and reply.kind == "protocol" and reply.request_id is None


def test_oversized_frame_breaks_the_connection_at_once() -> None:
    server = Connection("server", max_frame_size=64)
    with pytest.raises(FrameTooLarge):
        server.receive_data(struct.pack(">I", 65))
    with pytest.raises(ConnectionBroken):
        server.next_message()


def test_failed_send_breaks_the_connection() -> None:
    client = Connection("client", max_frame_size=64)
    with pytest.raises(FrameTooLarge):
        client.send(Run(program="p" * 100))
    with pytest.raises(ConnectionBroken):
        client.send(Ping())


def test_clean_eof() -> None:
    server = Connection("server")
    server.receive_data(SAMPLE_BYTES)
    server.receive_data(b"")
    assert [server.next_message() for _ in SAMPLE] == SAMPLE
    assert server.state is ConnectionState.OPEN
    assert server.next_message() is None
    assert server.state is ConnectionState.CLOSED
    assert server.next_message() is None
    server.receive_data(b"")  # repeated EOF is harmless
    assert server.send(Pong()) == encode_message(Pong())  # the reply can still go out


def test_eof_mid_frame_after_complete_messages() -> None:
    server = Connection("server")
    server.receive_data(SAMPLE_BYTES[: len(encode_message(SAMPLE[0])) + 5])
    server.receive_data(b"")
    assert server.next_message() == SAMPLE[0]  # complete messages come first
    with pytest.raises(MalformedFrame):
        server.next_message()
    assert server.state is ConnectionState.ERROR


def test_data_after_eof() -> None:
    server = Connection("server")
    server.receive_data(b"")
    with pytest.raises(ProtocolError):
        server.receive_data(encode_message(Ping()))
    assert server.state is ConnectionState.ERROR
