"""The benchmark in bench/ runs end to end in its --smoke mode, as CI runs it.

Real processes throughout: bench.py starts the daemon from this tree, the
upstreams and (when installed) nginx and wrk, measures, and must stop all of
them. A second run hides nginx and wrk from PATH: the bench must fall back to
its Python origin and load generator and say so, not crash.
"""

import json
import re
import sys
from pathlib import Path

import psutil
import pytest
from conftest import run_captured

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "bench.py"


def run_bench(tmp_path, *args, env=None):
    results = tmp_path / "results.json"
    proc = run_captured(
        [sys.executable, str(BENCH), "--smoke", "--json", str(results), *args],
        cwd=str(REPO),
        timeout=150,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(results.read_text())


def table_row(stdout: str, system: str):
    """The cells of `system`'s row in the first (medians) table."""
    for line in stdout.splitlines():
        if line.startswith(f"| {system} |"):
            return [cell.strip() for cell in line.strip("|").split("|")][1:]
    raise AssertionError(f"no row for {system} in:\n{stdout}")


def assert_all_stopped(data):
    for started in data["processes"]:
        try:
            alive = psutil.Process(started["pid"]).cmdline() == started["argv"]
        except psutil.NoSuchProcess:
            continue
        assert not alive, f"left running: {started}"


def number(cell: str) -> float:
    assert re.fullmatch(r"[\d.]+", cell), f"not a measurement: {cell!r}"
    return float(cell)


@pytest.mark.timeout(200)
def test_smoke_run_measures_cmux_and_direct_and_cleans_up(tmp_path):
    stdout, data = run_bench(tmp_path)
    cmux, direct = table_row(stdout, "cmux"), table_row(stdout, "direct")
    header = next(line for line in stdout.splitlines() if line.startswith("| system |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    for label in ("GET req/s ↑", "GET p99 ms ↓", "bulk MB/s ↑", "CONNECT MB/s ↑"):
        assert number(cmux[columns.index(label)]) > 0
        assert number(direct[columns.index(label)]) > 0
    assert number(cmux[columns.index("WS idle KiB/conn ↓")]) >= 0
    assert "Ratio to direct" in stdout
    errors = [r for r in data["records"] if r.get("error")]
    assert not errors, errors
    bulk = [r for r in data["records"] if r["scenario"] == "bulk" and r["system"] == "cmux"]
    assert bulk and bulk[0]["bytes"] == 16 << 20
    idle = [r for r in data["records"] if r["scenario"] == "ws-idle" and r["system"] == "cmux"]
    assert idle and idle[0]["opened"] == 50
    assert_all_stopped(data)


@pytest.mark.timeout(200)
def test_missing_nginx_and_wrk_are_skipped_with_a_note(tmp_path):
    env = {"PATH": str(tmp_path / "empty-bin"), "HOME": str(tmp_path)}
    stdout, data = run_bench(
        tmp_path, "--systems", "direct,cmux,nginx", "--scenarios", "get,bulk", env=env
    )
    assert "nginx not found" in stdout and "wrk not found" in stdout
    assert not any(line.startswith("| nginx |") for line in stdout.splitlines())
    assert data["origin"] == "python" and data["generator"] == "python"
    assert data["systems"] == ["direct", "cmux"]
    get = [r for r in data["records"] if r["scenario"] == "get" and r["system"] == "cmux"]
    assert get and get[0]["requests"] > 0 and not get[0].get("error")
    assert_all_stopped(data)
