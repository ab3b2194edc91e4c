"""Soak: a real wasmrund under a mix of good and bad clients for a while,
then whether every answer was right and whether anything grew.

    python bench/soak.py [--clients 8] [--seconds 120] [--idle 50]

N client threads, each with its own connections, loop over a weighted mix:

* ``hello``: hello world, output and status checked;
* ``dlopen``: a program that dlopens, dlsyms and dlcloses plugins;
* ``trap``: a guest trap (answer: trap, 134);
* ``timeout``: an endless loop with a 100 ms timeout (answer: 124);
* ``killed``: a client that starts a run and vanishes mid-run;
* ``garbage``: random bytes instead of a frame (answer: protocol error);
* ``slow``: 400 KiB of output into a pipe the client reads slowly;
* ``sigpipe``: an endless writer whose reader goes away after one read
  (answer: signal, 141, as a native program dies of SIGPIPE);
* ``compile``: a program no cache holds yet (a new one each time), so a
  compiler process compiles it (answer: exit 0);
* ``bomb``: a 7 MB module that needs more than the soak's ``compile_memory``
  (256 MiB) to compile (answer: load error, "cannot compile").

Beside them ``--idle`` connections stay open and silent all along, and
``--half`` connections each send half a frame and go silent (the daemon
must cut them after ``frame_timeout``; each is then opened again). The
script prints requests served, wrong answers and failures by kind, and the
daemon's RSS, descriptors and threads (front, zygote, workers) after
warm-up, in the middle and at the end. Not part of the test suite: it runs
for minutes. The figures in docs/benchmarks.md came from it.
"""

from __future__ import annotations

import argparse
import array
import collections
import importlib.util
import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmrun.client import wire  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_daemon", ROOT / "bench" / "daemon.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)  # bench/daemon.py: start_daemon, run_frame
_spec.loader.exec_module(bench)

# The descriptors every run of the soak sends.
_ROLES = ["stdout", "stderr", "program"]

from toolchain.corpus import build_corpus  # noqa: E402
from toolchain.synthetic import straight_line_program  # noqa: E402

MIX = {
    "hello": 40,
    "dlopen": 15,
    "trap": 10,
    "timeout": 8,
    "killed": 7,
    "garbage": 10,
    "slow": 10,
    "sigpipe": 5,
    "compile": 3,
    "bomb": 1,
}
_NEW_PROGRAMS = itertools.count(10_000)  # straight-line programs of these lengths


def start_daemon(directory: Path, corpus: Path, max_requests: int = 500) -> subprocess.Popen:
    config = (
        "idle_timeout = 3600.0\nmax_connections_per_uid = 1000\nqueue_per_uid = 1000\n"
        f"worker_max_requests = {max_requests}\nframe_timeout = 2.0\n"
        f"compile_memory = {256 << 20}\n"
    )
    proc, _ = bench.start_daemon(directory, corpus, os.cpu_count() or 1, config=config)
    return proc


# -- one request ----------------------------------------------------------------------


class Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = wire.FrameReader()

    def send(self, frame: bytes, fds: list[int]) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        self.sock.sendmsg([frame], anc if fds else [])

    def reply(self) -> wire.Reply | None:
        while (payload := self.reader.next_payload()) is None:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.reader.feed(data)
        return wire.parse_reply(payload)

    def close(self) -> None:
        self.sock.close()


def run(
    path: str,
    program: Path,
    args: list[str] = (),  # type: ignore[assignment]
    timeout_ms: int | None = None,
    slow: bool = False,
    hang_up: bool = False,
) -> tuple[wire.Reply | None, bytes]:
    """A run with stdout/stderr into a pipe; (reply, output). ``slow``: the
    pipe is read slowly; ``hang_up``: its reader goes away after one read."""
    conn = Conn(path)
    r, w = os.pipe()
    prog = os.open(program, os.O_RDONLY)
    out = bytearray()

    def drain() -> None:
        nonlocal r
        while True:
            data = os.read(r, 8192)
            if not data:
                return
            out.extend(data)
            if hang_up:
                os.close(r)
                r = -1
                return
            if slow:
                time.sleep(0.002)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        conn.send(bench.run_frame(program, list(args), _ROLES, 1, timeout_ms), [w, w, prog])
        os.close(w)
        w = -1
        reply = conn.reply()
    finally:
        if w >= 0:
            os.close(w)
        os.close(prog)
        conn.close()
        reader.join()
        if r >= 0:
            os.close(r)
    return reply, bytes(out)


# -- the mix -------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served: collections.Counter[str] = collections.Counter()
        self.wrong: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.examples: list[str] = []

    def add(self, kind: str, problem: str | None, failure: str | None = None) -> None:
        with self.lock:
            self.served[kind] += 1
            if failure is not None:
                self.failures[f"{kind}: {failure}"] += 1
            if problem is not None:
                self.wrong[kind] += 1
                if len(self.examples) < 10:
                    self.examples.append(f"{kind}: {problem}")


