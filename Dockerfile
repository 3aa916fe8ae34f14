# syntax=docker/dockerfile:1
# llm-sidecar: one image, three roles (serve | webhook | mock-provider).

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a virtualenv with the project and its runtime dependencies ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/llm-sidecar
# Metadata first so the dependency layer is reused when only code changes.
COPY pyproject.toml README.md* ./
COPY proxy/ ./proxy/
# The kube extra is for the webhook role; the sidecar never imports it.
RUN /opt/llm-sidecar/bin/pip install ".[kube]" \
 && /opt/llm-sidecar/bin/python -m compileall -q /opt/llm-sidecar/lib

# ---- runtime: the venv only; no compilers, no pip cache, no sources ----
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/llm-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin llm-sidecar
COPY --from=build /opt/llm-sidecar /opt/llm-sidecar
# Runs with a read-only root filesystem; the pod gives it an emptyDir at /tmp.
USER 10001:10001
EXPOSE 15180 15190 8443
# aiohttp drains in-flight calls on SIGTERM (server.drain_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-sidecar"]
CMD ["serve", "--config", "/etc/llm-sidecar/sidecar.yaml"]
