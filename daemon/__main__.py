"""``wasmrund``: the loader daemon's command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wasmrund",
        description="Serve wasmrun run/dlopen requests over a Unix socket, keeping "
        "compiled modules cached across runs.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="socket path (default: $WASMRUN_SOCKET, else $XDG_RUNTIME_DIR/wasmrun/wasmrund.sock)",
    )
    p.add_argument("--cache-dir", metavar="DIR", help='compiled-code cache ("off" disables)')
    p.add_argument("--concurrency", type=int, metavar="N", help="runs executing at once")
    p.add_argument(
        "-L",
        "--library-path",
        action="append",
        default=[],
        metavar="DIR",
        help="default library directory (after each request's own)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debugging detail")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import attrs
    import trio
    from wasmrun.runtime import Runtime

    from .config import ConfigError, load_config
    from .server import Server, bind_socket

    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.INFO,
        format="wasmrund: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(ns.config)
    except ConfigError as e:
        print(f"wasmrund: {e}", file=sys.stderr)
        return 2
    overrides = {}
    socket_path = ns.socket or os.environ.get("WASMRUN_SOCKET")
    if socket_path:
        overrides["socket"] = socket_path
    if ns.cache_dir:
        overrides["cache_dir"] = ns.cache_dir
    if ns.concurrency:
        overrides["concurrency"] = ns.concurrency
    if ns.library_path:
        overrides["library_path"] = (*ns.library_path, *config.library_path)
    config = attrs.evolve(config, **overrides)
    cache: bool | str = True
    if config.cache_dir is not None:
        cache = False if config.cache_dir.lower() in ("off", "") else config.cache_dir
    runtime = Runtime(
        default_library_path=config.library_path,
        environ={},
        disk_cache=cache,
        disk_cache_max_bytes=config.cache_max_bytes,
        memory_budget=config.memory_budget,
        fuel=config.fuel,
    )
    if config.preload:
        try:
            runtime.preload(config.preload)
        except Exception as e:
            print(f"wasmrund: preload failed: {e}", file=sys.stderr)
            return 1
    try:
        listener = bind_socket(config)
    except OSError as e:
        print(f"wasmrund: cannot listen: {e}", file=sys.stderr)
        return 1
    logging.getLogger("wasmrund").info(
        "listening on %s (concurrency %d)",
        listener.getsockname() or "<inherited>",
        config.concurrency,
    )
    trio.run(Server(config, runtime).serve, listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
