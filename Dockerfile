# syntax=docker/dockerfile:1
# cmux-gevent images. Stages:
#   builder  compiles the LD_PRELOAD shim and builds the wheels (ours and its dependencies)
#   test     runs the test suite:    docker build --target test .
#   runtime  the daemon (default):   docker build -t cmux-gevent .
#            docker run -p 8080:8080 cmux-gevent [--log-level debug ...]
# The runtime image also carries what e2e/e2e.sh needs (python3, curl, PostgreSQL, Node,
# websocket-client): e2e/docker.sh runs the end-to-end suite in it.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The shim changes less often than the Python code: its own layer.
COPY preload/Makefile preload/workspace_net.c preload/
RUN make -C preload
COPY setup.py MANIFEST.in README.md ./
COPY cmux_gevent/ cmux_gevent/
# Our wheel (shim compiled in by setup.py) plus every dependency's, for an offline install.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . websocket-client

FROM builder AS test
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl nodejs postgresql valgrind \
    && rm -rf /var/lib/apt/lists/*
COPY tests/ tests/
COPY e2e/ e2e/
COPY bench/ bench/
COPY tox.ini Dockerfile .dockerignore ./
RUN pip install --no-cache-dir '.[test]' shiv
RUN python -m pytest -q -p no:cacheprovider

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl nodejs postgresql procps \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels cmux-gevent websocket-client \
    && rm -rf /tmp/wheels
COPY --from=builder /src/preload/libworkspace_net.so /usr/local/lib/libworkspace_net.so
COPY e2e/ /opt/cmux-gevent/e2e/
# Every process in the container runs under the shim, as in cmux-proxy's image: it
# rewrites nothing outside a workspace. CMUX_PRELOAD_LIB makes `cmux-gevent preload-path`
# (and so e2e/e2e.sh's SHIM) name the same file.
ENV LD_PRELOAD=/usr/local/lib/libworkspace_net.so \
    CMUX_PRELOAD_LIB=/usr/local/lib/libworkspace_net.so \
    CMUX_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER root
WORKDIR /root
ENTRYPOINT ["cmux-gevent"]
