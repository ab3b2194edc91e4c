"""wasmrund's configuration: a TOML file, every key optional.

    socket = "/run/wasmrun/wasmrund.sock"   # default: $XDG_RUNTIME_DIR/wasmrun/...
    socket_mode = "0600"                     # "0660" with socket_group for a group
    socket_group = "wasmrun"
    cache_dir = "/var/cache/wasmrun"         # "off" disables the disk cache
    cache_max_bytes = 1073741824
    memory_budget = 1073741824               # in-memory module cache
    concurrency = 4                          # runs executing at once
    library_path = ["/usr/lib/wasm32-wasi"]  # searched after each request's own -L
    preload = ["libc.so"]                    # compiled and cached at start
    allowed_uids = [1000]                    # default: the daemon's own uid only
    fuel = false                             # enable fuel limits (costs speed)

    [limits]                                 # defaults, and the most a client may ask
    timeout = 30.0                           # seconds
    max_timeout = 300.0
    memory = 268435456                       # bytes of linear memory
    max_memory = 1073741824
    fuel = 1000000000
    max_fuel = 10000000000

A bad file gives one line naming the file and the key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import attrs


class ConfigError(Exception):
    """The configuration file is unreadable or has a bad value."""


def default_socket_path(environ: dict[str, str] | None = None) -> str:
    """``$XDG_RUNTIME_DIR/wasmrun/wasmrund.sock``, else a per-user directory
    under /tmp (the same rule the client uses to find the daemon)."""
    env = os.environ if environ is None else environ
    runtime_dir = env.get("XDG_RUNTIME_DIR")
    base = Path(runtime_dir) / "wasmrun" if runtime_dir else Path(f"/tmp/wasmrun-{os.getuid()}")
    return str(base / "wasmrund.sock")


@attrs.frozen
class Limits:
    timeout: float | None = None
    max_timeout: float | None = None
    memory: int | None = None
    max_memory: int | None = None
    fuel: int | None = None
    max_fuel: int | None = None


@attrs.frozen
class DaemonConfig:
    socket: str | None = None
    socket_mode: int = 0o600
    socket_group: str | None = None
    cache_dir: str | None = None
    cache_max_bytes: int = 1 << 30
    memory_budget: int = 1 << 30
    concurrency: int = attrs.field(factory=lambda: max(1, os.cpu_count() or 1))
    library_path: tuple[str, ...] = ()
    preload: tuple[str, ...] = ()
    allowed_uids: tuple[int, ...] | None = None
    fuel: bool = False
    limits: Limits = Limits()

    def uid_allowed(self, uid: int) -> bool:
        allowed = self.allowed_uids if self.allowed_uids is not None else (os.getuid(),)
        return uid in allowed


def _expect(where: str, value: Any, kinds: tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def _positive(where: str, value: Any, kinds: tuple[type, ...] = (int,)) -> Any:
    _expect(where, value, kinds, "a positive number")
    if value <= 0:
        raise ConfigError(f"{where}: expected a positive number, got {value!r}")
    return value


def _strings(where: str, value: Any) -> tuple[str, ...]:
    _expect(where, value, (list,), "a list of strings")
    for item in value:
        _expect(where, item, (str,), "a list of strings")
    return tuple(value)


def load_config(path: str | os.PathLike | None) -> DaemonConfig:
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


def parse_config(doc: dict[str, Any], source: str = "<config>") -> DaemonConfig:
    kw: dict[str, Any] = {}
    for key, value in doc.items():
        where = f"{source}: {key}"
        if key in ("socket", "socket_group", "cache_dir"):
            kw[key] = _expect(where, value, (str,), "a string")
        elif key == "socket_mode":
            text = _expect(where, value, (str,), 'an octal string such as "0660"')
            try:
                mode = int(text, 8)
            except ValueError:
                raise ConfigError(f'{where}: expected an octal string such as "0660"') from None
            if mode & ~0o777:
                raise ConfigError(f"{where}: {text} is not a permission mode")
            kw[key] = mode
        elif key in ("cache_max_bytes", "memory_budget", "concurrency"):
            kw[key] = _positive(where, value)
        elif key in ("library_path", "preload"):
            kw[key] = _strings(where, value)
        elif key == "allowed_uids":
            _expect(where, value, (list,), "a list of user ids")
            for uid in value:
                _expect(where, uid, (int,), "a list of user ids")
            kw[key] = tuple(value)
        elif key == "fuel":
            kw[key] = _expect(where, value, (bool,), "true or false")
        elif key == "limits":
            _expect(where, value, (dict,), "a table")
            lim: dict[str, Any] = {}
            for lkey, lvalue in value.items():
                lwhere = f"{source}: limits.{lkey}"
                if lkey in ("timeout", "max_timeout"):
                    lim[lkey] = float(_positive(lwhere, lvalue, (int, float)))
                elif lkey in ("memory", "max_memory", "fuel", "max_fuel"):
                    lim[lkey] = _positive(lwhere, lvalue)
                else:
                    raise ConfigError(f"{lwhere}: unknown key")
            kw[key] = Limits(**lim)
        else:
            raise ConfigError(f"{where}: unknown key")
    config = DaemonConfig(**kw)
    if (config.limits.fuel or config.limits.max_fuel) and not config.fuel:
        raise ConfigError(f"{source}: limits.fuel needs fuel = true")
    return config
