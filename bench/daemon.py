"""Benchmark: the loader daemon against running in process.

Starts a real ``wasmrund`` (fresh temporary cache, ``--preload libc.so``) and
prints:

0. the first request of a new uid: the zygote forks a worker for it;
1. request latency: a warm hello-world ``run`` through the socket from one
   persistent client connection (the client's own wire encoder, with the
   program and stdout descriptors passed as the real client does), and the
   CPU time the daemon's processes (front, zygote, workers) spend on each;
2. whole ``wasmrun`` processes (the installed console script): through the
   daemon against ``--no-daemon`` with a warm disk cache, next to the bare
   interpreter's start-up; optionally (``--regular-install``) also the
   console script of a regular, non-editable install in a scratch venv
   (an editable install adds an import hook to every interpreter start-up);
3. throughput with 1, 2, 4 and 16 concurrent clients (threads, one
   persistent connection each) for a few seconds each, with one worker and
   with one per core: for hello world (the daemon's own per-request cost)
   and for a compute-bound guest (5 million calls from a program into a
   library: guests run in parallel on the workers);
4. memory: the PSS of the daemon with four workers against one process
   that links and runs the same programs itself.

    python bench/daemon.py [--requests 500] [--processes 30] [--seconds 3]
                           [--regular-install]

This is a script that prints figures, not a timed test: numbers depend on
the machine. The figures in docs/benchmarks.md were produced by it.
"""

from __future__ import annotations

import argparse
import array
import compileall
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wasmrun.client import wire  # noqa: E402
from wasmrun.daemon.zygote import COMPILER_NAME  # noqa: E402

from toolchain.corpus import build_corpus  # noqa: E402

VENV_BIN = Path(sys.executable).parent


def start_daemon(
    directory: Path,
    corpus: Path,
    concurrency: int,
    pythonpath: str | None = None,
    config: str | None = None,
) -> tuple[subprocess.Popen, float]:
    """wasmrund on a fresh cache (with ``config`` as its configuration
    file's text); (process, seconds until READY=1)."""
    extra = []
    if config is not None:
        (directory / "wasmrund.toml").write_text(config)
        extra = ["--config", str(directory / "wasmrund.toml")]
    for name in ("notify", "d.sock"):
        try:
            (directory / name).unlink()
        except FileNotFoundError:
            pass
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(directory / "notify"))
    notify.settimeout(120)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wasmrun.daemon",
            "--socket",
            str(directory / "d.sock"),
            "--cache-dir",
            str(directory / "cache"),
            "-L",
            str(corpus),
            "--preload",
            "libc.so",
            "--concurrency",
            str(concurrency),
            *extra,
        ],
        env={
            **os.environ,
            "NOTIFY_SOCKET": str(directory / "notify"),
            **({"PYTHONPATH": pythonpath} if pythonpath else {}),
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "wasmrund.log", "wb"),  # noqa: SIM115 - the child's
    )
    with notify:
        while b"READY=1" not in notify.recv(4096):
            pass
    return proc, time.perf_counter() - t0


def run_frame(
    program: Path, args: list[str], roles: list[str], rid: int, timeout_ms: int | None = None
) -> bytes:
    """A run request for ``program`` (argv[0] its name, then ``args``) with
    nothing else asked for, its descriptors sent in the order of ``roles``."""
    return wire.run_request(
        program=str(program),
        args=[program.name, *args],
        env=[],
        cwd="/",
        library_path=[],
        preload=[],
        bind_now=False,
        memory_bytes=None,
        timeout_ms=timeout_ms,
        fd_roles=roles,
        request_id=rid,
    )


