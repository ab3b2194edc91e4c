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
