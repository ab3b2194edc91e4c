"""The thin client: its attrs-free wire encoder and decoder, checked against
the protocol package (the reference), message display, and running in
process when no daemon answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wasmrun.client import wire
from wasmrun.client.cli import _Display, build_parser
from wasmrun.client.options import quick_parse
from wasmrun.protocol import (
    CallResult,
    Cancel,
    Dlopen,
    Error,
    FrameDecoder,
    Limits,
    Ping,
    Pong,
    ProtocolError,
    Run,
    RunResult,
    Stats,
    StatsResult,
    decode_message,
    encode_message,
)

TIMEOUT = 60


def decode_frame(frame: bytes):
    """The reference decoder's view of one whole frame."""
    decoder = FrameDecoder()
    decoder.feed(frame)
    payload = decoder.next_frame()
    assert payload is not None and decoder.pending() == 0
    return decode_message(payload)


RUN_FIELDS = dict(
    program="/abs/prog.wasm",
    args=["prog.wasm", "a b", ""],
    env=[("GREETING", "hi"), ("EMPTY", "")],
    cwd="/abs",
    library_path=["/abs/lib"],
    preload=["libx.so", "/abs/liby.so"],
    bind_now=True,
    memory_bytes=1 << 20,
    timeout_ms=1500,
    fd_roles=["stdin", "stdout", "stderr", "program", "dir:/data"],
    request_id=1,
)


def test_run_request_matches_the_protocol():
    msg = decode_frame(wire.run_request(**RUN_FIELDS))
    assert msg == Run(
        program="/abs/prog.wasm",
        args=("prog.wasm", "a b", ""),
        env=(("GREETING", "hi"), ("EMPTY", "")),
        cwd="/abs",
        library_path=("/abs/lib",),
        preload=("libx.so", "/abs/liby.so"),
        bind_now=True,
        limits=Limits(memory_bytes=1 << 20, timeout_ms=1500),
        fd_roles=("stdin", "stdout", "stderr", "program", "dir:/data"),
        request_id=1,
    )
    # Every field is written, as the protocol asks of senders.
    assert wire.run_request(**RUN_FIELDS) == encode_message(msg)


def test_dlopen_and_small_requests_match_the_protocol():
    frame = wire.dlopen_request(
        library="libleft.so",
        symbol="left",
        args=[1, -2, 2.5, (1 << 63) - 1],
        library_path=[],
        preload=[],
        bind_now=False,
        memory_bytes=None,
        timeout_ms=None,
        fd_roles=["stdout"],
        request_id=9,
    )
    assert decode_frame(frame) == Dlopen(
        library="libleft.so",
        symbol="left",
        args=(1, -2, 2.5, (1 << 63) - 1),
        fd_roles=("stdout",),
        request_id=9,
    )
    assert decode_frame(wire.simple_request("cancel", 9)) == Cancel(request_id=9)
    assert decode_frame(wire.simple_request("ping", 2)) == Ping(request_id=2)
    assert decode_frame(wire.simple_request("stats", 3)) == Stats(request_id=3)


text = st.text(st.characters(codec="utf-8"), max_size=20)


@settings(max_examples=200, deadline=None)
@given(
    args=st.lists(text, max_size=5),
    env=st.lists(st.tuples(text, text), max_size=4),
    program=text,
    guest=text,
    timeout_ms=st.one_of(st.none(), st.integers(-5, 1 << 64)),
)
def test_the_client_only_sends_what_the_daemon_accepts(args, env, program, guest, timeout_ms):
    """Either the client's check refuses a request (it then runs in
    process), or the reference decoder accepts it unchanged."""
    fields = {
        **RUN_FIELDS,
        "program": program,
        "args": args,
        "env": env,
        "timeout_ms": timeout_ms,
        "fd_roles": ["stdin", f"dir:{guest}"],
    }
    try:
        frame = wire.run_request(**fields)
    except wire.WireError:
        with pytest.raises((ProtocolError, TypeError, ValueError)):
            Run(
                program=program,
                args=args,
                env=env,
                limits=Limits(timeout_ms=timeout_ms),
                fd_roles=("stdin", f"dir:{guest}"),
            )
        return
    msg = decode_frame(frame)
    assert isinstance(msg, Run)
    assert list(msg.args) == args and [list(p) for p in msg.env] == [list(p) for p in env]
    assert msg.program == program and msg.limits.timeout_ms == timeout_ms


