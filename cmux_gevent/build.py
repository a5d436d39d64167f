"""Build dist/cmux-gevent.pyz, the daemon as one file: `python -m cmux_gevent.build`.

The zipapp is made by shiv from this checkout's wheel (which carries the compiled
shim, see setup.py) plus the wheels of gevent, httptools and docopt-ng, so it runs
with a plain `python3 cmux-gevent.pyz --listen ...` where nothing was installed.
On first run shiv extracts it under ~/.shiv (or $SHIV_ROOT): that is what makes
`preload-path` print a real file usable as LD_PRELOAD.

gevent and httptools are compiled extensions, so the file is for the CPython
minor version and platform that built it (e.g. CPython 3.11 on x86_64 Linux).
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(ROOT, "dist", "cmux-gevent.pyz")
CONSOLE_SCRIPT = "cmux-gevent"
SHEBANG = "/usr/bin/env python3"


def build_wheel(python: str, out_dir: str) -> str:
    """This checkout's wheel (shim compiled in), built into `out_dir`; returns its path."""
    subprocess.check_call(
        [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out_dir, ROOT]
    )
    wheels = glob.glob(os.path.join(out_dir, "cmux_gevent-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one cmux_gevent wheel in {out_dir}, found {wheels}")
    return wheels[0]


def build_pyz(output: str = DEFAULT_OUTPUT, python: str = sys.executable) -> str:
    """Build the zipapp at `output` with `python`'s pip and shiv; returns `output`.

    pip resolves the dependencies from the wheel's metadata (setup.py's
    install_requires), so there is one list of them.
    """
    if not os.path.isfile(os.path.join(ROOT, "setup.py")):
        raise SystemExit(f"{ROOT} is not a source checkout: run this from a clone of cmux-gevent")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cmux-pyz-") as tmp:
        wheel = build_wheel(python, tmp)
        subprocess.check_call(
            [
                python, "-m", "shiv",
                "--console-script", CONSOLE_SCRIPT,
                "--output-file", output,
                "--python", SHEBANG,
                "--compressed",
                "--reproducible",
                wheel,
            ]
        )  # fmt: skip
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=DEFAULT_OUTPUT, help="where to write the .pyz")
    args = parser.parse_args(argv)
    print(build_pyz(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
