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
import resource
import signal
import sys
from collections.abc import Sequence
from typing import Any

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


def _raise_nofile_limit(log: logging.Logger) -> None:
    """Raise the soft descriptor limit to the hard one: every connection
    costs a descriptor, and running out must not be the first limit hit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, e)


def _hand_over(directory: str, uid: int, gid: int) -> None:
    """The compiled-code cache becomes the front user's: created 0700 if
    missing, and what is in it chowned (it may have been root's)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chown(directory, uid, gid)
    os.chmod(directory, 0o700)
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            os.chown(entry.path, uid, gid)


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
    overrides: dict[str, Any] = {}
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

    _raise_nofile_limit(log)
    from .identity import can_change_identity, own_identity

    own = own_identity()
    changes = can_change_identity()
    if not changes and config.allowed_uids and set(config.allowed_uids) - {own.uid}:
        log.warning(
            "allowed_uids lists other users, but this daemon cannot change identity "
            "(it needs root, or CAP_SETUID and CAP_SETGID): it serves uid %d only",
            own.uid,
        )

    # The zygote is forked before this process creates an engine, a thread
    # or the disk cache's key: it must be a clean, key-less copy.
    from . import zygote

    zygote_pid, zygote_sock, zygote_kills = zygote.start(config)

    import trio
    from wasmrun.runtime import Runtime
    from wasmrun.runtime.diskcache import default_cache_dir

    from .codestore import CodeStore
    from .compilers import Compilers
    from .identity import IdentityError, drop_front_privileges, front_identity
    from .scheduler import PoolLimits, Scheduler
    from .server import ListenError, Server, bind_socket
    from .systemd import connect_notify
    from .workers import SpawnFailed, WorkerLimits, Zygote

    environ = {k: v for k, v in os.environ.items() if k in ("XDG_CACHE_HOME", "HOME")}
    cache = _cache_setting(config.cache_dir)
    if cache is True:
        cache = str(default_cache_dir(environ))
    # Everything that needs the daemon's privileges happens now: the socket,
    # the cache directory handed to the front's user. Then the front lets
    # them go: from here on only the zygote may change identity or kill.
    try:
        listener, where = bind_socket(config)
    except ListenError as e:
        print(f"wasmrund: {e}", file=sys.stderr)
        os._exit(1)
    connect_notify()
    try:
        user = front_identity(config.user) if changes else None
        if user is not None and cache:
            _hand_over(cache, user.uid, user.gid)
        drop_front_privileges(user if changes else None, changes)
    except (IdentityError, OSError) as e:
        print(f"wasmrund: cannot drop privileges: {e}", file=sys.stderr)
        os._exit(1)

    front_runtime = Runtime(
        environ=environ,
        disk_cache=cache,
        disk_cache_max_bytes=config.cache_max_bytes,
        memory_budget=config.memory_budget,
        fuel=config.fuel,
    )
    # A quarter of the descriptors at most for kept code: the rest are for
    # connections, workers and the requests' own descriptors.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    store = CodeStore(front_runtime.cache, config.memory_budget, min(4096, max(16, nofile // 4)))
    handle = Zygote(zygote_pid, zygote_sock, zygote_kills)
    worker_limits = WorkerLimits(
        max_fds=config.worker_max_fds, max_data=config.effective_worker_memory
    )
    pool = PoolLimits(
        max_workers=config.concurrency,
        max_workers_per_uid=config.effective_workers_per_uid,
        max_queued_per_uid=config.queue_per_uid,
        idle_timeout=config.worker_idle_timeout,
        max_requests=config.worker_max_requests,
    )
    owned: list[tuple[str, int]] = []
    if not where.endswith("(from systemd)"):
        owned.append((where, os.stat(where).st_ino))

    async def serve() -> int:
        try:
            loaded = await handle.start(store)
        except SpawnFailed as e:
            print(f"wasmrund: {e}", file=sys.stderr)
            return 1
        if loaded:
            log.info("preloaded %d module(s)", len(loaded))
        log.info(
            "%s",
            "workers take each client's identity"
            if changes
            else f"cannot change identity: serving uid {own.uid} only",
        )
        log.info("listening on %s (concurrency %d, pid %d)", where, config.concurrency, os.getpid())
        scheduler: Scheduler = Scheduler(
            pool, lambda identity: handle.spawn(identity, worker_limits)
        )
        compilers = Compilers(
            handle,
            store,
            slots=max(1, os.cpu_count() or 1),
            memory=config.compile_memory,
            timeout=config.compile_timeout,
            idle_timeout=config.worker_idle_timeout,
        )
        server = Server(config, scheduler, compilers, own=own, can_change_identity=changes)
        lost = False

        async def watch_zygote() -> None:
            # Without a zygote no worker can start, and forking a new one
            # from this threaded process is unsafe: drain and exit non-zero,
            # so that the service manager starts a whole new daemon.
            nonlocal lost
            await handle.watch()
            lost = True
            log.critical("the zygote died: stopping (a new daemon must be started)")
            server.stop("zygote lost")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_zygote)
            await server.serve(listener)
            nursery.cancel_scope.cancel()
        return 1 if lost else 0

    status = 1
    try:
        status = trio.run(serve)
    finally:
        for path, ino in owned:
            try:  # remove our socket file, unless another daemon replaced it
                if os.stat(path).st_ino == ino:
                    os.unlink(path)
            except OSError:
                pass
        try:
            os.kill(zygote_pid, signal.SIGKILL)
        except OSError:
            pass
    if status:
        os._exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # wasmtime's tokio threads may still hold Python callbacks; tearing the
    # interpreter down under them can abort the process. Nothing is left to
    # clean up, so leave without interpreter finalization.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
