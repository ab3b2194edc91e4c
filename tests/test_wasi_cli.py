"""WASI through the dynamically linked libc, and the ``wasmrun`` CLI."""

from __future__ import annotations

from pathlib import Path


def test_args_env_stdio_files_and_exit_code_via_cli(cli, corpus: Path, tmp_path: Path):
    (tmp_path / "input.txt").write_text("from the host\n")
    p = cli(
        "run",
        "-L",
        str(corpus),
        "--env",
        "GREETING=bonjour",
        "--dir",
        f"{tmp_path}::/data",
        str(corpus / "io.wasm"),
        "first",
        "--not-an-option",
        "42",
        stdin="shout this\n",
    )
    assert p.returncode == 42, p.stderr
    assert p.stdout.splitlines() == [
        f"arg0={corpus / 'io.wasm'}",
        "arg1=first",
        "arg2=--not-an-option",
        "arg3=42",
        "GREETING=bonjour",
        "stdin=SHOUT THIS",
        "input=from the host",
    ]
    assert p.stderr == "to stderr\n"
    assert (tmp_path / "output.txt").read_text() == "written by the guest\n"


def test_env_inherits_a_host_variable_when_no_value_given(cli, corpus: Path):
    p = cli(
        "run",
        "-L",
        str(corpus),
        "--env",
        "GREETING",
        str(corpus / "io.wasm"),
        env={"GREETING": "from host env"},
        stdin="",
    )
    assert p.returncode == 0, p.stderr
    assert "GREETING=from host env" in p.stdout.splitlines()


def test_unset_env_and_no_preopen(run):
    r = run("io.wasm", stdin="x\n")
    assert r.code == 0
    assert "GREETING=(unset)" in r.out
    assert "input=(cannot open)" in r.out


def test_library_path_from_environment_variable(cli, corpus: Path):
    p = cli("run", str(corpus / "hello.wasm"), env={"WASMRUN_LIBRARY_PATH": str(corpus)})
    assert (p.returncode, p.stdout) == (0, "hello, world\n"), p.stderr


def test_runtime_path_origin_is_searched(cli, tmp_path: Path):
    """The example is linked with RUNTIME_PATH $ORIGIN: it needs no -L."""
    root = Path(__file__).resolve().parent.parent
    p = cli("run", str(root / "examples" / "bin" / "hello.wasm"), "3", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "hello from a dynamically linked program" in p.stdout


def test_ldd_prints_the_diamond_tree(cli, corpus: Path):
    p = cli("ldd", "-L", str(corpus), str(corpus / "diamond.wasm"))
    assert p.returncode == 0, p.stderr
    c = corpus
    assert p.stdout.splitlines() == [
        f"{c / 'diamond.wasm'} (program, dynamically linked)",
        f"    libleft.so => {c / 'libleft.so'}",
        f"        libbase.so => {c / 'libbase.so'}",
        f"            libc.so => {c / 'libc.so'}",
        f"        libc.so => {c / 'libc.so'} (see above)",
        f"    libright.so => {c / 'libright.so'}",
        f"        libbase.so => {c / 'libbase.so'} (see above)",
        f"        libc.so => {c / 'libc.so'} (see above)",
        f"    libbase.so => {c / 'libbase.so'} (see above)",
        f"    libc.so => {c / 'libc.so'} (see above)",
    ]


def test_ldd_reports_unresolved_symbols_and_fails(cli, corpus: Path):
    p = cli("ldd", "-L", str(corpus / "v2"), "-L", str(corpus), str(corpus / "vanishfn.wasm"))
    assert p.returncode == 1
    assert f"    libvanish.so => {corpus / 'v2' / 'libvanish.so'}" in p.stdout
    assert "undefined symbol: vanished_fn (function) in vanishfn.wasm" in p.stdout


def test_ldd_reports_missing_library(cli, corpus: Path):
    p = cli("ldd", "-L", str(corpus), str(corpus / "needsgone.wasm"))
    assert p.returncode == 1
    assert "    libgone.so => not found" in p.stdout


def test_ldd_terminates_on_a_cycle(cli, corpus: Path):
    p = cli("ldd", "-L", str(corpus), str(corpus / "cycmain.wasm"))
    assert p.returncode == 0, p.stderr
    assert f"            libcyca.so => {corpus / 'libcyca.so'} (cycle)" in p.stdout


def test_ldd_of_a_library(cli, corpus: Path):
    p = cli("ldd", "-L", str(corpus), str(corpus / "libleft.so"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"{corpus / 'libleft.so'} (library, dynamically linked)"


def test_cli_usage_errors(cli):
    p = cli("run")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    p = cli("run", "--dir", "::x", "prog.wasm")
    assert p.returncode == 2 and "invalid --dir" in p.stderr


def test_ctrl_c_stops_a_guest_stuck_in_a_loop(corpus: Path):
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WASMRUN_LIBRARY_PATH"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wasmrun.client.cli",
            "run",
            "-L",
            str(corpus),
            str(corpus / "spin.wasm"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout.readline() == b"spinning\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == -signal.SIGINT
    finally:
        proc.kill()
        proc.wait()
