"""A non-PIE main defines memory, stack and heap itself: its libraries see its
own layout symbols, and their memory stays clear of its heap and stack."""

from __future__ import annotations

from pathlib import Path

from wasmrun.runtime import Runtime
from wasmrun.runtime.plan import PAGE


def test_libraries_see_the_main_heap_and_survive_heavy_malloc(run):
    r = run("nopieheap.wasm")
    assert r.code == 0, r.err
    assert r.out.splitlines() == [
        "heap_base_same=1 heap_end_same=1",  # GOT.mem.__heap_base == the main's &__heap_base
        "allocated=48 MiB view_intact=1 data_intact=1",  # malloc never reached library data
    ]


def test_libraries_are_placed_above_the_main_initial_memory(runtime: Runtime, corpus: Path):
    plan = runtime.plan(str(corpus / "nopieheap.wasm"))
    main = plan.root_module.image
    initial_end = main.info.memories[0].minimum * PAGE
    assert plan.heap_base == main.export_value("__heap_base", 0, 0)
    assert plan.heap_end == main.export_value("__heap_end", 0, 0)
    assert plan.stack_high <= plan.heap_base <= plan.heap_end <= initial_end
    for pm in plan.modules[1:]:
        assert pm.memory_base >= initial_end, pm.image.display
    assert plan.memory_pages * PAGE >= max(
        pm.memory_base + (pm.image.dylink.mem_size if pm.image.dylink else 0)
        for pm in plan.modules[1:]
    )


def test_a_non_pie_main_without_its_stack_pointer_is_a_load_error(tmp_path: Path):
    import pytest
    import wasmtime
    from wasmrun.runtime import LoadError

    (tmp_path / "libsp.so").write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info)) (import "env" "memory" (memory 0))'
            ' (import "env" "__stack_pointer" (global (mut i32))))'
        )
    )
    main = tmp_path / "main.wasm"
    main.write_bytes(
        wasmtime.wat2wasm(
            '(module (@dylink.0 (mem-info) (needed "libsp.so")) (memory (export "memory") 1)'
            ' (table (export "__indirect_function_table") 1 funcref)'
            ' (func (export "_start")))'
        )
    )
    rt = Runtime(library_path=[str(tmp_path)], environ={}, disk_cache=False)
    with pytest.raises(LoadError) as exc:
        rt.run(str(main))
    assert str(exc.value) == (
        f"{main}: non-PIE main does not export __stack_pointer (needed by libsp.so; "
        "link it with --export=__stack_pointer)"
    )
