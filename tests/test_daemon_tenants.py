"""wasmrund as a hostile tenant sees it: real throwaway users against a root
daemon that serves them, each attack tried for real and checked to fail.

Needs root (CI runs as root) to create the users, which are removed
afterwards; skipped otherwise. The tenants' clients run with the system
``python3`` and a copy of the (stdlib-only) client package in a temporary
directory they can read: the project's own interpreter and checkout may be
out of their reach. Their programs and libraries are copied there too.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from test_daemon import TIMEOUT, Daemon, start_daemon
from test_daemon_workers import _compilers, _open_files, _straight_line_program

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
SECRET = "TOPSECRET-4f1c"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("useradd") is None
    or shutil.which("userdel") is None
    or not os.path.exists(SYSTEM_PYTHON),
    reason="needs root, useradd/userdel and the system python3 to act as other users",
)


@attrs.frozen
class Tenant:
    name: str
    uid: int
    gid: int


WASMRUN = [SYSTEM_PYTHON, "-m", "wasmrun.client.cli"]


def run_as(
    tenant: Tenant, command: list[str], env: dict[str, str], **kw
) -> subprocess.CompletedProcess[str]:
    """``command`` as ``tenant`` (its uid and primary group, nothing more)."""
    return subprocess.run(
        command,
        user=tenant.uid,
        group=tenant.gid,
        extra_groups=[],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        **kw,
    )


def _make_user(tag: str) -> Tenant:
    name = f"wrt{tag}{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    pw = pwd.getpwnam(name)
    return Tenant(name, pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope="module")
def tenants() -> Iterator[tuple[Tenant, Tenant, Tenant]]:
    """Two users the daemon serves and one it does not."""
    made: list[Tenant] = []
    try:
        for tag in ("a", "b", "c"):
            made.append(_make_user(tag))
        yield made[0], made[1], made[2]
    finally:
        for t in made:
            subprocess.run(["userdel", t.name], capture_output=True)


RAW_CLIENT = r'''
"""A tenant's hand-made client: sends exactly the descriptors it is told to."""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wasmrun.client import remote, wire

spec = json.loads(sys.argv[1])
for _ in range(spec.get("repeat", 1)):
    sock = remote.connect(spec["socket"], True)
    session = remote.Session(sock)
    roles, fds, own = ["stdout", "stderr"], [1, 2], []
    if spec.get("stdin"):
        path, mode = spec["stdin"]
        fd = os.open(path, os.O_WRONLY if mode == "w" else os.O_RDONLY)
        roles.append("stdin"); fds.append(fd); own.append(fd)
    for host, guest, mode in spec.get("dirs", []):
        flags = os.O_PATH if mode == "path" else os.O_RDONLY | os.O_DIRECTORY
        fd = os.open(host, flags)
        roles.append("dir:" + guest); fds.append(fd); own.append(fd)
    if spec["type"] == "run":
        fd = os.open(spec["program"], os.O_RDONLY)
        roles.append("program"); fds.append(fd); own.append(fd)
        frame = wire.run_request(
            program=spec["program"], args=spec.get("args", [spec["program"]]), env=[],
            cwd=os.getcwd(), library_path=spec.get("library_path", []), preload=[],
            bind_now=False, memory_bytes=None, timeout_ms=None, fd_roles=roles,
            request_id=1,
        )
    else:
        frame = wire.frame({
            "v": 1, "type": "preload", "libraries": spec["libraries"],
            "library_path": spec.get("library_path", []), "request_id": 1,
        })
        roles, fds = [], []
    reply = session.request(frame, fds, 1)
    for fd in own:
        os.close(fd)
    session.close()
    sys.stdout.flush()
    print("REPLY " + json.dumps({"type": reply.type, **reply.fields}), flush=True)
