"""The memory image: libraries' data mapped from the module that defines the
memory (recipe.py), instead of copied by each library's instantiation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import wasmtime
from wasmrun.runtime import Runtime, WasiOptions, codegen, recipe, wasmbin
from wasmrun.runtime.errors import BinaryFormatError
from wasmrun.runtime.instance import GeneratedModules, InstanceSet
from wasmrun.runtime.module import ModuleImage, decode
from wasmrun.runtime.wasmbin import parse_module
from wat_support import write_wat

# Data at __memory_base and __memory_base + 16 (extended const), a passive
# segment that memory.init copies on request, and a function telling the base.
IMAGED = """
(module
 (@dylink.0 (mem-info (memory 32 2)))
 (import "env" "memory" (memory 0))
 (import "env" "__memory_base" (global $mb i32))
 (data (offset (global.get $mb)) "hello")
 (data (offset (i32.add (global.get $mb) (i32.const 16))) "world")
 (data $p "passive!")
 (func (export "base") (result i32) (global.get $mb))
 (func (export "init_passive") (param i32)
   (memory.init $p (local.get 0) (i32.const 0) (i32.const 8)))
)
"""

# A segment at an absolute address: not relative to the module's base, so
# the module keeps copying its data itself.
ABSOLUTE = """
(module
 (@dylink.0 (mem-info (memory 8 2)))
 (import "env" "memory" (memory 0))
 (import "env" "__memory_base" (global $mb i32))
 (data (offset (global.get $mb)) "mine")
 (data (offset (i32.const 64)) "abs")
 (func (export "base") (result i32) (global.get $mb))
)
"""

# Data past the module's declared memory size: left to the module (and to
# its own instantiation to fail or not), never written into the image.
OVERSIZED = """
(module
 (@dylink.0 (mem-info (memory 4 2)))
 (import "env" "memory" (memory 0))
 (import "env" "__memory_base" (global $mb i32))
 (data (offset (global.get $mb)) "too long for 4")
 (func (export "base") (result i32) (global.get $mb))
)
"""


def _image(path: Path) -> ModuleImage:
    return decode(path.read_bytes(), path.name, str(path))


def _read(iset, address: int, n: int) -> bytes:
    return bytes(iset.memory.read(iset.store, address, address + n))


def test_data_segments_are_decoded_with_their_places(tmp_path: Path):
    path = write_wat(tmp_path, "libimaged.so", IMAGED)
    data = path.read_bytes()
    info = parse_module(data, str(path))
    assert [(s.active, s.memory) for s in info.data] == [(True, 0), (True, 0), (False, 0)]
    payloads = [data[s.payload : s.payload + s.size] for s in info.data]
    assert payloads == [b"hello", b"world", b"passive!"]
    assert info.data[1].offset is not None
    assert info.data[1].offset.eval_i32({0: 1000}) == 1016
    assert info.data[2].offset is None
    assert info.data_section is not None
    start, end = info.data_section
    assert data[start] == 11 and start < info.data[0].entry < end


def test_relocatable_data_is_relative_to_the_base(tmp_path: Path):
    imaged = _image(write_wat(tmp_path, "libimaged.so", IMAGED))
    segments = imaged.relocatable_data()
    assert segments is not None
    assert [(off, imaged.data_bytes(at, n)) for off, at, n in segments] == [
        (0, b"hello"),
        (16, b"world"),
    ]
    assert _image(write_wat(tmp_path, "libabs.so", ABSOLUTE)).relocatable_data() is None
    assert _image(write_wat(tmp_path, "libbig.so", OVERSIZED)).relocatable_data() is None


def test_the_variant_without_data_keeps_everything_else(tmp_path: Path):
    path = write_wat(tmp_path, "libimaged.so", IMAGED)
    image = _image(path)
    variant = image._without_active_data()
    info = parse_module(variant, "variant")
    assert [(s.active, s.size) for s in info.data] == [(True, 0), (True, 0), (False, 8)]
    original = parse_module(path.read_bytes(), "original")
    assert info.exports == original.exports and info.imports == original.imports
    assert [s.offset for s in info.data] == [s.offset for s in original.data]
    wasmtime.Module.validate(wasmtime.Engine(), variant)


def test_a_library_s_data_comes_from_the_image(tmp_path: Path):
    path = write_wat(tmp_path, "libimaged.so", IMAGED)
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(path)) as lib:
        assert lib.recipe.dataless == (True,)
        assert [a for _, a, _, _ in lib.recipe.image] == [
            lib.plan.modules[0].memory_base,
            lib.plan.modules[0].memory_base + 16,
        ]
        (base,) = lib.call("base")
        assert _read(lib, base, 5) == b"hello"
        assert _read(lib, base + 16, 5) == b"world"
        assert _read(lib, base + 5, 11) == bytes(11)
        # The passive segment stayed in the module: memory.init still works.
        lib.call("init_passive", [base + 24])
        assert _read(lib, base + 24, 8) == b"passive!"


def test_a_module_with_other_data_copies_it_itself(tmp_path: Path):
    path = write_wat(tmp_path, "libabs.so", ABSOLUTE)
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(path)) as lib:
        assert lib.recipe.dataless == (False,) and lib.recipe.image == ()
        (base,) = lib.call("base")
        assert _read(lib, base, 4) == b"mine"
        assert _read(lib, 64, 3) == b"abs"


def test_every_run_gets_the_image_afresh(tmp_path: Path):
    """Copy-on-write: what one run writes over the image, the next run does
    not see."""
    path = write_wat(tmp_path, "libimaged.so", IMAGED)
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(path)) as first:
        (base,) = first.call("base")
        first.memory.write(first.store, b"HELLO", base)
        assert _read(first, base, 5) == b"HELLO"
        with rt.open_library(str(path)) as second:
            assert _read(second, base, 5) == b"hello"


@pytest.mark.parametrize("program", ["hello.wasm", "datamain.wasm"])
def test_memory_at_instantiation_is_what_copying_gives(
    corpus: Path, program: str, monkeypatch: pytest.MonkeyPatch
):
    """libc.so and a program with data of its own: once every module is
    instantiated (no guest code has run: libc's constructors write random
    canaries), the whole memory is byte for byte what it was when every
    module copied its own data. Relocations are applied afterwards, the
    same either way (the corpus programs print relocated data)."""

    def memory_at_instantiation() -> tuple[bytes, tuple[bool, ...]]:
        rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=False)
        plan = rt.plan(str(corpus / program))
        iset = InstanceSet(plan, rt.engine, rt.host_linker, rt.generated, WasiOptions().config())
        with iset:
            memory = iset.memory
            return bytes(memory.read(iset.store, 0, memory.data_len(iset.store))), (
                iset.recipe.dataless
            )

    imaged, dataless = memory_at_instantiation()
    assert dataless == (True,) * len(dataless)
    monkeypatch.setattr(ModuleImage, "relocatable_data", lambda self: None)
    copied, dataless = memory_at_instantiation()
    assert dataless == (False,) * len(dataless)
    assert imaged == copied
    assert imaged != bytes(len(imaged))


def test_generated_modules_are_bounded():
    engine = wasmtime.Engine()
    gen = GeneratedModules(engine, budget_bytes=3000)

    def get(n: int) -> wasmtime.Module:
        """A module defining a memory, with an image of 1000 bytes of n."""
        return gen.get(
            ("m", n),
            lambda: codegen.core_module([], [], None, (1, None)),
            ((("digest", n, 0, 1000),), lambda: [(0, bytes([n]) * 1000)]),
        )

    first = get(0)
    assert gen.get(("m", 0), lambda: pytest.fail("compiled again")) is first
    store = wasmtime.Store(engine)
    memory = wasmtime.Instance(store, first, []).exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    assert bytes(memory.read(store, 0, 1000)) == bytes(1000)
    for n in range(1, 6):
        get(n)
        assert gen.bytes <= 3000
    assert 1 < len(gen) < 6
    assert gen.get(("m", 5), lambda: pytest.fail("the newest was dropped")) is not None
    store = wasmtime.Store(engine)
    memory = wasmtime.Instance(store, get(5), []).exports(store)["memory"]
    assert isinstance(memory, wasmtime.Memory)
    assert bytes(memory.read(store, 0, 1000)) == bytes([5]) * 1000


def test_malformed_data_segments_are_reported_with_their_offset(tmp_path: Path):
    good = wasmtime.wat2wasm('(module (memory 1) (data (i32.const 0) "ab"))')
    at = good.index(b"\x0b\x08\x01")  # data section: id, size, one segment
    bad_flags = good[: at + 3] + b"\x05" + good[at + 4 :]
    with pytest.raises(BinaryFormatError, match="invalid data segment flags 5") as e:
        parse_module(bad_flags, "bad.wasm")
    assert e.value.offset == at + 3
    too_long = good[: at + 7] + b"\x09" + good[at + 8 :]
    with pytest.raises(BinaryFormatError, match="runs past the end of its section"):
        parse_module(too_long, "bad.wasm")


def test_past_the_image_cap_a_module_copies_its_own_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The image is bounded (it is compiled and cached like a module): a
    library whose data would take it past the cap keeps its data."""
    monkeypatch.setattr(recipe, "MAX_IMAGE_BYTES", 8)
    path = write_wat(tmp_path, "libimaged.so", IMAGED)  # 10 bytes of active data
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(path)) as lib:
        assert lib.recipe.dataless == (False,) and lib.recipe.image == ()
        (base,) = lib.call("base")
        assert _read(lib, base, 5) == b"hello"
        assert _read(lib, base + 16, 5) == b"world"


