"""nginx configurations for the bench: the origin and the header-routing proxy.

The proxy is the faithful nginx equivalent of cmux-gevent: the upstream port is
the X-Cmux-Port-Internal value (`proxy_pass http://127.0.0.1:$http_...`), so
there is no upstream{} block and no upstream keep-alive; 1 worker; WebSocket
upgrades via the usual map; no buffering in either direction. nginx cannot
answer CONNECT, so the tunnel comparison uses a `stream {}` TCP relay to the
origin, which is less work than a CONNECT (no head to parse).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

STREAM_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_stream_module.so",
    "/usr/lib64/nginx/modules/ngx_stream_module.so",
)

COMMON = """\
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}.err warn;
"""

TEMP_PATHS = """\
    client_body_temp_path {dir}/{name}_body;
    proxy_temp_path {dir}/{name}_proxy;
    fastcgi_temp_path {dir}/{name}_fcgi;
    uwsgi_temp_path {dir}/{name}_uwsgi;
    scgi_temp_path {dir}/{name}_scgi;
"""

ORIGIN = """\
{load}worker_processes 1;
{common}events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{temp}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location = /ok {{ default_type text/plain; return 200 "ok"; }}
        location = /bulk {{ default_type application/octet-stream; }}
    }}
}}
"""

PROXY = """\
{load}worker_processes {workers};
{common}events {{ worker_connections 16000; multi_accept on; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{temp}    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://127.0.0.1:$http_x_cmux_port_internal;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Cmux-Port-Internal "";
            proxy_set_header X-Cmux-Workspace-Internal "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
        }}
    }}
}}
{stream}"""

STREAM = """\
stream {{
    server {{
        listen 127.0.0.1:{tcp_port} backlog=4096;
        proxy_pass 127.0.0.1:{origin_port};
    }}
}}
"""


def nginx_path() -> str | None:
    """nginx on PATH (Debian installs it in /usr/sbin, on root's PATH only)."""
    return shutil.which("nginx")


def stream_load_line(nginx: str) -> str | None:
    """'' if stream is built in, a load_module line if it is a module file, None if absent."""
    configure = subprocess.run(
        [nginx, "-V"], check=False, capture_output=True, text=True, timeout=10
    ).stderr
    if re.search(r"--with-stream(\s|$)", configure):
        return ""
    for path in STREAM_MODULE_PATHS:
        if os.path.exists(path):
            return f"load_module {path};\n"
    return None


def origin_conf(workdir: Path, port: int) -> Path:
    """Write the origin's config: /ok and /bulk (a file in workdir/www, sent with sendfile)."""
    kv = {"dir": workdir, "name": "origin-nginx"}
    text = ORIGIN.format(
        load="",
        common=COMMON.format(**kv),
        temp=TEMP_PATHS.format(**kv),
        port=port,
        www=workdir / "www",
    )
    return _write(workdir / "origin-nginx.conf", text)


def proxy_conf(
    workdir: Path,
    name: str,
    port: int,
    workers: int,
    stream: str | None,
    tcp_port: int,
    origin_port: int,
) -> Path:
    """Write the header-routing proxy's config (plus the TCP relay when `stream` is not None)."""
    kv = {"dir": workdir, "name": name}
    text = PROXY.format(
        load=stream or "",
        workers=workers,
        common=COMMON.format(**kv),
        temp=TEMP_PATHS.format(**kv),
        port=port,
        stream="" if stream is None else STREAM.format(tcp_port=tcp_port, origin_port=origin_port),
    )
    return _write(workdir / f"{name}.conf", text)


def argv(nginx: str, conf: Path, workdir: Path, name: str) -> list:
    """-e: nginx opens its default error log before reading the config; keep it in workdir."""
    return [nginx, "-c", str(conf), "-p", str(workdir), "-e", str(workdir / f"{name}.err")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
