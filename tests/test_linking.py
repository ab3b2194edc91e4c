"""Load-time linking of C programs built by the toolchain (tests/c)."""

from __future__ import annotations

from wasmrun.runtime import LinkOptions


def test_diamond_shares_one_copy_and_runs_constructors_dependencies_first(run):
    r = run("diamond.wasm")
    assert r.code == 0
    lines = r.out.splitlines()
    assert lines[:4] == ["ctor base", "ctor left", "ctor right", "ctor main"]
    # left() and right() both bump libbase's single counter; main sees it too.
    assert lines[4] == "left=10 right=200 base_counter=2"


def test_function_pointers_are_canonical_across_modules(run):
    r = run("fpmain.wasm")
    assert r.code == 0
    assert r.out.splitlines() == [
        "lib_fn_same=1",
        "lib_sees_same=1",
        "main_fn_same=1",
        "callback=1005",
        "libfn_via_ptr=21",
        "null_is_null=1",
        "sorted=1,3,5,7,9",  # qsort in libc.so calls back into main
    ]


def test_data_symbols_and_data_relocations_across_modules(run):
    r = run("datamain.wasm")
    assert r.code == 0
    assert r.out.splitlines() == [
        "shared_value=42",
        "greeting=hello from libdata",
        "numbers_ptr_ok=1",
        "main_value_ptr_ok=1",
        "data_sum=105",
        "lib_reads_main=7",
        "after_bump=101,8",
    ]


def test_weak_undefined_symbols_resolve_to_zero(run):
    r = run("weakmain.wasm")
    assert r.code == 0
    assert r.out.splitlines() == [
        "missing_fn=1",
        "missing_data=1",
        "present_data=42",
        "present_fn=47",
    ]


def test_symbol_precedence_main_first_then_load_order(run):
    r = run("precmain.wasm")
    assert r.code == 0
    # prec1 comes before prec2 in load order; main's hook() beats both.
    assert r.out.splitlines() == ["which=prec1", "prec_value=1", "hook=100"]


def test_preload_comes_right_after_main(run):
    r = run("precmain.wasm", options=LinkOptions(preload=("libprec2.so",)))
    assert r.code == 0
    assert r.out.splitlines() == ["which=prec2", "prec_value=2", "hook=100"]


def test_non_pie_main_with_shared_libraries(run):
    r = run("nopiemain.wasm", "a", "b")
    assert r.code == 3
    assert r.out == "nopie shared_value=43 main_value=6 sum=48 sorted=123 argc=3\n"


def test_needed_cycle_links_through_the_plt(run, runtime, corpus):
    r = run("cycmain.wasm")
    assert r.code == 0
    assert r.out == "cycle=23\n"
    plan = runtime.plan(str(corpus / "cycmain.wasm"))
    names = [m.image.display for m in plan.modules]
    assert names.count("libcyca.so") == 1 and names.count("libcycb.so") == 1
    # The back-edge of the cycle cannot be bound directly.
    assert any(stub.symbol in ("cyca", "cycb") for stub in plan.plt)


def test_plain_wasi_program_without_dylink(run):
    r = run("hello_static.wasm")
    assert (r.code, r.out) == (0, "hello, world\n")


def test_cross_library_calls_are_bound_directly(runtime, corpus):
    plan = runtime.plan(str(corpus / "callloop.wasm"))
    main = plan.root_module
    names = [imp.name for imp in main.image.info.imports]
    binding = main.binds[names.index("add_one")]
    from wasmrun.runtime.plan import BindDirect

    assert isinstance(binding, BindDirect)
    assert plan.modules[binding.owner].image.display == "libcallee.so"


def test_layout_respects_alignment_and_keeps_slot_zero_null(runtime, corpus):
    plan = runtime.plan(str(corpus / "diamond.wasm"))
    assert all(m.table_base >= 1 for m in plan.modules)
    for m in plan.modules:
        dl = m.image.dylink
        assert m.memory_base % (1 << dl.mem_align) == 0
        assert m.table_base % (1 << dl.table_align) == 0
    spans = sorted((m.memory_base, m.memory_base + m.image.dylink.mem_size) for m in plan.modules)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert plan.stack_high <= spans[0][0]
    assert plan.heap_base >= spans[-1][1]


def test_runs_do_not_share_state(run):
    first = run("diamond.wasm")
    second = run("diamond.wasm")
    assert first.out == second.out  # a fresh base_counter each time


def test_embedding_api_calls_a_library_function(runtime, corpus):
    lib = runtime.open_library(str(corpus / "libleft.so"))
    assert lib.call("left") == [10]
    assert lib.call("left") == [20]
    assert lib.call("base_inc") == [3]
    addr = lib.lookup("base_counter")
    assert isinstance(addr, int) and addr > 0


def test_runtime_path_with_origin(run, cli, corpus):
    r = run("rpmain.wasm")
    assert (r.code, r.out) == (0, "rp_twice=42\n")