def test_requests_the_daemon_would_refuse_are_refused_here():
    for change in (
        {"env": [("A=B", "x")]},
        {"args": ["nul\0byte"]},
        {"fd_roles": ["dir:/data", "dir:/data"]},
        {"fd_roles": ["dir:"]},
        {"library_path": ["x" * 5000]},
        {"args": ["\udcff"]},  # undecodable argv byte (surrogateescape)
        {"timeout_ms": 0},
        {"env": [("N", "v")] * 5000},
    ):
        with pytest.raises(wire.WireError):
            wire.run_request(**{**RUN_FIELDS, **change})


@pytest.mark.parametrize(
    "msg",
    [
        RunResult(request_id=1, exit_code=42, timings={"run": 0.5}),
        RunResult(request_id=1, exit_code=(1 << 32) - 1),
        CallResult(request_id=1, results=(10, -1, 2.5, float("inf"))),
        Error(request_id=1, kind="load", message="libx.so: cannot open shared object file"),
        Error(request_id=None, kind="protocol", message="malformed_frame: x"),
        Error(request_id=1, kind="trap", message="wasm trap: x\nwasm backtrace:", exit_code=3),
        Pong(request_id=2, version=1, server="wasmrund"),
        StatsResult(request_id=3, stats={"a": 1, "b": 2.5, "c": "x"}),
    ],
)
def test_parse_reply_reads_protocol_responses(msg):
    reader = wire.FrameReader()
    data = encode_message(msg)
    for i in range(0, len(data), 3):  # in pieces, as a socket may deliver it
        reader.feed(data[i : i + 3])
    reply = wire.parse_reply(reader.next_payload())
    assert reader.next_payload() is None and reader.pending == 0
    assert reply.type == msg.TYPE
    assert reply.request_id == msg.request_id
    for name in ("exit_code", "results", "message", "kind"):
        if hasattr(msg, name):
            expected = getattr(msg, name)
            assert reply.fields[name] == (list(expected) if name == "results" else expected)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"v": 2, "type": "pong"}, "unsupported protocol version"),
        ({"v": 1, "type": "run"}, "unexpected message type"),
        ({"v": 1, "type": "run_result", "exit_code": -1}, "invalid field exit_code"),
        ({"v": 1, "type": "error", "kind": "nope", "message": ""}, "invalid field kind"),
        ({"v": 1, "type": "call_result", "results": ["x"]}, "invalid field results"),
        ([1, 2], "not a map"),
    ],
)
def test_parse_reply_rejects_nonsense(body, problem):
    with pytest.raises(wire.WireError, match=problem):
        wire.parse_reply(msgpack.packb(body))
    with pytest.raises(wire.WireError, match="malformed"):
        wire.parse_reply(b"\xc1")


def test_error_exit_code_defaults_by_kind():
    reply = wire.parse_reply(
        msgpack.packb({"v": 1, "type": "error", "kind": "timeout", "message": ""})
    )
    assert reply.fields["exit_code"] == 124
    assert reply.request_id == 0


def test_display_restores_paths_as_typed(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    display = _Display()
    assert display.absolute("prog.wasm") == str(tmp_path / "prog.wasm")
    assert display.absolute(".") == str(tmp_path)
    assert display.absolute("/abs/already") == "/abs/already"
    message = (
        f"{tmp_path}/libc.so: bad (needed by prog.wasm; searched {tmp_path}); "
        f"{tmp_path}/prog.wasm failed; {tmp_path}x is another file"
    )
    assert display(message) == (
        f"./libc.so: bad (needed by prog.wasm; searched .); prog.wasm failed; {tmp_path}x is "
        "another file"
    )


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "wasmrun.client.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=TIMEOUT,
    )


