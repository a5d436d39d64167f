"""cmux-gevent: one port in front of many workspaces' dev servers.

Importing this package monkey-patches nothing; only the daemon's entry point
(`cmux_gevent.cli.main`) calls `gevent.monkey.patch_all()`.
"""

from .workspace import InvalidWorkspace, workspace_ip

__version__ = "0.1.0"
__all__ = ["InvalidWorkspace", "workspace_ip", "__version__"]
