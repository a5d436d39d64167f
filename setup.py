"""Packaging for cmux-gevent.

`build_py` also compiles the LD_PRELOAD shim (preload/workspace_net.c) into the
package, so `pip install .` ships `cmux_gevent/libworkspace_net.so` to users who
never cloned the repo. The wheel is therefore platform-specific.
"""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_SOURCE = os.path.join("preload", "workspace_net.c")
SHIM_NAME = "libworkspace_net.so"
SHIM_CFLAGS = ["-O2", "-fPIC", "-Wall", "-Wextra", "-Werror", "-shared"]


def compile_shim(out_dir):
    """Compile the shim into `out_dir` with the same flags as preload/Makefile."""
    os.makedirs(out_dir, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    target = os.path.join(out_dir, SHIM_NAME)
    subprocess.check_call([cc, *SHIM_CFLAGS, "-o", target, os.path.join(HERE, SHIM_SOURCE), "-ldl"])


class BuildPyWithShim(build_py):
    """build_py that also drops the compiled shim into the built package."""

    def run(self):
        super().run()
        compile_shim(os.path.join(self.build_lib, "cmux_gevent"))


class BinaryDistribution(Distribution):
    """Marks wheels as platform-specific: they carry a compiled shared object."""

    def has_ext_modules(self):
        return True


def read_readme():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def read_version():
    with open(os.path.join(HERE, "cmux_gevent", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split('"')[1]
    raise RuntimeError("no __version__ in cmux_gevent/__init__.py")


setup(
    name="cmux-gevent",
    version=read_version(),
    description="Header-routed development proxy for many workspaces behind one port",
    long_description=read_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=["cmux_gevent"],
    python_requires=">=3.9",
    install_requires=["gevent>=23.9", "httptools>=0.6", "docopt-ng>=0.9"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "requests>=2.28",
            "websocket-client>=1.6",
            "psutil>=5.9",
            "hypothesis>=6.80",
            "shiv>=1.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "cmux-gevent = cmux_gevent.cli:entry",
            "cmux-proxy = cmux_gevent.cli:entry",
        ],
    },
    cmdclass={"build_py": BuildPyWithShim},
    distclass=BinaryDistribution,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Operating System :: POSIX :: Linux",
        "Topic :: Internet :: Proxy Servers",
        "Framework :: Pytest",
    ],
)