def test_without_a_daemon_the_client_runs_in_process(corpus: Path, tmp_path: Path):
    p = cli(
        "run",
        "--socket",
        str(tmp_path / "none.sock"),
        "-L",
        str(corpus),
        str(corpus / "hello.wasm"),
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, "hello, world\n", "")
    stale = tmp_path / "stale.sock"  # a socket file nobody listens on
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    p = cli("call", "--socket", str(stale), "-L", str(corpus), "libleft.so", "left")
    assert (p.returncode, p.stdout.splitlines()[-1]) == (0, "10"), p.stderr


def test_call_parses_numbers_and_reports_errors_in_process(corpus: Path):
    p = cli("call", "--no-daemon", "-L", str(corpus), "libleft.so", "left", "1", "0x10", "2.5")
    # left() takes no arguments: wasmtime refuses the call, reported as a trap
    assert p.returncode == 134
    assert p.stderr == "wasm trap: too many parameters provided: given 3, expected 0\n"
    p = cli("call", "--no-daemon", "-L", str(corpus), "libleft.so", "left", "notanumber")
    assert p.returncode == 2 and "not a number: 'notanumber'" in p.stderr


def test_timeout_in_process(corpus: Path):
    p = cli("run", "--no-daemon", "--timeout", "0.2", "-L", str(corpus), str(corpus / "spin.wasm"))
    assert (p.returncode, p.stdout, p.stderr) == (
        124,
        "spinning\n",
        "wasmrun: run timed out after 0.2 s\n",
    )
    p = cli("run", "--no-daemon", "--timeout", "-1", str(corpus / "spin.wasm"))
    assert p.returncode == 2 and "must be positive" in p.stderr


COMMON = [
    ["run", "prog.wasm"],
    ["run", "prog.wasm", "a", "--b", "-L", "x", "--", "-"],
    [
        "run",
        "-L",
        "a",
        "--library-path",
        "b",
        "--env",
        "X=1",
        "--env",
        "Y",
        "--dir",
        "h::/g",
        "--dir",
        "h2",
        "--bind-now",
        "--preload",
        "libx.so",
        "--max-memory",
        "16M",
        "--stack-size",
        "2m",
        "--timeout",
        "1.5",
        "--no-daemon",
        "--socket",
        "/s",
        "--cache-dir",
        "c",
        "p.wasm",
    ],
    ["run", "--env=X=1=2", "--library-path=lib", "--timeout=3", "p"],
    ["call", "lib.so", "sym"],
    ["call", "-L", "d", "--bind-now", "lib.so", "sym", "1", "0x10", "2.5", "inf", "1e3"],
]
UNUSUAL = [
    ["run", "--no-d", "p"],  # an abbreviation
    ["run", "-Llib", "p"],
    ["run", "--", "p", "x"],
    ["run", "--no-daemon=1", "p"],
    ["run", "--max-memory", "lots", "p"],
    ["run", "--timeout", "-1", "p"],
    ["run"],
    ["run", "--help"],
    ["call", "lib", "sym", "-1"],
    ["call", "lib", "sym", "1", "--timeout", "2"],
    ["call", "lib"],
    ["ldd", "x"],
]


def argparse_result(args: list[str]):
    try:
        return vars(build_parser(args[0]).parse_args(args))
    except SystemExit as e:
        return f"exit {e.code}"


@pytest.mark.parametrize("args", COMMON, ids=lambda a: " ".join(a)[:40])
def test_quick_parser_agrees_with_argparse(args: list[str]):
    quick = quick_parse(args)
    assert quick is not None, "a common command line should not need argparse"
    assert vars(quick) == argparse_result(args)


@pytest.mark.parametrize("args", UNUSUAL, ids=lambda a: " ".join(a)[:40])
def test_quick_parser_leaves_the_rest_to_argparse(args: list[str], capsys):
    assert quick_parse(args) is None
    argparse_result(args)  # whatever argparse says: a namespace or its usage error
