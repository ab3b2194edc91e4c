"""Build a whole set of WebAssembly test modules from a TOML manifest, with caching.

Tests and examples need many small modules (libc.so, libraries that depend on
each other, PIE and non-PIE mains, static references).  Rebuilding them on
every test run would cost seconds each time, so each target carries a stamp
and is rebuilt only when something that can change its bytes changed.

Manifest (paths relative to the manifest's folder; targets in build order)::

    [[target]]
    name = "libc.so"            # output file name inside OUT_DIR
    kind = "libc"               # libc | shared | pie | nopie | static

    [[target]]
    name = "libgreet.so"
    kind = "shared"
    sources = ["c/greet.c"]
    libs = ["libc.so"]          # earlier targets, in NEEDED order
    rpath = ["$ORIGIN"]         # optional: RUNTIME_PATH entries (str or list)
    cflags = ["-DGREETING=1"]   # optional: extra compiler flags
    ldflags = []                # optional: extra wasm-ld flags (-Wl, for static)
    debug = false               # optional: keep debug info

A target is rebuilt when its stamp changes.  The stamp is a sha256 over the
kind, flags, the bytes of its sources, the output hashes of its libs, the zig
version and wasmcc.RECIPE_VERSION.  Headers are tracked too: the compiler's
depfile lists them and their hashes are recorded next to the stamp.  Stamps
live in ``OUT_DIR/.stamps/NAME.json`` and hold only paths relative to the
manifest folder, so a built OUT_DIR can be committed and stays valid in
another checkout.

Two processes building the same OUT_DIR at once (say, two pytest workers)
are serialised by an ``flock`` on ``OUT_DIR/.corpus.lock``; outputs and
stamps are written under temporary names and moved into place.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from . import wasmcc
else:  # run as a script: python toolchain/corpus.py
    import wasmcc  # type: ignore[import-not-found,no-redef]

__all__ = ["CorpusError", "Target", "build_corpus", "load_manifest", "main"]

STAMP_DIR = ".stamps"
LOCK_FILE = ".corpus.lock"
_STAMP_FORMAT = 1
_LIB_KINDS = ("libc", "shared")
_FIELDS = {"name", "kind", "sources", "libs", "rpath", "cflags", "ldflags", "debug"}


class CorpusError(wasmcc.ToolchainError):
    """A manifest or corpus build problem, reported as one readable message."""


@dataclass(frozen=True)
class Target:
    """One output described by the manifest, validated and normalised."""

    name: str
    kind: str
    sources: tuple[str, ...] = ()
    libs: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    debug: bool = False


def _str_list(value: object, where: str, key: str) -> tuple[str, ...]:
    """Accept a string or a list of strings; anything else is a manifest error."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise CorpusError(f"{where}: '{key}' must be a string or a list of strings")