class Client:
    """A persistent connection sending hello-world runs, as wasmrun does."""

    def __init__(
        self, path: Path, program: Path, args: tuple[str, ...] = (), legacy: bool = False
    ) -> None:
        self.legacy = legacy  # an earlier daemon, which knows no "debug" field
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.program = program
        self.args = [program.name, *args]
        self.prog_fd = os.open(program, os.O_RDONLY)
        self.out_fd = os.open(os.devnull, os.O_WRONLY)
        self.reader = wire.FrameReader()
        self.next_id = 1
        self.last_timings: dict[str, float] = {}

    def run(self) -> float:
        """One request; its round-trip seconds."""
        rid = self.next_id
        self.next_id += 1
        frame = run_frame(self.program, self.args[1:], ["stdout", "program"], rid)
        if self.legacy:
            body = wire.unpackb(frame[4:])
            frame = wire.frame({k: v for k, v in body.items() if k != "debug"})
        fds = array.array("i", [self.out_fd, self.prog_fd]).tobytes()
        t0 = time.perf_counter()
        self.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        while (payload := self.reader.next_payload()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("daemon closed the connection")
            self.reader.feed(data)
        elapsed = time.perf_counter() - t0
        reply = wire.parse_reply(payload)
        if reply.type != "run_result" or reply.fields["exit_code"] != 0:
            raise SystemExit(f"unexpected reply: {reply}")
        self.last_timings = reply.fields.get("timings", {})
        return elapsed

    def close(self) -> None:
        self.sock.close()
        os.close(self.prog_fd)
        os.close(self.out_fd)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# -- the daemon's processes, from /proc --------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (front, zygote, workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of ``pids`` (those still alive)."""
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cold_worker(sock: Path, program: Path, daemon_pid: int) -> None:
    """The first request of a uid with no worker yet: the zygote forks one.
    Measured after the daemon's first request (whose code the front had to
    compile), by killing the worker: what a new uid sees on a daemon that
    serves others."""
    client = Client(sock, program)
    first = client.run()
    client.run()
    zygote = descendants(daemon_pid)[1]
    times = []
    for _ in range(10):
        for worker in descendants(zygote)[1:]:
            if not _is_compiler(worker):
                os.kill(worker, signal.SIGKILL)
        client.close()
        client = Client(sock, program)
        while True:  # the front notices the death when the worker's socket closes
            try:
                times.append(client.run())
                break
            except SystemExit:  # that request was lost with the worker: again
                client.close()
                client = Client(sock, program)
        warm = client.run()
    client.close()
    print(
        f"0. first request of a new uid (cold worker, median of 10): "
        f"{ms(statistics.median(times))}; the next one {ms(warm)}; "
        f"the daemon's very first request (compiles the program) {ms(first)}"
    )


def latency(sock: Path, program: Path, requests: int, daemon_pid: int) -> None:
    client = Client(sock, program)
    for _ in range(50):  # warm: plan cache, generated modules, thread pool
        client.run()
    pids = descendants(daemon_pid)
    cpu0 = cpu_seconds(pids)
    times = [client.run() for _ in range(requests)]
    cpu = (cpu_seconds(pids) - cpu0) / requests
    splits: dict[str, list[float]] = {}
    for _ in range(50):
        client.run()
        for key, value in client.last_timings.items():
            splits.setdefault(key, []).append(value)
    client.close()
    print(f"1. request latency, warm hello world, one persistent connection ({requests} requests)")
    print(
        f"   median {ms(statistics.median(times))}   p90 {ms(percentile(times, 0.9))}"
        f"   p99 {ms(percentile(times, 0.99))}   min {ms(min(times))}"
    )
    inside = "  ".join(f"{k} {statistics.median(v) * 1e3:.2f}" for k, v in splits.items())
    print(f"   inside the runtime (ms, median): {inside}")
    print(f"   daemon CPU per request (front, zygote and workers): {ms(cpu)}")


def timed(command: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{command} failed ({p.returncode}): {p.stderr.decode()}")
    return elapsed


def processes(
    sock: Path,
    corpus: Path,
    cache: Path,
    repeat: int,
    extra: dict[str, list[str]],
) -> None:
    program = str(corpus / "hello.wasm")
    env = {
        **os.environ,
        "WASMRUN_SOCKET": str(sock),
        "WASMRUN_CACHE_DIR": str(cache),
        "WASMRUN_LIBRARY_PATH": str(corpus),
    }
    commands: dict[str, list[str]] = {
        "python -c pass (interpreter start-up)": [sys.executable, "-c", "pass"],
        "python -I -S -c pass (no site, no venv)": [sys.executable, "-I", "-S", "-c", "pass"],
        "wasmrun run hello.wasm (daemon)": [str(VENV_BIN / "wasmrun"), "run", program],
        "wasmrun run --no-daemon hello.wasm": [
            str(VENV_BIN / "wasmrun"),
            "run",
            "--no-daemon",
            program,
        ],
    }
    for label, command in extra.items():
        commands[label] = [*command, "run", program]
    results: dict[str, list[float]] = {label: [] for label in commands}
    for command in commands.values():  # warm the OS caches
        timed(command, env)
    for _ in range(repeat):  # interleaved, so load changes hit every variant
        for label, command in commands.items():
            results[label].append(timed(command, env))
    print(f"2. whole client processes (median of {repeat}, interleaved)")
    for label, values in results.items():
        print(f"   {label:<52} {ms(statistics.median(values))}")
    daemon = statistics.median(results["wasmrun run hello.wasm (daemon)"])
    local = statistics.median(results["wasmrun run --no-daemon hello.wasm"])
    print(f"   daemon path vs --no-daemon: {local / daemon:.1f}x faster")
    for label in extra:
        other = statistics.median(results[label])
        print(f"   {label}: {local / other:.1f}x faster than --no-daemon")


def _worker(
    clients: list[Client], times: list[list[float]], failures: list[BaseException], stop: float
) -> Callable[[int], None]:
    """Client ``i``'s loop: requests until ``stop``, latencies into times[i]."""

    def work(i: int) -> None:
        try:
            while time.perf_counter() < stop:
                times[i].append(clients[i].run())
        except BaseException as e:  # report, do not hang
            failures.append(e)

    return work


def throughput(
    sock: Path, program: Path, args: tuple[str, ...], label: str, seconds: float
) -> dict[int, float]:
    print(f"   {label}, N clients with a connection each ({seconds:g} s per row)")
    print("   clients   requests/s   median latency   p90 latency")
    rates: dict[int, float] = {}
    for n in (1, 2, 4, 16):
        clients = [Client(sock, program, args) for _ in range(n)]
        for c in clients:
            c.run()
        times: list[list[float]] = [[] for _ in range(n)]
        stop = time.perf_counter() + seconds
        failures: list[BaseException] = []
        work = _worker(clients, times, failures, stop)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for c in clients:
            c.close()
        if failures:
            raise SystemExit(f"client failed: {failures[0]!r}")
        flat = [t for ts in times for t in ts]
        rates[n] = len(flat) / wall
        print(
            f"   {n:7d}   {len(flat) / wall:10.0f}   {ms(statistics.median(flat))}"
            f"      {ms(percentile(flat, 0.9))}"
        )
    return rates


def _is_compiler(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == COMPILER_NAME
    except OSError:
        return False


def _daemon_pss(scratch: Path, corpus: Path, pythonpath: str | None) -> tuple[int, list[int], int]:
    """Total PSS (KiB) of a daemon and its processes after four long runs
    at once and a few hello worlds, from a fresh compiled-code cache, each
    process's, and the compiler processes' apart."""
    shutil.rmtree(scratch / "cache", ignore_errors=True)
    proc, _ = start_daemon(scratch, corpus, 4, pythonpath)
    try:
        sock = scratch / "d.sock"
        calls = corpus / "callloop.wasm"
        legacy = pythonpath is not None
        clients = [Client(sock, calls, ("3000000",), legacy) for _ in range(4)]
        threads = [threading.Thread(target=c.run) for c in clients]
        for t in threads:  # four long runs at once: four workers
            t.start()
        for t in threads:
            t.join()
        for c in clients:
            c.close()
        hello = Client(sock, corpus / "hello.wasm", legacy=legacy)
        for _ in range(20):
            hello.run()
        hello.close()
        # A compiler process made the fresh cache's code: idle now, it
        # exits after worker_idle_timeout. Counted apart.
        pids = [p for p in descendants(proc.pid) if not _is_compiler(p)]
        compilers = sum(pss_kib(p) for p in descendants(proc.pid) if _is_compiler(p))
        return sum(pss_kib(p) for p in pids), [pss_kib(p) for p in pids], compilers
    finally:
        proc.terminate()
        proc.wait(30)


def memory(scratch: Path, corpus: Path, baseline: str | None) -> None:
    """PSS of the daemon with 4 workers; with ``baseline`` (a PYTHONPATH
    holding an older wasmrun), against that daemon under the same load."""
    total, each, compilers = _daemon_pss(scratch, corpus, None)
    print(f"4. memory: PSS of front + zygote + {len(each) - 2} workers: {total / 1024:.1f} MiB")
    print("   per process (MiB): " + ", ".join(f"{k / 1024:.1f}" for k in each))
    print(f"   and the idle compiler process(es): {compilers / 1024:.1f} MiB")
    if baseline:
        old, _, _ = _daemon_pss(scratch, corpus, baseline)
        print(f"   the daemon from {baseline} (one process, threads): {old / 1024:.1f} MiB")
        print(f"   ratio: {total / old:.2f}x")


def regular_install(scratch: Path) -> Path:
    """The layout a regular (non-editable) ``pip install`` produces, in a
    scratch venv: the packages under site-packages/wasmrun/ and pip's
    console-script wrapper. Without dependencies: the daemon path of the
    client needs none. (Copied rather than built, so it needs no ``wheel``.)"""
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python*/site-packages")
    for folder in ("client", "protocol", "daemon", "runtime"):
        shutil.copytree(
            ROOT / folder, site / "wasmrun" / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    compileall.compile_dir(str(site / "wasmrun"), quiet=1)
    script = venv / "bin" / "wasmrun"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import re\nimport sys\nfrom wasmrun.client.cli import main\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(main())\n"
    )
    script.chmod(0o755)
    return script


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--processes", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="daemon workers")
    ap.add_argument("--regular-install", action="store_true")
    ap.add_argument(
        "--baseline-pythonpath",
        metavar="DIR",
        help="a PYTHONPATH whose wasmrun is an earlier daemon, for the memory comparison",
    )
    ns = ap.parse_args()
    corpus = build_corpus(ROOT / "tests" / "c" / "corpus.toml", ROOT / "build" / "corpus")
    program = corpus / "hello.wasm"
    # As pip install does (this sandbox sets PYTHONDONTWRITEBYTECODE).
    for folder in ("client", "protocol", "daemon", "runtime"):
        compileall.compile_dir(str(ROOT / folder), quiet=1)
    scratch = Path(tempfile.mkdtemp(prefix="wrbench-", dir="/tmp"))
    steps: list[Callable[[], None]] = []
    try:
        extra: dict[str, list[str]] = {}
        if ns.regular_install:
            extra["wasmrun run hello.wasm (daemon, regular install)"] = [
                str(regular_install(scratch))
            ]
        print(
            f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
            f"{os.getloadavg()[2]:.2f} at start, {os.cpu_count()} cores"
        )
        proc, ready = start_daemon(scratch, corpus, ns.concurrency)
        steps.append(proc.kill)
        print(
            f"wasmrund ready after {ready:.2f} s (fresh cache: compiles libc.so), "
            f"concurrency {ns.concurrency}, {os.cpu_count()} cores"
        )
        sock = scratch / "d.sock"
        cold_worker(sock, program, proc.pid)
        latency(sock, program, ns.requests, proc.pid)
        processes(sock, corpus, scratch / "cache", ns.processes, extra)
        proc.terminate()
        proc.wait(30)
        print("3. throughput: one worker, then one per core")
        calls = corpus / "callloop.wasm"
        rates: dict[tuple[int, str], dict[int, float]] = {}
        for workers in (1, os.cpu_count() or 1):
            proc, _ = start_daemon(scratch, corpus, workers)
            steps.append(proc.kill)
            print(f"  {workers} worker(s):")
            rates[workers, "hello"] = throughput(sock, program, (), "hello world", ns.seconds)
            rates[workers, "calls"] = throughput(
                sock, calls, ("5000000",), "5 million calls into a library", ns.seconds
            )
            proc.terminate()
            proc.wait(30)
        cores = os.cpu_count() or 1
        for what in ("hello", "calls"):
            ratio = rates[cores, what][16] / rates[1, what][16]
            print(f"   {what}, 16 clients: {cores} workers / 1 worker = {ratio:.2f}x")
        memory(scratch, corpus, ns.baseline_pythonpath)
    finally:
        for step in steps:
            step()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
