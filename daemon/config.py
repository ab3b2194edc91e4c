"""wasmrund's configuration: a TOML file (``--config``), every key optional.

::

    socket = "/run/wasmrun/wasmrund.sock"    # default: see default_socket_path()
    socket_mode = "0660"                      # default 0600, or 0660 with socket_group
    socket_group = "wasmrun"                  # group owning the socket
    allowed_uids = [1000, "alice"]            # default: the daemon's own uid; with
                                              # socket_group: whoever can connect
    cache_dir = "/var/cache/wasmrun"          # compiled code; "off" disables it
    cache_max_bytes = 1073741824              # disk cache bound
    memory_budget = 1073741824                # in-memory module cache bound
    concurrency = 4                           # worker processes in all (runs at once)
    workers_per_uid = 4                       # worker processes one uid may have
    queue_per_uid = 64                        # requests one uid may have waiting
    worker_idle_timeout = 60.0                # seconds before an idle worker exits
    worker_max_requests = 1000                # runs before a worker is replaced
    worker_memory = 5368709120                # a worker's RLIMIT_DATA (bytes)
    worker_max_fds = 1024                     # a worker's RLIMIT_NOFILE
    kill_grace = 1.0                          # seconds a stopped run has before its
                                              # worker is killed
    compile_memory = 2147483648               # a compiler process's RLIMIT_DATA (bytes)
    compile_timeout = 300.0                   # seconds one module may take to compile
    max_connections = 1000                    # open client connections in all
    max_connections_per_uid = 64              # ... and per uid
    idle_timeout = 60.0                       # close a connection idle this long
    frame_timeout = 10.0                      # seconds to finish a started frame
    max_file_size = 268435456                 # module files larger are refused unread
    max_libraries = 1024                      # modules in one run, dlopens included
    user = "wasmrund"                         # a root daemon's front runs as this
                                              # user once the zygote is forked
                                              # (default: uid 0, no capabilities)
    library_path = ["/usr/lib/wasm32-wasi"]   # searched after each request's own dirs
    preload = ["libc.so"]                     # compiled and cached at start
    fuel = false                              # allow fuel limits (slower code)
    access_log = true                         # a log line per request (at info;
                                              # false: at debug)
    drain_timeout = 30.0                      # on SIGTERM, seconds to let runs finish

    [limits]                                  # defaults, and the most a client may ask
    timeout = 30.0                            # wall-clock seconds per request
    max_timeout = 300.0
    memory = 268435456                        # bytes of linear memory
    max_memory = 1073741824
    fuel = 1000000000                         # needs fuel = true
    max_fuel = 10000000000

Every mistake is reported as one line naming the file and the key, before
the daemon binds its socket, so a bad deployment fails at start rather than
on the first request.
"""

from __future__ import annotations

import grp
import os
import pwd
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from wasmrun.runtime.plan import DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_LIBRARIES


class ConfigError(Exception):
    """The configuration file is unreadable or holds a bad value."""


