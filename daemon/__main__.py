"""``wasmrund``: the loader daemon's command line.

    wasmrund [--config FILE] [--socket PATH] [--cache-dir DIR] [--concurrency N]
             [-L DIR]... [--preload LIB]... [-v]

Command-line options override the configuration file. Exit status: 0 after
a clean shutdown (SIGTERM/SIGINT, running requests drained), 1 when the
daemon cannot start (socket in use, preload failed), 2 for a bad command
line or configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

ENV_SOCKET = "WASMRUN_SOCKET"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wasmrund",
        description="Serve wasmrun run/call requests over a Unix socket, keeping compiled "
        "modules and link plans warm across runs.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="listen here (default: $WASMRUN_SOCKET, else $XDG_RUNTIME_DIR/wasmrun/"
        "wasmrund.sock, else /tmp/wasmrun-$UID/wasmrund.sock); ignored under socket activation",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help='compiled-code cache ("off" disables it; default: $WASMRUN_CACHE_DIR, '
        "systemd's $CACHE_DIRECTORY, else $XDG_CACHE_HOME/wasmrun)",
    )
    p.add_argument("--concurrency", type=int, metavar="N", help="runs executing at once")
    p.add_argument(
        "-L",
        "--library-path",
        action="append",
        default=[],
        metavar="DIR",
        help="default library directory, searched after each request's own (repeatable)",
    )
    p.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="LIB",
        help="compile LIB (and what it needs) at start (repeatable)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    return p


def _cache_setting(explicit: str | None) -> bool | str:
    """Where compiled code is kept: an explicit setting, else the daemon's
    environment (WASMRUN_CACHE_DIR, then systemd's CacheDirectory=)."""
    value = explicit
    if value is None:
        value = os.environ.get("WASMRUN_CACHE_DIR")
    if value is None and os.environ.get("CACHE_DIRECTORY"):
        value = os.environ["CACHE_DIRECTORY"].split(":")[0]
    if value is None:
        return True  # $XDG_CACHE_HOME/wasmrun
    if value.strip().lower() in ("", "off", "0", "none"):
        return False
    return value


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="wasmrund: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("wasmrund")

    import attrs

    from .config import ConfigError, load_config

    try:
        config = load_config(ns.config)
    except ConfigError as e:
        print(f"wasmrund: {e}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    socket_path = ns.socket or os.environ.get(ENV_SOCKET)
    if socket_path:
        overrides["socket"] = os.path.abspath(socket_path)
    if ns.cache_dir is not None:
        overrides["cache_dir"] = ns.cache_dir
    if ns.concurrency is not None:
        if ns.concurrency < 1:
            print("wasmrund: --concurrency must be at least 1", file=sys.stderr)
            return 2
        overrides["concurrency"] = ns.concurrency
    if ns.library_path:
        dirs = (os.path.abspath(d) for d in ns.library_path)
        overrides["library_path"] = (*dirs, *config.library_path)
    if ns.preload:
        overrides["preload"] = (*config.preload, *ns.preload)
    config = attrs.evolve(config, **overrides)

    import trio
    from wasmrun.runtime import LoadError, Runtime

    from .server import ListenError, Server, bind_socket

    runtime = Runtime(
        default_library_path=config.library_path,
        environ={k: v for k, v in os.environ.items() if k in ("XDG_CACHE_HOME", "HOME")},
        disk_cache=_cache_setting(config.cache_dir),
        disk_cache_max_bytes=config.cache_max_bytes,
        memory_budget=config.memory_budget,
        fuel=config.fuel,
    )
    if config.preload:
        try:
            loaded = runtime.preload(config.preload, library_path=())
        except LoadError as e:
            print(f"wasmrund: preload: {e}", file=sys.stderr)
            return 1
        log.info("preloaded %d module(s)", len(loaded))
    try:
        listener, where = bind_socket(config)
    except ListenError as e:
        print(f"wasmrund: {e}", file=sys.stderr)
        return 1
    log.info("listening on %s (concurrency %d, pid %d)", where, config.concurrency, os.getpid())
    owned = None if where.endswith("(from systemd)") else where
    ident = os.stat(owned).st_ino if owned else None
    try:
        trio.run(Server(config, runtime).serve, listener)
    finally:
        if owned is not None:
            try:  # remove our socket file, unless another daemon replaced it
                if os.stat(owned).st_ino == ident:
                    os.unlink(owned)
            except OSError:
                pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # wasmtime's tokio threads may still hold Python callbacks; tearing the
    # interpreter down under them can abort the process. Nothing is left to
    # clean up, so leave without interpreter finalization.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