def scenario(
    kind: str, path: str, corpus: Path, expected: dict[str, tuple[int, bytes]], rng: random.Random
) -> tuple[str | None, str | None]:
    """(problem or None, expected failure kind or None)."""
    if kind in ("hello", "dlopen", "slow"):
        program, args = {
            "hello": ("hello.wasm", []),
            "dlopen": ("dlmain.wasm", []),
            "slow": ("loud.wasm", ["1000"]),
        }[kind]
        reply, out = run(path, corpus / program, args, slow=kind == "slow")
        if reply is None or reply.type != "run_result":
            return f"reply {reply and reply.fields}", None
        if (reply.fields["exit_code"], out) != expected[kind]:
            return f"exit {reply.fields['exit_code']}, {len(out)} bytes of output differ", None
        return None, None
    if kind in ("compile", "bomb"):
        n = next(_NEW_PROGRAMS) if kind == "compile" else 1_000_000
        program = Path(path).parent / f"{kind}-{n}-{threading.get_ident()}.wasm"
        program.write_bytes(straight_line_program(n))
        try:
            reply, _ = run(path, program)
        finally:
            program.unlink()
        if kind == "compile":
            if reply is None or reply.fields.get("exit_code") != 0 or reply.type != "run_result":
                return f"reply {reply and reply.fields}", None
            return None, None
        if reply is None or "cannot compile: the compiler process ran out of memory" not in str(
            reply.fields.get("message")
        ):
            return f"reply {reply and reply.fields}", None
        return None, "cannot compile"
    if kind == "sigpipe":
        reply, _ = run(path, corpus / "yes.wasm", timeout_ms=20_000, hang_up=True)
        if reply is None or reply.fields.get("kind") != "signal":
            return f"reply {reply and reply.fields}", None
        return None, "signal"
    if kind == "trap":
        reply, _ = run(path, corpus / "trap.wasm")
        if reply is None or reply.fields.get("kind") != "trap":
            return f"reply {reply and reply.fields}", None
        return None, "trap"
    if kind == "timeout":
        reply, _ = run(path, corpus / "spin.wasm", timeout_ms=100)
        if reply is None or reply.fields.get("kind") != "timeout":
            return f"reply {reply and reply.fields}", None
        return None, "timeout"
    if kind == "killed":
        conn = Conn(path)
        prog = os.open(corpus / "spin.wasm", os.O_RDONLY)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            conn.send(bench.run_frame(corpus / "spin.wasm", [], _ROLES, 1), [null, null, prog])
            time.sleep(rng.uniform(0.0, 0.02))  # the client vanishes mid-run
        finally:
            os.close(prog)
            os.close(null)
            conn.close()
        return None, "killed"
    if kind == "garbage":
        conn = Conn(path)
        try:
            conn.sock.sendall(rng.randbytes(rng.randint(1, 64)) + b"\xff" * 8)
            conn.sock.shutdown(socket.SHUT_WR)
            reply = conn.reply()
        except OSError:
            reply = None
        finally:
            conn.close()
        if reply is not None and reply.fields.get("kind") not in ("protocol", None):
            return f"reply {reply.fields}", None
        return None, "protocol"
    raise AssertionError(kind)


# -- watching the daemon ---------------------------------------------------------------------


