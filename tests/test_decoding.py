"""Decoding of dylink.0 (all subsections, unknown ones, legacy dylink) and of
module structure, including fuzzed input that must never crash the decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wasmrun.runtime.codegen import name, section, uleb
from wasmrun.runtime.dylink import (
    SYMBOL_BINDING_WEAK,
    SYMBOL_TLS,
    parse_dylink0,
    parse_legacy_dylink,
)
from wasmrun.runtime.errors import BinaryFormatError
from wasmrun.runtime.module import decode
from wasmrun.runtime.wasmbin import parse_module

HEADER = b"\0asm\x01\x00\x00\x00"


def sub(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + uleb(len(body)) + body


def module_with_dylink(payload: bytes, section_name: str = "dylink.0") -> bytes:
    return HEADER + section(0, name(section_name) + payload)


def dylink_of(data: bytes):
    info = parse_module(data, "lib.so")
    return parse_dylink0(info.custom("dylink.0"), "lib.so")


def test_all_five_subsections_and_unknown_ones_skipped():
    payload = (
        sub(1, uleb(1234) + uleb(3) + uleb(7) + uleb(1))
        + sub(0x42, b"future data we do not know")
        + sub(2, uleb(2) + name("liba.so") + name("libb.so"))
        + sub(3, uleb(1) + name("tv") + uleb(SYMBOL_TLS))
        + sub(4, uleb(1) + name("env") + name("maybe") + uleb(SYMBOL_BINDING_WEAK))
        + sub(5, uleb(2) + name("$ORIGIN") + name("${ORIGIN}/../lib"))
    )
    dl = dylink_of(module_with_dylink(payload))
    assert (dl.mem_size, dl.mem_align, dl.table_size, dl.table_align) == (1234, 3, 7, 1)
    assert dl.needed == ("liba.so", "libb.so")
    assert dl.is_tls_export("tv") and not dl.is_tls_export("other")
    assert dl.is_weak_import("env", "maybe")
    assert dl.is_weak_import("GOT.func", "maybe")  # LLVM records the symbol under env
    assert dl.runtime_path == ("$ORIGIN", "${ORIGIN}/../lib")
    assert not dl.legacy


def test_legacy_dylink_section():
    payload = uleb(64) + uleb(2) + uleb(3) + uleb(0) + uleb(1) + name("libold.so")
    data = module_with_dylink(payload, "dylink")
    image = decode(data, "libold.so", "libold.so", engine=None)
    assert image.dylink is not None and image.dylink.legacy
    assert (image.dylink.mem_size, image.dylink.needed) == (64, ("libold.so",))
    info = parse_module(data, "x")
    assert parse_legacy_dylink(info.custom("dylink"), "x").table_size == 3


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (sub(1, uleb(1) + uleb(0)), "unexpected end of data"),
        (b"\x02\x09\x01", "subsection 2 of 9 bytes runs past the end of the section"),
        (sub(1, uleb(1) + uleb(0) + uleb(0) + uleb(0) + b"\x00"), "1 bytes of trailing data"),
        (sub(1, uleb(0) + uleb(40) + uleb(0) + uleb(0)), "invalid alignment 2**40"),
        (sub(2, uleb(1) + uleb(5) + b"\xff\xfe\xfd\xfc\xfb"), "name is not valid UTF-8"),
        (sub(2, uleb(1000) + name("a")), "count 1000 exceeds the remaining"),
        (sub(2, uleb(0)) + sub(2, uleb(0)), "duplicate subsection 2"),
    ],
)
def test_malformed_dylink_names_the_offset(payload: bytes, message: str):
    data = module_with_dylink(payload)
    with pytest.raises(BinaryFormatError) as exc:
        dylink_of(data)
    assert message in str(exc.value)
    assert "lib.so:" in str(exc.value)
    # The offset points inside the dylink.0 payload of the file.
    start = len(HEADER) + 2 + len(name("dylink.0"))
    assert start <= exc.value.offset <= len(data)


def test_component_is_refused_clearly():
    with pytest.raises(BinaryFormatError, match="is a WebAssembly component"):
        parse_module(b"\0asm\x0d\x00\x01\x00", "comp.wasm")


def test_section_running_past_the_end():
    with pytest.raises(BinaryFormatError, match="section 1 of 100 bytes runs past the end"):
        parse_module(HEADER + b"\x01\x64\x00", "x.wasm")


def test_real_library_decodes(corpus: Path):
    data = (corpus / "libc.so").read_bytes()
    info = parse_module(data, "libc.so")
    assert len(info.exports) > 1000
    assert "malloc" in info.exports
    dl = parse_dylink0(info.custom("dylink.0"), "libc.so")
    assert dl.mem_size > 0 and dl.table_size > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzzed_bytes_only_raise_format_errors(tail: bytes):
    try:
        info = parse_module(HEADER + tail, "fuzz.wasm")
        for c in info.customs:
            if c.name == "dylink.0":
                parse_dylink0(c, "fuzz.wasm")
    except BinaryFormatError:
        pass


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_real_library_only_raises_format_errors(corpus: Path, data):
    original = bytearray((corpus / "libbase.so").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, min(len(original) - 1, 400)))
        original[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(original)))
    try:
        info = parse_module(bytes(original[:cut]), "m.so")
        for c in info.customs:
            if c.name == "dylink.0":
                parse_dylink0(c, "m.so")
    except BinaryFormatError:
        pass