def default_socket_path(environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/wasmrun/wasmrund.sock``, else
    ``/tmp/wasmrun-$UID/wasmrund.sock``: per user, so a user's daemon is found
    without configuration (the client applies the same rule)."""
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime_dir) / "wasmrun" if runtime_dir else Path(f"/tmp/wasmrun-{os.getuid()}")
    return str(base / "wasmrund.sock")


@attrs.frozen
class Limits:
    """Per-request limits: a default when the client asks for nothing, and a
    maximum that caps what it asks for. None: unlimited."""

    timeout: float | None = None
    max_timeout: float | None = None
    memory: int | None = None
    max_memory: int | None = None
    fuel: int | None = None
    max_fuel: int | None = None


def _default_concurrency() -> int:
    return max(1, os.cpu_count() or 1)


@attrs.frozen
class DaemonConfig:
    """Everything the daemon needs to know at start; immutable while it runs."""

    socket: str | None = None
    socket_mode: int | None = None
    socket_group: str | None = None
    allowed_uids: tuple[int, ...] | None = None
    cache_dir: str | None = None
    cache_max_bytes: int = 1 << 30
    memory_budget: int = 1 << 30
    concurrency: int = attrs.field(factory=_default_concurrency)
    library_path: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    fuel: bool = False
    access_log: bool = True
    drain_timeout: float = 30.0
    limits: Limits = Limits()
    workers_per_uid: int | None = None  # None: concurrency
    queue_per_uid: int = 64
    worker_idle_timeout: float = 60.0
    worker_max_requests: int = 1000
    worker_memory: int | None = None  # None: derived from the memory limits
    worker_max_fds: int = 1024
    kill_grace: float = 1.0
    compile_memory: int = 2 << 30  # a compiler process's RLIMIT_DATA
    compile_timeout: float = 300.0  # seconds one module may take to compile
    max_connections: int = 1000
    max_connections_per_uid: int = 64
    idle_timeout: float = 60.0
    frame_timeout: float = 10.0
    user: str | int | None = None  # the front's user once the zygote is forked
    max_file_size: int = DEFAULT_MAX_FILE_SIZE  # a module file larger is refused unread
    max_libraries: int = DEFAULT_MAX_LIBRARIES  # modules in one run, dlopens included

    @property
    def effective_workers_per_uid(self) -> int:
        return min(self.workers_per_uid or self.concurrency, self.concurrency)

    @property
    def effective_worker_memory(self) -> int:
        """A worker's address-space ceiling for data (RLIMIT_DATA): the
        largest linear memory a run may have, plus room for the
        interpreter, wasmtime and tables (an accounting hole in Store
        limits then cannot take the host down)."""
        if self.worker_memory is not None:
            return self.worker_memory
        largest = self.limits.max_memory or self.limits.memory or (4 << 30)
        return largest + (1 << 30)

    @property
    def effective_socket_mode(self) -> int:
        """0600, or 0660 when a group is configured to share the socket."""
        if self.socket_mode is not None:
            return self.socket_mode
        return 0o660 if self.socket_group else 0o600

    def uid_allowed(self, uid: int) -> bool:
        """Who may use the daemon once connected. Without a list: the daemon's
        own user, or anyone able to connect when the socket is shared with a
        group (the socket's permissions are then the gate)."""
        if self.allowed_uids is not None:
            return uid in self.allowed_uids
        if self.socket_group:
            return True
        return uid == os.geteuid()


# -- checking values ------------------------------------------------------------


def _fail(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{where}: expected {expected}, got {value!r}")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(where, "a string", value)
    return value


def _positive_int(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _fail(where, "a positive integer", value)
    return value


def _positive_number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _fail(where, "a positive number of seconds", value)
    if value == float("inf"):
        raise _fail(where, "a finite number of seconds", value)
    return float(value)


def _strings(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(where, "a list of non-empty strings", value)
    return tuple(value)


def _mode(where: str, value: Any) -> int:
    """An octal string ("0660") or a TOML integer (0o660)."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise _fail(where, 'an octal mode such as "0660"', value) from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise _fail(where, 'an octal mode such as "0660"', value)
    if not 0 <= mode <= 0o777:
        raise _fail(where, "permission bits (0000..0777)", value)
    if mode & 0o600 != 0o600:
        raise ConfigError(f"{where}: the daemon's own user needs read and write (0600)")
    return mode


def _group(where: str, value: Any) -> str:
    name = _string(where, value)
    try:
        grp.getgrnam(name)
    except KeyError:
        if not name.isdigit():
            raise ConfigError(f"{where}: no such group {name!r}") from None
    return name


def _uids(where: str, value: Any) -> tuple[int, ...]:
    """User ids or user names."""
    if not isinstance(value, list):
        raise _fail(where, "a list of user ids or names", value)
    uids = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            uids.append(item)
        elif isinstance(item, str):
            try:
                uids.append(pwd.getpwnam(item).pw_uid)
            except KeyError:
                raise ConfigError(f"{where}: no such user {item!r}") from None
        else:
            raise _fail(where, "a list of user ids or names", value)
    return tuple(uids)


def _user(where: str, value: Any) -> str | int:
    """A user name or uid that exists."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        try:
            pwd.getpwuid(value)
        except KeyError:
            raise ConfigError(f"{where}: no such user {value}") from None
        return value
    if isinstance(value, str):
        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ConfigError(f"{where}: no such user {value!r}") from None
        return value
    raise _fail(where, "a user name or uid", value)


_TOP = {
    "socket": _string,
    "socket_mode": _mode,
    "socket_group": _group,
    "allowed_uids": _uids,
    "cache_dir": _string,
    "cache_max_bytes": _positive_int,
    "memory_budget": _positive_int,
    "concurrency": _positive_int,
    "library_path": _strings,
    "preload": _strings,
    "drain_timeout": _positive_number,
    "workers_per_uid": _positive_int,
    "queue_per_uid": _positive_int,
    "worker_idle_timeout": _positive_number,
    "worker_max_requests": _positive_int,
    "worker_memory": _positive_int,
    "worker_max_fds": _positive_int,
    "kill_grace": _positive_number,
    "compile_memory": _positive_int,
    "compile_timeout": _positive_number,
    "max_connections": _positive_int,
    "max_connections_per_uid": _positive_int,
    "idle_timeout": _positive_number,
    "frame_timeout": _positive_number,
    "user": _user,
    "max_file_size": _positive_int,
    "max_libraries": _positive_int,
}
_LIMITS = {
    "timeout": _positive_number,
    "max_timeout": _positive_number,
    "memory": _positive_int,
    "max_memory": _positive_int,
    "fuel": _positive_int,
    "max_fuel": _positive_int,
}


def _unknown(where: str, key: str, known: Mapping[str, Any] | tuple[str, ...]) -> ConfigError:
    return ConfigError(f"{where}{key}: unknown key (known: {', '.join(sorted(known))})")


def parse_config(doc: Mapping[str, Any], source: str = "<config>") -> DaemonConfig:
    """A checked DaemonConfig from a parsed TOML document."""
    kw: dict[str, Any] = {}
    for key, value in doc.items():
        where = f"{source}: {key}"
        if key in _TOP:
            kw[key] = _TOP[key](where, value)
        elif key in ("fuel", "access_log"):
            if not isinstance(value, bool):
                raise _fail(where, "true or false", value)
            kw[key] = value
        elif key == "limits":
            if not isinstance(value, dict):
                raise _fail(where, "a table ([limits])", value)
            lim: dict[str, Any] = {}
            for lkey, lvalue in value.items():
                if lkey not in _LIMITS:
                    raise _unknown(f"{source}: limits.", lkey, tuple(_LIMITS))
                lim[lkey] = _LIMITS[lkey](f"{source}: limits.{lkey}", lvalue)
            kw[key] = Limits(**lim)
        else:
            raise _unknown(f"{source}: ", key, (*_TOP, "fuel", "limits"))
    config = DaemonConfig(**kw)
    lim_ = config.limits
    for name in ("timeout", "memory", "fuel"):
        default, maximum = getattr(lim_, name), getattr(lim_, f"max_{name}")
        if default is not None and maximum is not None and default > maximum:
            raise ConfigError(
                f"{source}: limits.{name} ({default}) is above limits.max_{name} ({maximum})"
            )
    if (lim_.fuel is not None or lim_.max_fuel is not None) and not config.fuel:
        raise ConfigError(f"{source}: limits.fuel and limits.max_fuel need fuel = true")
    return config


def load_config(path: str | os.PathLike[str] | None) -> DaemonConfig:
    """Read and check a configuration file (None: all defaults)."""
    if path is None:
        return DaemonConfig()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(doc, str(path))