def _status(pid: int) -> tuple[int, int, int]:
    """(RSS KiB, descriptors, threads) of one process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (
        int(fields["VmRSS"].split()[0]),
        len(os.listdir(f"/proc/{pid}/fd")),
        int(fields["Threads"]),
    )


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def snapshot(front: int) -> dict[str, tuple[int, int, int]]:
    out = {"front": _status(front)}
    zygotes = _children(front)
    if zygotes:
        out["zygote"] = _status(zygotes[0])
        children = _children(zygotes[0])
        compilers = [c for c in children if bench._is_compiler(c)]
        workers = [w for w in children if w not in compilers]
        for name, pids in ((f"workers ({len(workers)})", workers), ("compilers", compilers)):
            total = [0, 0, 0]
            for pid in pids:
                try:
                    for i, v in enumerate(_status(pid)):
                        total[i] += v
                except (OSError, KeyError):
                    pass
            out[name] = (total[0], total[1], total[2])
    return out


def show(label: str, snap: dict[str, tuple[int, int, int]]) -> None:
    parts = [f"{k}: {v[0] / 1024:.1f} MiB, {v[1]} fds, {v[2]} threads" for k, v in snap.items()]
    print(f"   {label:<7} " + "; ".join(parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--idle", type=int, default=50)
    ap.add_argument("--half", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--worker-max-requests",
        type=int,
        default=500,
        help="runs before a worker is replaced (large: watch the workers grow, or not)",
    )
    ns = ap.parse_args()
    corpus = build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    directory = Path(tempfile.mkdtemp(prefix="wrsoak-", dir="/tmp"))
    proc = start_daemon(directory, corpus, ns.worker_max_requests)
    path = str(directory / "d.sock")
    try:
        expected: dict[str, tuple[int, bytes]] = {}
        for kind, (program, args) in {
            "hello": ("hello.wasm", []),
            "dlopen": ("dlmain.wasm", []),
            "slow": ("loud.wasm", ["1000"]),
        }.items():
            reply, out = run(path, corpus / program, args)
            assert reply is not None and reply.type == "run_result", reply
            expected[kind] = (reply.fields["exit_code"], out)
        idle = [Conn(path) for _ in range(ns.idle)]
        tally = Tally()
        stop = threading.Event()
        weights = list(MIX.items())

        def client(i: int) -> None:
            rng = random.Random(ns.seed * 1000 + i)
            while not stop.is_set():
                kind = rng.choices([k for k, _ in weights], [w for _, w in weights])[0]
                try:
                    problem, failure = scenario(kind, path, corpus, expected, rng)
                except Exception as e:  # a dropped connection, a refused connect...
                    problem, failure = f"{type(e).__name__}: {e}", None
                tally.add(kind, problem, failure)

        load = os.getloadavg()[0]
        cut = [0]

        def half_frames() -> None:
            """Connections stuck in the middle of a frame, renewed as the
            daemon cuts them."""
            frame = bench.run_frame(corpus / "hello.wasm", [], _ROLES, 1)
            conns: list[Conn] = []
            while not stop.is_set():
                while len(conns) < ns.half:
                    c = Conn(path)
                    c.sock.sendall(frame[: len(frame) // 2])
                    c.sock.settimeout(0.05)
                    conns.append(c)
                for c in list(conns):
                    try:
                        c.sock.recv(65536)  # the daemon's protocol error, or its close
                    except TimeoutError:
                        continue
                    except OSError:
                        pass
                    c.close()  # the daemon answered (protocol error) or closed
                    conns.remove(c)
                    cut[0] += 1
            for c in conns:
                c.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(ns.clients)]
        threads.append(threading.Thread(target=half_frames))
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(min(10.0, ns.seconds / 6))  # warm-up: workers spawned, caches filled
        start = snapshot(proc.pid)
        time.sleep(max(0.0, ns.seconds / 2 - (time.monotonic() - t0)))
        middle = snapshot(proc.pid)
        time.sleep(max(0.0, ns.seconds - (time.monotonic() - t0)))
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        end = snapshot(proc.pid)
        still_open = 0
        for c in idle:
            c.sock.setblocking(False)
            try:
                still_open += c.sock.recv(1) == b""
            except BlockingIOError:
                still_open += 1
            c.close()
        served = sum(tally.served.values())
        conn = Conn(path)
        conn.send(wire.simple_request("stats", 1), [])
        stats_reply = conn.reply()
        conn.close()
        stats = stats_reply.fields.get("stats", {}) if stats_reply is not None else {}
        print(
            f"soak: {ns.clients} clients for {elapsed:.0f} s, {ns.idle} idle connections, "
            f"load average {load:.2f} at start, {os.cpu_count()} cores"
        )
        print(f"   requests served: {served} ({served / elapsed:.0f}/s)")
        for kind in MIX:
            print(f"     {kind:<8} {tally.served[kind]}")
        print(f"   wrong answers: {sum(tally.wrong.values())}")
        for example in tally.examples:
            print(f"     {example}")
        print("   failures by kind (expected ones: the mix asks for them):")
        for kind, n in sorted(tally.failures.items()):
            print(f"     {kind:<20} {n}")
        print(
            f"   workers started {stats.get('workers.spawned')}, retired "
            f"{stats.get('workers.retired')}; killed {stats.get('daemon.killed')} "
            f"(runs that did not stop in time), died {stats.get('daemon.worker_deaths')}"
        )
        print(
            f"   compiler processes started {stats.get('compile.processes_started')}; "
            f"compiled {stats.get('compile.compiled')}, died {stats.get('compile.deaths')} "
            f"(bombs), timed out {stats.get('compile.timeouts')}; code kept "
            f"{stats.get('code.entries')} entries, {stats.get('code.bytes', 0) / 2**20:.1f} MiB"
        )
        print(f"   idle connections still open at the end: {still_open} of {ns.idle}")
        print(f"   half-sent frames cut by the daemon: {cut[0]} ({ns.half} kept in flight)")
        print("   daemon (RSS, descriptors, threads):")
        show("start", start)
        show("middle", middle)
        show("end", end)
        workers = [k for k in middle if k.startswith("workers") and k in end]
        for name in ("front", "zygote", *workers):
            if name in middle and name in end:
                rss = (end[name][0] - middle[name][0]) / middle[name][0] * 100
                fds = (end[name][1] - middle[name][1]) / middle[name][1] * 100
                print(f"   {name}: middle to end RSS {rss:+.1f}%, descriptors {fds:+.1f}%")
        if tally.wrong:  # what the daemon said about it
            log = (directory / "wasmrund.log").read_text(errors="replace").splitlines()
            # Not the access lines, nor what each expected compiler bomb says.
            said = [
                line
                for line in log
                if "wasmrund: uid=" not in line
                and "memory allocation of" not in line
                and "RUST_BACKTRACE" not in line
                and "was killed by SIGABRT" not in line
            ]
            print("   the daemon's log about it (last 40 such lines):")
            for line in said[-40:]:
                print(f"     {line}")
        return 1 if tally.wrong else 0
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