def test_too_many_data_segments_are_refused_before_decoding():
    count = wasmbin.MAX_DATA_SEGMENTS + 1
    body = codegen.uleb(count) + b"\x01\x00" * count  # passive, empty
    module = b"\0asm\1\0\0\0" + b"\x05\x03\x01\x00\x01" + codegen.section(11, body)
    with pytest.raises(BinaryFormatError, match=f"{count} data segments, more than"):
        parse_module(module, "many.wasm")
    limit = codegen.uleb(count - 1) + b"\x01\x00" * (count - 1)
    ok = b"\0asm\1\0\0\0" + b"\x05\x03\x01\x00\x01" + codegen.section(11, limit)
    assert len(parse_module(ok, "ok.wasm").data) == count - 1


def test_past_the_segment_limit_a_module_copies_its_own_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """One generated module holds the image, and wasmtime bounds a module's
    data segments: a library whose segments would pass that keeps them."""
    monkeypatch.setattr(recipe, "MAX_DATA_SEGMENTS", 1)
    path = write_wat(tmp_path, "libimaged.so", IMAGED)  # 2 active segments
    rt = Runtime(library_path=[str(tmp_path)], disk_cache=False)
    with rt.open_library(str(path)) as lib:
        assert lib.recipe.dataless == (False,)
        (base,) = lib.call("base")
        assert _read(lib, base + 16, 5) == b"world"


@pytest.mark.parametrize(
    ("program", "owner", "maker"),
    [
        # libc.so's variant without its data, cached under a name derived
        # from libc.so's digest
        ("hello.wasm", ModuleImage, "_without_active_data"),
        # the module carrying a 4 MiB image, cached under a name made from
        # its other bytes and the image's identity
        ("bigmain.wasm", codegen, "data_section"),
    ],
)
def test_a_disk_cache_hit_builds_nothing_again(
    corpus: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    program: str,
    owner: object,
    maker: str,
):
    """A later process finds what the memory image needs on disk without
    making (and hashing) its bytes: megabytes for a large library."""
    cache = tmp_path / "cache"

    def run() -> int:
        rt = Runtime(library_path=[str(corpus)], environ={}, disk_cache=str(cache))
        return rt.run(str(corpus / program), stdout=os.devnull).exit_code

    assert run() == 0

    def made_again(*_args: object) -> bytes:
        raise AssertionError(f"{maker} called again")

    monkeypatch.setattr(owner, maker, made_again)
    assert run() == 0