def load_manifest(manifest_path: Path) -> list[Target]:
    """Parse and check a manifest, so mistakes fail before anything is built.

    Checks: known keys only (a typo like ``lib =`` would otherwise be
    silently ignored), unique plain file names, known kinds, and that libs
    name *earlier* libc/shared targets, which makes the file order a valid
    build order.
    """
    try:
        with open(manifest_path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise CorpusError(f"cannot read manifest: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CorpusError(f"{manifest_path}: invalid TOML: {exc}") from exc
    raw = doc.get("target")
    if not isinstance(raw, list) or not raw:
        raise CorpusError(f"{manifest_path}: expected one or more [[target]] tables")
    targets: list[Target] = []
    kinds: dict[str, str] = {}
    for i, entry in enumerate(raw):
        where = f"{manifest_path}: target #{i + 1}"
        name = entry.get("name")
        # A name may sit in one subfolder ("v2/libfoo.so"): variants of a library
        # keep the same file name, which is what NEEDED entries record.
        parts = name.split("/") if isinstance(name, str) else []
        if (
            not parts
            or len(parts) > 2
            or any(not p or p[0] == "." or Path(p).name != p for p in parts)
        ):
            raise CorpusError(f"{where}: 'name' must be a file name, optionally in one subfolder")
        where = f"{manifest_path}: target {name!r}"
        unknown = set(entry) - _FIELDS
        if unknown:
            raise CorpusError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if name in kinds:
            raise CorpusError(f"{where}: duplicate name")
        kind = entry.get("kind")
        if kind not in wasmcc.KINDS:
            raise CorpusError(f"{where}: 'kind' must be one of {', '.join(wasmcc.KINDS)}")
        debug = entry.get("debug", False)
        if not isinstance(debug, bool):
            raise CorpusError(f"{where}: 'debug' must be true or false")
        t = Target(
            name=name,
            kind=kind,
            sources=_str_list(entry.get("sources", []), where, "sources"),
            libs=_str_list(entry.get("libs", []), where, "libs"),
            rpath=_str_list(entry.get("rpath", []), where, "rpath"),
            cflags=_str_list(entry.get("cflags", []), where, "cflags"),
            ldflags=_str_list(entry.get("ldflags", []), where, "ldflags"),
            debug=debug,
        )
        if kind == "libc" and (t.sources or t.libs or t.rpath or t.cflags):
            raise CorpusError(f"{where}: kind 'libc' takes no sources, libs, rpath or cflags")
        if kind != "libc" and not t.sources:
            raise CorpusError(f"{where}: needs at least one source")
        if kind == "static" and (t.libs or t.rpath):
            raise CorpusError(f"{where}: kind 'static' takes no libs or rpath")
        for lib in t.libs:
            if kinds.get(lib) not in _LIB_KINDS:
                raise CorpusError(
                    f"{where}: lib {lib!r} is not an earlier libc/shared target in this manifest"
                )
        kinds[name] = kind
        targets.append(t)
    return targets


def _sha256_json(doc: object) -> str:
    """Hash a JSON-able value canonically (sorted keys, fixed separators)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _file_sha(path: Path) -> str | None:
    """Return a file's sha256, or None if it is gone (which means: rebuild)."""
    try:
        return wasmcc.sha256_file(path)
    except OSError:
        return None


def _stamp(t: Target, base: Path, lib_hashes: dict[str, str]) -> str:
    """Compute the stamp: everything known before building that shapes the output.

    Libraries enter through their output hashes rather than their stamps,
    since what the linker reads is the library itself.
    """
    sources = []
    for src in t.sources:
        sha = _file_sha(base / src)
        if sha is None:
            raise CorpusError(f"target {t.name!r}: source not found: {base / src}")
        sources.append([src, sha])
    return _sha256_json(
        {
            "recipe": wasmcc.RECIPE_VERSION,
            "zig": wasmcc.zig_version(),
            "kind": t.kind,
            "sources": sources,
            "libs": [[lib, lib_hashes[lib]] for lib in t.libs],
            "rpath": list(t.rpath),
            "cflags": list(t.cflags),
            "ldflags": list(t.ldflags),
            "debug": t.debug,
        }
    )


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a file so readers see either the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_record(path: Path) -> dict[str, object] | None:
    """Read a stamp record; a missing or corrupt one just means 'rebuild'."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == _STAMP_FORMAT else None


def _up_to_date(rec: dict[str, object] | None, stamp: str, out: Path, base: Path) -> bool:
    """Check stamp, output bytes and recorded header hashes against the disk."""
    if rec is None or rec.get("stamp") != stamp:
        return False
    if _file_sha(out) != rec.get("output"):
        return False
    inputs = rec.get("inputs")
    if not isinstance(inputs, dict):
        return False
    return all(_file_sha(base / rel) == sha for rel, sha in inputs.items())


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on OUT_DIR/.corpus.lock for the whole build.

    The lock file is left in place: deleting it would let a third process
    lock a fresh file while a second still holds the old one.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_corpus(
    manifest_path: Path,
    out_dir: Path,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build every target of the manifest into ``out_dir``; return ``out_dir``.

    Targets are built one after another in manifest order (the machines
    this runs on have two cores, and zig already uses both when it has to
    build libc).  Up-to-date targets are skipped unless ``force``.  ``log``
    receives one line per target, e.g. ``built libc.so (0.4 s)``.
    """
    manifest_path = Path(manifest_path).resolve()
    out_dir = Path(out_dir).resolve()
    base = manifest_path.parent
    targets = load_manifest(manifest_path)
    say = log or (lambda _msg: None)
    with _locked(out_dir):
        stamp_dir = out_dir / STAMP_DIR
        stamp_dir.mkdir(exist_ok=True)
        out_hashes: dict[str, str] = {}
        for t in targets:
            out = out_dir / t.name
            out.parent.mkdir(exist_ok=True)
            rec_path = stamp_dir / f"{t.name.replace('/', '--')}.json"
            stamp = _stamp(t, base, out_hashes)
            rec = _load_record(rec_path)
            if not force and _up_to_date(rec, stamp, out, base):
                assert rec is not None
                out_hashes[t.name] = str(rec["output"])
                say(f"up to date {t.name}")
                continue
            started = time.monotonic()
            try:
                result = wasmcc.build(
                    t.kind,
                    out,
                    [base / s for s in t.sources],
                    libs=[out_dir / lib for lib in t.libs],
                    rpaths=t.rpath,
                    cflags=t.cflags,
                    ldflags=t.ldflags,
                    debug=t.debug,
                    cwd=base,
                )
            except wasmcc.ToolchainError as exc:
                raise CorpusError(f"target {t.name!r}: {exc}") from exc
            out_sha = wasmcc.sha256_file(out)
            inputs = {os.path.relpath(p, base): _file_sha(p) for p in result.inputs}
            record = {
                "format": _STAMP_FORMAT,
                "stamp": stamp,
                "output": out_sha,
                "inputs": dict(sorted(inputs.items())),
            }
            _write_atomic(rec_path, (json.dumps(record, indent=1) + "\n").encode())
            out_hashes[t.name] = out_sha
            say(f"built {t.name} ({time.monotonic() - started:.1f} s)")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python toolchain/corpus.py MANIFEST OUT_DIR``."""
    p = argparse.ArgumentParser(
        prog="corpus", description="Build the WebAssembly modules a TOML manifest lists."
    )
    p.add_argument("manifest", type=Path, help="corpus manifest (TOML)")
    p.add_argument("out_dir", type=Path, help="where outputs and stamps go")
    p.add_argument("--force", action="store_true", help="rebuild everything")
    p.add_argument("-v", "--verbose", action="store_true", help="print each command run")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="wasmcc: %(message)s"
    )
    started = time.monotonic()
    try:
        build_corpus(args.manifest, args.out_dir, force=args.force, log=print)
    except wasmcc.ToolchainError as exc:
        print(f"corpus: error: {exc}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
