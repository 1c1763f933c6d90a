# embedq image: the queue server by default; the worker with `--entrypoint embedq-worker`.
#
#   docker build -t embedq .                       # server + worker (ollama/openai backends)
#   docker build -t embedq --build-arg EXTRAS=local .   # plus the in-process local backend
#
# docker-compose.yml builds and runs it; see docs/install.md.

ARG PYTHON_IMAGE=python:3.11-slim

# Build stage: install into a venv, so the runtime image gets no source tree or pip cache.
FROM ${PYTHON_IMAGE} AS build
# Optional extras, comma-separated: "local" adds sentence-transformers (and PyTorch,
# several GB) for BACKEND=local.
ARG EXTRAS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/embedq/venv
WORKDIR /src
COPY . .
RUN /opt/embedq/venv/bin/pip install "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
# Same path as on bare metal (docs/install.md): one layout to document and debug.
COPY --from=build /opt/embedq/venv /opt/embedq/venv
# SERVER_HOST: loopback inside a container is unreachable from outside it. The server
# refuses a non-loopback address without AUTH_TOKEN and WORKER_TOKEN, so a bare
# `docker run` fails loudly instead of serving an open queue.
ENV PATH=/opt/embedq/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EMBEDQ_DATA_DIR=/var/lib/embedq/data \
    SERVER_HOST=0.0.0.0 \
    SERVER_PORT=8000

# A fixed non-root uid/gid, so volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 embedq \
 && useradd --system --uid 10001 --gid embedq --home-dir /var/lib/embedq --create-home \
        --shell /usr/sbin/nologin embedq
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/embedq

EXPOSE 8000
# No curl in the slim image: Python's urllib asks /health (no token needed); any
# error or non-2xx status exits non-zero. The worker has no port: compose disables
# this check for it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SERVER_PORT', '8000'), timeout=4)"]

# Exec form, no shell in between: `docker stop` delivers SIGTERM to the server itself,
# which drains for SHUTDOWN_GRACE (compose gives it 45 s before SIGKILL; plain
# `docker stop` needs `-t 45`). `docker run embedq migrate` runs another subcommand.
ENTRYPOINT ["embedq-server"]
CMD ["serve"]