'''


@attrs.define
class World:
    """Files the tenants may and may not reach, and the daemon they use."""

    root: Path
    client: Path
    pub: Path
    prog: Path
    secret_dir: Path
    locked: Path
    rootonly: Path
    swap: Path
    dl: Path
    daemon: Daemon
    tenants: tuple[Tenant, Tenant, Tenant]

    @property
    def socket(self) -> str:
        return str(self.daemon.socket)

    def env(self) -> dict[str, str]:
        return {
            "PYTHONPATH": str(self.client),
            "WASMRUN_SOCKET": self.socket,
            "WASMRUN_LIBRARY_PATH": str(self.pub),
            "PATH": "/usr/bin:/bin",
            "HOME": "/",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def cli(
        self, tenant: Tenant, *args: str, stdin: str | None = None, shell_stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``wasmrun ARGS`` as ``tenant`` (through the daemon only: the
        tenant has no wasmtime, so an in-process fallback would fail)."""
        command = [*WASMRUN, *args]
        if shell_stdin is not None:  # e.g. "0>>file": stdin opened write-only
            quoted = " ".join(f"'{a}'" for a in command)
            command = ["/bin/sh", "-c", f"exec {quoted} {shell_stdin}"]
        return run_as(tenant, command, self.env(), cwd=self.root, input=stdin)

    def raw(self, tenant: Tenant, spec: dict) -> tuple[str, list[dict]]:
        """The hand-made client as ``tenant``: guest output and replies."""
        spec = {"socket": self.socket, **spec}
        command = [SYSTEM_PYTHON, str(self.client / "rawclient.py"), json.dumps(spec)]
        done = run_as(tenant, command, self.env(), cwd=self.root)
        assert done.returncode == 0, done.stderr
        out, replies = [], []
        for line in done.stdout.splitlines():
            if line.startswith("REPLY "):
                replies.append(json.loads(line[6:]))
            else:
                out.append(line)
        return "\n".join(out), replies


def _client_tree(root: Path) -> Path:
    """The stdlib-only client package, where a tenant can import it."""
    client = root / "client"
    (client / "wasmrun" / "client").mkdir(parents=True)
    (client / "wasmrun" / "__init__.py").write_text("")
    for f in (ROOT / "client").glob("*.py"):
        shutil.copy(f, client / "wasmrun" / "client" / f.name)
    return client


def _copy(src: Path, dst: Path, mode: int = 0o644) -> None:
    shutil.copy(src, dst)
    os.chmod(dst, mode)


@pytest.fixture(scope="module")
def world(corpus: Path, tenants: tuple[Tenant, Tenant, Tenant]) -> Iterator[World]:
    root = Path(tempfile.mkdtemp(prefix="wrt-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        client = _client_tree(root)
        (client / "rawclient.py").write_text(RAW_CLIENT)
        pub = root / "pub"  # what tenants may use
        pub.mkdir()
        for name in ("libc.so", "libdl.so", "hello.wasm", "fileops.wasm", "sleepy.wasm"):
            _copy(corpus / name, pub / name)
        prog = root / "prog"  # programs whose libraries are found elsewhere
        prog.mkdir()
        for name in ("whomain.wasm", "dlopenarg.wasm"):
            _copy(corpus / name, prog / name)
        secret_dir = root / "secret"  # root's: 0700
        secret_dir.mkdir(mode=0o700)
        (secret_dir / "secret.txt").write_text(SECRET)
        _copy(corpus / "secret" / "libwho.so", secret_dir / "libwho.so")
        (root / "rootfile.txt").write_text(SECRET)
        os.chmod(root / "rootfile.txt", 0o600)
        (root / "wo.txt").write_text(SECRET)  # tenants may write, not read
        os.chmod(root / "wo.txt", 0o622)
        locked = root / "locked"  # a readable library in a dir nobody else may enter
        locked.mkdir(mode=0o700)
        _copy(corpus / "libwho.so", locked / "libwho.so")
        rootonly = root / "rootonly"  # readable, not writable by tenants
        rootonly.mkdir(mode=0o755)
        swap = root / "swap"  # libwho.so: a symlink swapped under the loader
        swap.mkdir(mode=0o755)
        _copy(corpus / "libwho.so", swap / "libwho.pub")
        os.symlink(swap / "libwho.pub", swap / "libwho.so")
        dl = root / "dl"
        dl.mkdir(mode=0o755)
        _copy(corpus / "libwho.so", dl / "libhidden.so", mode=0o600)
        _copy(corpus / "libwho.so", dl / "libshown.so")
        a, b, c = tenants
        config = (
            'socket_mode = "0666"\n'
            f"allowed_uids = [0, {a.uid}, {b.uid}]\n"
            "kill_grace = 1.0\n"
            "concurrency = 4\n"
            "workers_per_uid = 2\n"
        )
        with start_daemon(config=config, sock=root / "d.sock") as d:
            yield World(root, client, pub, prog, secret_dir, locked, rootonly, swap, dl, d, tenants)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the kernel decides: directories -------------------------------------------------


def test_dir_of_the_root_gives_no_access_to_root_only_files(world: World) -> None:
    a = world.tenants[0]
    fileops = str(world.pub / "fileops.wasm")
    for target in (world.root / "rootfile.txt", world.secret_dir / "secret.txt"):
        done = world.cli(a, "run", "--dir", "/::/host", fileops, "read", f"/host{target}")
        assert SECRET not in done.stdout + done.stderr
        assert done.stdout.startswith("ERR:"), (done.stdout, done.stderr)
        assert done.returncode == 1, done.stderr
    # Listing root's private directory fails too.
    done = world.cli(a, "run", "--dir", "/::/host", fileops, "list", f"/host{world.secret_dir}")
    assert done.stdout.startswith("ERR:") and "secret.txt" not in done.stdout
    # The same program reads what the tenant may read: the checks are real.
    done = world.cli(a, "run", "--dir", "/::/host", fileops, "list", f"/host{world.pub}")
    assert done.stdout.startswith("OK:") and "libc.so" in done.stdout, done.stderr


def test_a_private_directory_cannot_be_preopened(world: World) -> None:
    a = world.tenants[0]
    for private in ("/root", str(world.secret_dir)):
        done = world.cli(
            a, "run", "--dir", f"{private}::/r", str(world.pub / "fileops.wasm"), "list", "/r"
        )
        assert done.returncode == 127, done
        assert "not a directory" in done.stderr or "Permission denied" in done.stderr
        assert "OK:" not in done.stdout


def test_no_files_created_in_a_root_only_directory(world: World) -> None:
    a = world.tenants[0]
    done = world.cli(
        a,
        "run",
        "--dir",
        f"{world.rootonly}::/d",
        str(world.pub / "fileops.wasm"),
        "write",
        "/d/planted",
    )
    assert done.stdout.startswith("ERR:"), done
    assert not (world.rootonly / "planted").exists()
    done = world.cli(
        a,
        "run",
        "--dir",
        "/::/h",
        str(world.pub / "fileops.wasm"),
        "write",
        f"/h{world.rootonly}/x",
    )
    assert done.stdout.startswith("ERR:") and not (world.rootonly / "x").exists()


def test_an_o_path_directory_descriptor_gains_nothing(world: World) -> None:
    """O_PATH needs no permission on the directory itself; reopening it
    for reading would grant what the tenant never had."""
    a = world.tenants[0]
    out, replies = world.raw(
        a,
        {
            "type": "run",
            "program": str(world.pub / "fileops.wasm"),
            "args": ["fileops", "list", "/s"],
            "library_path": [str(world.pub)],
            "dirs": [[str(world.secret_dir), "/s", "path"]],
        },
    )
    assert "secret.txt" not in out and SECRET not in out
    [reply] = replies
    assert reply["type"] == "error" and reply["kind"] == "load", reply
    assert "not opened for reading" in reply["message"]


def test_a_write_only_stdin_gains_no_read_access(world: World) -> None:
    a = world.tenants[0]
    fileops = str(world.pub / "fileops.wasm")
    done = world.cli(a, "run", fileops, "stdin", shell_stdin=f"0>>{world.root / 'wo.txt'}")
    assert SECRET not in done.stdout + done.stderr
    assert done.stdout.startswith("ERR:empty"), done
    out, replies = world.raw(
        a,
        {
            "type": "run",
            "program": fileops,
            "args": ["fileops", "stdin"],
            "library_path": [str(world.pub)],
            "stdin": [str(world.root / "wo.txt"), "w"],
        },
    )
    assert SECRET not in out and out.startswith("ERR:empty"), (out, replies)


# -- the kernel decides: programs and libraries ---------------------------------------


def test_a_library_in_a_directory_the_tenant_cannot_enter_is_not_loaded(world: World) -> None:
    a = world.tenants[0]
    whomain = str(world.prog / "whomain.wasm")
    done = world.cli(a, "run", "-L", str(world.locked), "-L", str(world.pub), whomain)
    assert done.returncode == 127, done
    assert "who=" not in done.stdout
    assert "libwho.so" in done.stderr
    # root, whose directory it is, loads it: the library itself is fine.
    out = subprocess.run(
        [SYSTEM_PYTHON, "-m", "wasmrun.client.cli", "run", "-L", str(world.locked)]
        + ["-L", str(world.pub), whomain],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.stdout == "who=public\n", out.stderr


def test_symlink_swaps_during_loading_leak_nothing(world: World) -> None:
    """200 runs while libwho.so flips between a public library and root's
    secret one: the secret one is never loaded (the worker opens it as the
    tenant: EACCES), whatever the timing."""
    a = world.tenants[0]
    link = world.swap / "libwho.so"
    stop = threading.Event()
    flips = 0

    def swapper() -> None:
        nonlocal flips
        targets = (world.swap / "libwho.pub", world.secret_dir / "libwho.so")
        tmp = world.swap / "libwho.tmp"
        while not stop.is_set():
            for target in targets:
                try:
                    tmp.unlink()
                except FileNotFoundError:
                    pass
                os.symlink(target, tmp)
                os.rename(tmp, link)  # atomic: the name always exists
                flips += 1

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    try:
        out, replies = world.raw(
            a,
            {
                "type": "run",
                "program": str(world.prog / "whomain.wasm"),
                "args": ["whomain"],
                "library_path": [str(world.swap), str(world.pub)],
                "repeat": 200,
            },
        )
    finally:
        stop.set()
        thread.join(TIMEOUT)
    lines = out.splitlines()
    assert len(replies) == 200
    assert "who=SECRET" not in lines
    assert flips > 200
    public = lines.count("who=public")
    # The secret library cannot even be seen by the tenant's worker (its
    # directory is root's): the search moves on, and libwho.so is not found.
    denied = sum(
        1
        for r in replies
        if r["type"] == "error" and r["kind"] == "load" and "libwho.so" in r["message"]
    )
    assert public + denied == 200, (public, denied, [r for r in replies if r["type"] == "error"])
    # Both outcomes are reachable: held still, each target gives its own.
    spec = {
        "type": "run",
        "program": str(world.prog / "whomain.wasm"),
        "args": ["whomain"],
        "library_path": [str(world.swap), str(world.pub)],
    }
    for target, expected in ((world.secret_dir / "libwho.so", None), (None, "who=public")):
        tmp = world.swap / "libwho.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(target or world.swap / "libwho.pub", tmp)
        os.rename(tmp, link)
        out, [reply] = world.raw(a, spec)
        if expected is None:
            assert reply["type"] == "error" and "libwho.so" in reply["message"], (out, reply)
            assert "SECRET" not in out
        else:
            assert out == expected, (out, reply)


def test_guest_dlopen_of_an_unreadable_library_fails_with_dlerror(world: World) -> None:
    a = world.tenants[0]
    dlopenarg = str(world.prog / "dlopenarg.wasm")
    args = ("run", "-L", str(world.dl), "-L", str(world.pub), dlopenarg)
    done = world.cli(a, *args, "libhidden.so")
    assert done.returncode == 1, done
    assert done.stdout.startswith("dlerror: ") and "loaded" not in done.stdout
    assert "Permission denied" in done.stdout
    done = world.cli(a, *args, "libshown.so")  # the same bytes, readable
    assert done.stdout == "loaded: public\n", done


def test_unreadable_and_missing_paths_give_the_same_message(world: World) -> None:
    a = world.tenants[0]
    messages = []
    for name in ("libwho.so", "libnothere.so"):
        _, [reply] = world.raw(a, {"type": "preload", "libraries": [str(world.secret_dir / name)]})
        assert reply["type"] == "error" and reply["kind"] == "load", reply
        messages.append(reply["message"].replace(name, "NAME"))
    assert messages[0] == messages[1], messages


# -- compiled code stays the daemon's --------------------------------------------------


def _cache_dir(world: World) -> Path:
    return world.daemon.dir / "cache"


def _workers_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        if int(uids[1]) == uid and b"wasmrun.daemon" in cmdline:
            pids.append(int(entry))
    return pids


def test_the_cache_and_its_key_are_out_of_reach(world: World) -> None:
    a = world.tenants[0]
    cache = _cache_dir(world)
    assert (cache / "key").exists()
    fileops = str(world.pub / "fileops.wasm")
    for op, path in (("read", cache / "key"), ("list", cache), ("write", cache / "planted.cwasm")):
        done = world.cli(a, "run", "--dir", "/::/h", fileops, op, f"/h{path}")
        assert done.stdout.startswith("ERR:"), (op, done)
    assert not (cache / "planted.cwasm").exists()
    done = world.cli(a, "run", "--dir", f"{cache}::/c", fileops, "list", "/c")
    assert done.returncode == 127 and "OK:" not in done.stdout
    # The tenant's workers hold nothing of the cache open.
    workers = _workers_of(a.uid)
    assert workers, "the tenant's worker should still be alive (idle)"
    for pid in workers:
        for target in _open_files(pid):
            assert not target.startswith(str(cache)), (pid, target)


def test_workers_hold_the_tenants_credentials_and_nothing_more(world: World) -> None:
    a = world.tenants[0]
    assert world.cli(a, "run", str(world.pub / "hello.wasm")).returncode == 0
    [pid, *_] = _workers_of(a.uid)
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    assert fields["Uid"].split() == [str(a.uid)] * 4
    assert fields["Gid"].split() == [str(a.gid)] * 4
    assert fields["Groups"].split() == []
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    # Not dumpable (the identity change saw to it): its /proc files stay
    # root's, so the tenant cannot ptrace it or read its memory.
    assert os.stat(f"/proc/{pid}/mem").st_uid == 0
    denied = run_as(a, ["/bin/cat", f"/proc/{pid}/environ"], world.env())
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


# -- stopping, scheduling, refusing ----------------------------------------------------


def test_a_guest_blocked_in_sleep_is_killed_and_others_run_meanwhile(world: World) -> None:
    a, b, _ = world.tenants
    sleeper = subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "wasmrun.client.cli", "run", "--timeout", "1"]
        + [str(world.pub / "sleepy.wasm")],
        user=a.uid,
        group=a.gid,
        extra_groups=[],
        env=world.env(),
        cwd=world.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    assert sleeper.stdout is not None
    assert sleeper.stdout.readline() == "sleeping\n"  # it is in sleep(60) now
    hello = world.cli(b, "run", str(world.pub / "hello.wasm"))
    assert hello.returncode == 0 and "hello" in hello.stdout, hello
    out, err = sleeper.communicate(timeout=TIMEOUT)
    elapsed = time.monotonic() - t0
    assert sleeper.returncode == 124, err
    assert "timed out after 1 s" in err
    assert elapsed < 3.0, elapsed
    assert "woke up" not in out
    # The daemon replaced the killed worker: the tenant runs again.
    again = world.cli(a, "run", str(world.pub / "hello.wasm"))
    assert again.returncode == 0, again


def test_a_tenants_status_shows_no_other_uid(world: World) -> None:
    """``wasmrun status`` tells a tenant the daemon's totals and its own
    entries, never who else uses the daemon or how much."""
    a, b, _ = world.tenants
    assert world.cli(b, "run", str(world.pub / "hello.wasm")).returncode == 0
    assert world.cli(a, "run", str(world.pub / "hello.wasm")).returncode == 0
    status = world.cli(a, "status")
    assert status.returncode == 0, status.stderr
    assert f"uid.{a.uid}.workers" in status.stdout and "daemon.requests" in status.stdout
    assert f"uid.{b.uid}." not in status.stdout and "uid.0." not in status.stdout
    as_root = subprocess.run(
        [*WASMRUN, "status"], env=world.env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert f"uid.{b.uid}.workers" in as_root.stdout, as_root.stderr  # the operator sees all


def test_a_uid_not_allowed_is_refused_every_time(world: World) -> None:
    c = world.tenants[2]
    for _ in range(20):
        done = world.cli(c, "run", str(world.pub / "hello.wasm"))
        assert done.returncode == 76, done
        assert f"uid {c.uid} may not use this wasmrund" in done.stderr
        assert "hello" not in done.stdout


def test_a_daemon_that_cannot_change_identity_serves_its_own_uid_only(
    tenants: tuple[Tenant, Tenant, Tenant], corpus: Path, tmp_path: Path
) -> None:
    """Root without CAP_SETUID/CAP_SETGID: other uids are refused with the
    reason, even though the configuration allows them."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    a = tenants[0]
    root = Path(tempfile.mkdtemp(prefix="wrt-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        client = _client_tree(root)
        for name in ("hello.wasm", "libc.so"):
            _copy(corpus / name, root / name)
        config = f'socket_mode = "0666"\nallowed_uids = [0, {a.uid}]\n'
        prefix = ("setpriv", "--bounding-set", "-setuid,-setgid", "--inh-caps", "-setuid,-setgid")
        with start_daemon(config=config, sock=root / "d.sock", prefix=prefix) as d:
            env = {
                "PYTHONPATH": str(client),
                "WASMRUN_SOCKET": str(d.socket),
                "WASMRUN_LIBRARY_PATH": str(root),
                "PATH": "/usr/bin:/bin",
                "HOME": "/",
            }
            done = run_as(a, [*WASMRUN, "run", str(root / "hello.wasm")], env)
            assert done.returncode == 76, done
            assert "without the right to change identity" in done.stderr
            mine = subprocess.run(
                [SYSTEM_PYTHON, "-m", "wasmrun.client.cli", "run", str(root / "hello.wasm")],
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert mine.returncode == 0, mine.stderr
            d.proc.send_signal(signal.SIGTERM)
            assert d.proc.wait(TIMEOUT) == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _status_fields(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: v.strip() for k, v in (line.split(":", 1) for line in text.splitlines())}


def _compiler_identities(
    world: World, daemon: Daemon, tenant: Tenant, env: dict[str, str]
) -> list[dict]:
    """Have ``tenant`` run a program no cache holds (so it is compiled),
    then the /proc status fields of the daemon's compiler processes."""
    program = _straight_line_program(world.root / f"new-{uuid.uuid4().hex}.wasm", 4_321)
    os.chmod(program, 0o644)
    done = run_as(tenant, [*WASMRUN, "run", str(program)], env, cwd=world.root)
    assert (done.returncode, done.stderr) == (0, "")
    compilers = _compilers(daemon)
    assert compilers, "the compiler should still be alive (idle)"
    return [_status_fields(pid) for pid in compilers]


def test_compilers_have_the_fronts_identity_and_no_privilege(world: World) -> None:
    """A tenant's module is compiled in a process as unprivileged as the
    front (here root's uid without capabilities), never the zygote's."""
    for fields in _compiler_identities(world, world.daemon, world.tenants[0], world.env()):
        assert fields["Uid"].split() == ["0"] * 4
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
        assert fields["NoNewPrivs"] == "1"


def test_only_the_zygote_keeps_privileges(world: World) -> None:
    """The front reads every client's bytes: once the zygote is forked it
    holds no capability (it asks the zygote to kill a worker)."""
    front = _status_fields(world.daemon.proc.pid)
    assert int(front["CapEff"], 16) == 0 and int(front["CapPrm"], 16) == 0
    assert front["NoNewPrivs"] == "1"
    [zygote] = [
        int(p)
        for p in Path(f"/proc/{world.daemon.proc.pid}/task/{world.daemon.proc.pid}/children")
        .read_text()
        .split()
    ]
    caps = int(_status_fields(zygote)["CapEff"], 16)
    assert caps & (1 << 6) and caps & (1 << 7)  # CAP_SETGID, CAP_SETUID


@pytest.fixture
def front_user() -> Iterator[Tenant]:
    user = _make_user("d")
    try:
        yield user
    finally:
        subprocess.run(["userdel", user.name], capture_output=True)


def test_the_front_can_run_as_its_own_user(world: World, front_user: Tenant) -> None:
    """``user = ...``: the front becomes that user; the cache is handed to
    it, and tenants are served as before, a stuck guest killed as before."""
    a = world.tenants[0]
    config = f'socket_mode = "0666"\nallowed_uids = [{a.uid}]\nuser = "{front_user.name}"\n'
    with start_daemon(config=config, sock=world.root / "d2.sock") as d:
        front = _status_fields(d.proc.pid)
        assert front["Uid"].split() == [str(front_user.uid)] * 4
        assert int(front["CapEff"], 16) == 0
        cache = d.dir / "cache"
        assert os.stat(cache).st_uid == front_user.uid
        env = {**world.env(), "WASMRUN_SOCKET": str(d.socket)}
        hello = run_as(a, [*WASMRUN, "run", str(world.pub / "hello.wasm")], env, cwd=world.root)
        assert hello.returncode == 0 and "hello" in hello.stdout, hello.stderr
        assert os.stat(cache / "key").st_uid == front_user.uid
        sleepy = str(world.pub / "sleepy.wasm")
        stuck = run_as(a, [*WASMRUN, "run", "--timeout", "1", sleepy], env, cwd=world.root)
        assert stuck.returncode == 124, stuck.stderr
        for fields in _compiler_identities(world, d, a, env):
            assert fields["Uid"].split() == [str(front_user.uid)] * 4
            assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"] == "1"
