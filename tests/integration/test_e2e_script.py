"""e2e/e2e.sh's interface, without running the suite (tox -e e2e and .ci/run do):
shellcheck-clean, every setting documented in --help, clear exits for misuse.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_captured

REPO = Path(__file__).resolve().parents[2]
E2E = REPO / "e2e" / "e2e.sh"
SCRIPTS = [E2E, REPO / "e2e" / "docker.sh"]


@pytest.fixture
def cmux(tmp_path):
    """A stand-in daemon command running this checkout, so no install is needed."""
    path = tmp_path / "cmux-gevent"
    path.write_text(f'#!/bin/sh\nexec {sys.executable} -m cmux_gevent "$@"\n')
    path.chmod(0o755)
    return str(path)


def run_e2e(*args, **env):
    return run_captured(
        ["bash", str(E2E), *args],
        env={**os.environ, **env},
        timeout=60,
    )


@pytest.mark.timeout(60)
def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    out = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=50, check=False
    )
    assert out.returncode == 0, out.stdout


@pytest.mark.timeout(60)
def test_help_documents_every_setting_print_config_reports(cmux):
    config = run_e2e("--print-config", CMUX=cmux, PYTHONPATH=str(REPO), SHIM="/x.so")
    assert config.returncode == 0, config.stderr
    names = [line.split("=", 1)[0] for line in config.stdout.splitlines()]
    assert "SHIM" in names and "STRESS_N" in names
    help_text = run_e2e("--help").stdout
    for name in names:
        assert f"  {name} " in help_text or f"  {name}=" in help_text, f"{name} not in --help"


@pytest.mark.timeout(60)
def test_unknown_argument_exits_2_with_usage():
    out = run_e2e("--bogus")
    assert out.returncode == 2
    assert "Usage: e2e/e2e.sh" in out.stderr


@pytest.mark.timeout(60)
def test_missing_daemon_is_a_prerequisite_error_not_a_failure():
    out = run_e2e(CMUX="no-such-cmux-gevent-command")
    assert out.returncode == 2
    assert "MISSING" in out.stderr and "no-such-cmux-gevent-command" in out.stderr


@pytest.mark.timeout(60)
def test_busy_explicit_port_is_refused_before_anything_starts(tmp_path, cmux):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        shim = tmp_path / "libworkspace_net.so"
        shim.write_bytes(b"")
        out = run_e2e(
            CMUX=cmux,
            PYTHONPATH=str(REPO),
            SHIM=str(shim),
            PORT=str(port),
            SKIP_PG="1",
            SKIP_NODE="1",
        )
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"PORT={port} is in use" in out.stderr
