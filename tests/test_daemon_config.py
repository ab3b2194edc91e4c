"""wasmrund's configuration file and its systemd helpers (no daemon process)."""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path

import pytest
from wasmrun.daemon.config import (
    ConfigError,
    DaemonConfig,
    default_socket_path,
    load_config,
    parse_config,
)
from wasmrun.daemon.systemd import listen_fds, notify, notify_address

GROUP = grp.getgrgid(os.getgid()).gr_name


def test_full_config(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'socket = "/run/x.sock"\nsocket_mode = "0660"\nsocket_group = "{GROUP}"\n'
        'cache_dir = "off"\nconcurrency = 3\nlibrary_path = ["/lib/wasm"]\n'
        'preload = ["libc.so"]\nallowed_uids = [1000, 1001]\nfuel = true\n'
        "drain_timeout = 5\naccess_log = false\n"
        "[limits]\ntimeout = 30\nmax_timeout = 60.5\nmemory = 1024\nfuel = 5\n"
    )
    c = load_config(cfg)
    assert c.socket == "/run/x.sock" and c.socket_mode == 0o660 and c.concurrency == 3
    assert c.library_path == ("/lib/wasm",) and c.allowed_uids == (1000, 1001)
    assert c.limits.timeout == 30.0 and c.limits.max_timeout == 60.5 and c.limits.fuel == 5
    assert c.drain_timeout == 5.0 and c.preload == ("libc.so",) and c.fuel
    assert not c.access_log and DaemonConfig().access_log
    assert c.uid_allowed(1000) and not c.uid_allowed(0)


def test_defaults():
    c = load_config(None)
    assert c == DaemonConfig()
    assert c.uid_allowed(os.geteuid()) and not c.uid_allowed(os.geteuid() + 1)
    assert c.effective_socket_mode == 0o600
    shared = parse_config({"socket_group": GROUP})
    assert shared.effective_socket_mode == 0o660
    assert shared.uid_allowed(os.geteuid() + 1)  # the socket's group is the gate
    assert parse_config({"socket_mode": 0o640}).socket_mode == 0o640  # a TOML integer
    assert parse_config({"allowed_uids": ["root"]}).allowed_uids == (0,)


def test_default_socket_path():
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/7"}) == (
        "/run/user/7/wasmrun/wasmrund.sock"
    )
    assert default_socket_path({}) == f"/tmp/wasmrun-{os.getuid()}/wasmrund.sock"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"concurrency": 0}, "concurrency: expected a positive integer, got 0"),
        ({"concurrency": True}, "concurrency: expected a positive integer, got True"),
        ({"socket_mode": "rw"}, 'socket_mode: expected an octal mode such as "0660"'),
        ({"socket_mode": "0066"}, "socket_mode: the daemon's own user needs read and write"),
        ({"socket_group": "no-such-group-x"}, "socket_group: no such group 'no-such-group-x'"),
        ({"preload": "libc.so"}, "preload: expected a list of non-empty strings"),
        ({"allowed_uids": ["no-such-user-x"]}, "allowed_uids: no such user 'no-such-user-x'"),
        ({"allowed_uids": [-1]}, "allowed_uids: expected a list of user ids or names"),
        ({"limits": {"timeout": -1}}, "limits.timeout: expected a positive number of seconds"),
        ({"limits": {"memory": 1.5}}, "limits.memory: expected a positive integer, got 1.5"),
        ({"limits": {"speed": 1}}, "limits.speed: unknown key"),
        ({"limits": 3}, r"limits: expected a table \(\[limits\]\)"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"limits": {"fuel": 10}}, "limits.fuel and limits.max_fuel need fuel = true"),
        ({"limits": {"memory": 10, "max_memory": 5}}, r"limits.memory \(10\) is above"),
        ({"drain_timeout": float("inf")}, "drain_timeout: expected a finite number"),
        ({"access_log": "yes"}, "access_log: expected true or false"),
    ],
)
def test_bad_values_name_the_file_and_key(doc, message):
    with pytest.raises(ConfigError, match=f"^f.toml: {message}"):
        parse_config(doc, "f.toml")


def test_unreadable_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML: .*line 1"):
        load_config(bad)


def test_listen_fds_only_for_our_pid():
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == [3, 4]
    assert env == {}  # unset, so processes we start do not take them
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "2"}) == []
    assert listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}) == []
    assert listen_fds({}) == []


def test_notify_sends_a_datagram(tmp_path: Path):
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert s.recv(64) == b"READY=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


def test_notify_abstract_namespace():
    name = f"wasmrun-unit-{os.getpid()}"
    assert notify_address({"NOTIFY_SOCKET": "@" + name}) == "\0" + name
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert notify("STATUS=x", {"NOTIFY_SOCKET": "@" + name})
        assert s.recv(64) == b"STATUS=x"


def test_the_shipped_system_configuration_is_valid(tmp_path: Path) -> None:
    """systemd/system/wasmrund.toml parses (its user and group must exist
    on the host it is installed on: root's stand in for them here)."""
    shipped = Path(__file__).resolve().parent.parent / "systemd" / "system" / "wasmrund.toml"
    text = shipped.read_text()
    text = text.replace('user = "wasmrund"', 'user = "root"')
    text = text.replace('socket_group = "wasmrun"', 'socket_group = "root"')
    (tmp_path / "c.toml").write_text(text)
    config = load_config(tmp_path / "c.toml")
    assert config.user == "root" and config.socket_group == "root"
    assert config.preload == ("libc.so",) and config.workers_per_uid == 2
