"""`python -m cmux_gevent`: the same as the `cmux-gevent` console script."""

from .cli import entry

entry()
