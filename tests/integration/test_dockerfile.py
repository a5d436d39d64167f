"""The Dockerfile stays consistent with the repo it builds (no Docker engine here).

Each test ties a line of the Dockerfile to the thing it depends on: the files it
COPYs, the Makefile that builds the shim, setup.py's console scripts and Python
versions, the shim lookup (CMUX_PRELOAD_LIB) that e2e/e2e.sh follows, and the path
where e2e/docker.sh expects the suite inside the image.
"""

import ast
import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_captured

from cmux_gevent import preload

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions():
    """[(stage, INSTRUCTION, args text)] with continuations joined and comments dropped."""
    logical, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        if pending + line:
            logical.append(pending + line)
        pending = ""
    result, stage = [], None
    for line in logical:
        word, _, args = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = args.split()[-1] if " AS " in args.upper() else args.split()[0]
        result.append((stage, word, args.strip()))
    return result


def stage_lines(stage, word):
    return [args for s, w, args in instructions() if s == stage and w == word]


def global_args():
    values = {}
    for stage, word, args in instructions():
        if stage is None and word == "ARG":
            name, _, default = args.partition("=")
            values[name] = default
    return values


def env_of(stage):
    """ENV of a stage, `ENV A=1 B=2` form."""
    env = {}
    for args in stage_lines(stage, "ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def copies(stage):
    """[(options, sources, dest)] of a stage's COPY lines."""
    result = []
    for args in stage_lines(stage, "COPY"):
        words = shlex.split(args)
        options = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        result.append((options, paths[:-1], paths[-1]))
    return result


def stages():
    return [s for s, w, _ in instructions() if w == "FROM"]


def setup_call():
    """The keyword arguments of setup(...) in setup.py, as AST nodes."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            return {kw.arg: kw.value for kw in node.keywords}
    raise AssertionError("no setup(...) call in setup.py")


def makefile_var(name):
    text = (REPO / "preload" / "Makefile").read_text()
    match = re.search(rf"^{name}\s*[?:]?=\s*(\S+)", text, re.MULTILINE)
    assert match, f"no {name} in preload/Makefile"
    return match.group(1)


def dockerignore_patterns():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path):
    """Whether .dockerignore keeps `path` (or a directory containing it) out of the context."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern.rstrip("/")) for prefix in prefixes):
            return True
    return False


def tracked_files(source):
    out = subprocess.run(
        ["git", "ls-files", "--", source], cwd=REPO, capture_output=True, text=True, check=False
    )
    return out.stdout.split() if out.returncode == 0 else []


@pytest.mark.timeout(30)
def test_stages_are_builder_test_runtime_with_runtime_the_default():
    assert stages() == ["builder", "test", "runtime"]


@pytest.mark.timeout(30)
def test_every_copied_context_path_exists_and_is_not_dockerignored():
    checked = 0
    for stage in stages():
        for options, sources, _ in copies(stage):
            if any(o.startswith("--from=") for o in options):
                continue
            for source in sources:
                assert (REPO / source).exists(), f"{stage}: COPY {source}: not in the repo"
                assert not ignored(source), f"{stage}: COPY {source} is in .dockerignore"
                for path in tracked_files(source):
                    assert not ignored(path), f"{stage}: {path} (in COPY {source}) is dockerignored"
                checked += 1
    assert checked >= 5


@pytest.mark.timeout(30)
def test_builder_copies_what_the_shim_makefile_needs_before_running_it():
    rule = re.search(
        r"^\$\(LIB\):\s*(.+)$", (REPO / "preload" / "Makefile").read_text(), re.MULTILINE
    )
    assert rule, "no $(LIB): rule in preload/Makefile"
    needed = {f"preload/{dep}" for dep in rule.group(1).split()}
    copied = set()
    for args in [a for s, w, a in instructions() if s == "builder" and w in ("COPY", "RUN")]:
        if "make -C preload" in args:
            break
        if args.split()[-1].rstrip("/") == "preload":
            copied.update(shlex.split(args)[:-1])
    assert needed <= copied, f"builder runs make -C preload without {needed - copied}"


@pytest.mark.timeout(30)
def test_shim_is_copied_to_the_ld_preload_path_that_preload_path_reports():
    workdir = stage_lines("builder", "WORKDIR")[-1]
    built = f"{workdir}/preload/{makefile_var('LIB')}"
    shim_copies = [
        (sources, dest)
        for options, sources, dest in copies("runtime")
        if "--from=builder" in options and sources[0].endswith(".so")
    ]
    assert shim_copies == [([built], shim_copies[0][1])], f"runtime must COPY {built} once"
    dest = shim_copies[0][1]
    assert Path(dest).name == preload.SHIM_NAME == makefile_var("LIB")
    env = env_of("runtime")
    assert env["LD_PRELOAD"] == dest
    # `cmux-gevent preload-path` (and so e2e.sh's SHIM) honours this variable.
    assert env[preload.LIB_ENV] == dest


@pytest.mark.timeout(60)
def test_e2e_shim_default_follows_cmux_preload_lib(tmp_path):
    """In the image CMUX_PRELOAD_LIB names the shim; e2e.sh must end up using that file."""
    lib = tmp_path / "lib" / preload.SHIM_NAME
    lib.parent.mkdir()
    lib.write_bytes(b"")  # only its path matters to --print-config
    cmux = tmp_path / "cmux-gevent"
    cmux.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m cmux_gevent "$@"\n')
    cmux.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SHIM" and not k.startswith("CMUX_")}
    env.update(
        CMUX=str(cmux),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        **{preload.LIB_ENV: str(lib)},
    )
    out = run_captured(
        ["bash", str(REPO / "e2e" / "e2e.sh"), "--print-config"],
        env=env,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    config = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert config["SHIM"] == str(lib)


@pytest.mark.timeout(30)
def test_entrypoint_is_a_console_script_of_setup_py():
    (entrypoint,) = stage_lines("runtime", "ENTRYPOINT")
    command = json.loads(entrypoint)[0]
    scripts = ast.literal_eval(setup_call()["entry_points"])["console_scripts"]
    names = [s.split("=")[0].strip() for s in scripts]
    assert command in names, f"ENTRYPOINT {command} is not one of setup.py's {names}"


@pytest.mark.timeout(30)
def test_listen_and_expose_agree():
    env = env_of("runtime")
    host, _, port = env["CMUX_LISTEN"].rpartition(":")
    assert host == "0.0.0.0"  # reachable through a published port
    assert stage_lines("runtime", "EXPOSE") == [port]


@pytest.mark.timeout(30)
def test_base_image_is_a_pinned_supported_python():
    image = global_args()["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm", image)
    assert match, f"{image}: pin a full Python version on a slim Debian image"
    minor = f"{match.group(1)}.{match.group(2)}"
    kwargs = setup_call()
    assert f"Programming Language :: Python :: {minor}" in ast.literal_eval(kwargs["classifiers"])
    required = ast.literal_eval(kwargs["python_requires"]).lstrip(">=")
    assert tuple(map(int, minor.split("."))) >= tuple(map(int, required.split(".")))
    for stage in ("builder", "runtime"):
        assert stage_lines(stage, "FROM")[0].startswith("${PYTHON_IMAGE}")


@pytest.mark.timeout(30)
def test_runtime_has_what_e2e_needs_and_docker_sh_runs_it_there():
    apt = " ".join(a for a in stage_lines("runtime", "RUN") if "apt-get install" in a).split()
    for package in ("curl", "postgresql", "nodejs"):
        assert package in apt, f"runtime image lacks {package}, which e2e/e2e.sh uses"
    wheels = " ".join(a for a in stage_lines("builder", "RUN") if "pip wheel" in a)
    installs = " ".join(a for a in stage_lines("runtime", "RUN") if "pip install" in a)
    assert "websocket-client" in wheels and "websocket-client" in installs
    e2e_dest = [dest for _, sources, dest in copies("runtime") if sources == ["e2e/"]]
    assert len(e2e_dest) == 1
    docker_sh = (REPO / "e2e" / "docker.sh").read_text()
    match = re.search(r"^E2E_IN_IMAGE=(\S+)$", docker_sh, re.MULTILINE)
    assert match and match.group(1) == e2e_dest[0].rstrip("/") + "/e2e.sh"
    assert "--target runtime" in docker_sh


@pytest.mark.timeout(30)
def test_dockerignore_keeps_host_build_output_out():
    built_shim = f"preload/{makefile_var('LIB')}"
    for path in (built_shim, f"cmux_gevent/{preload.SHIM_NAME}", ".git/config", "dist/x.pyz"):
        assert ignored(path), f"{path} would be sent to the Docker build context"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("docker", ["no-such-docker-command", "failing"])
def test_docker_sh_skips_with_exit_0_when_no_engine_answers(tmp_path, docker):
    if docker == "failing":
        fake = tmp_path / "docker"
        fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
        fake.chmod(0o755)
        docker = str(fake)
    out = run_captured(
        ["bash", str(REPO / "e2e" / "docker.sh")],
        env={**os.environ, "DOCKER": docker},
        timeout=50,
    )
    assert out.returncode == 0, out.stderr
    assert "skipping" in out.stdout
    if docker.endswith("/docker"):
        assert "Cannot connect to the Docker daemon" in out.stdout


def test_test_stage_has_every_repo_path_the_suite_reads():
    """The suite reads `REPO / "<name>"`; the test stage (on top of builder) must hold each."""
    read = set()
    for path in (REPO / "tests").rglob("*.py"):
        read.update(re.findall(r'REPO / "([\w.-]+)"', path.read_text()))
    present = set()
    for stage in ("builder", "test"):
        for _options, sources, _dest in copies(stage):
            present.update(Path(source).parts[0] for source in sources)
    assert read, "the scan found no REPO paths: the pattern no longer matches the suite"
    assert read <= present, f"missing from the Docker test stage: {sorted(read - present)}"
