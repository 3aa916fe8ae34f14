# syntax=docker/dockerfile:1
# llm-sidecar: two images from one Dockerfile.
#   default target, the sidecar image: serve | mock-provider | inject | check-config (every opted-in pod runs it)
#   --target injector: the same plus the Kubernetes client, for `llm-sidecar webhook` (the injector Deployment)
#   --build-arg EXTRAS=rag: either one with the `rag` extra, for dense and hybrid corpora and `llm-sidecar index`

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the virtualenvs; strip and the pip caches stay in this stage ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# strip: the wheels' extension modules keep their debug symbols (uvloop's is 13 MB, 1.6 MB stripped).
# Not the libraries auditwheel vendors into a wheel's <name>.libs/: patchelf rewrote their program headers, and
# binutils' strip breaks them (numpy's OpenBLAS: "ELF load command address/offset not page-aligned" at import).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY proxy/ ./proxy/

# The sidecar's venv: no pip inside (the base's pip installs into it), no Kubernetes client.
# Bytecode checked by hash, not by the sources' times: COPY --from may round those times, and a
# read-only root cannot cache a recompiled module, so every start would compile it again.
# EXTRAS: extras of the project to add, e.g. --build-arg EXTRAS=rag for dense and hybrid retrieval
# (pymilvus: its gRPC messages for the sidecar, the whole client for `llm-sidecar index`); empty by default.
FROM build AS sidecar-venv
ARG EXTRAS=""
RUN python3 -m venv --without-pip /opt/llm-sidecar \
 && python3 -m pip --python /opt/llm-sidecar/bin/python install --no-compile ".${EXTRAS:+[$EXTRAS]}" \
 && find /opt/llm-sidecar -name '*.so' -not -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && python3 -m compileall -q --invalidation-mode unchecked-hash /opt/llm-sidecar
# The standard library's modules that the sidecar's commands import, for the rootfs stage to compile.
RUN /opt/llm-sidecar/bin/python -c 'import sys, sysconfig, uvloop, proxy.cli, proxy.server, proxy.cache.redis, \
proxy.mock_provider; std = sysconfig.get_path("stdlib") + "/"; files = {getattr(m, "__file__", None) or "" for m in \
list(sys.modules.values())}; print(*sorted(f for f in files if f.startswith(std) and f.endswith(".py")), sep=chr(10))' \
    > /opt/stdlib-imports.txt

# The injector's venv: the same plus the `kube` extra.
FROM sidecar-venv AS injector-venv
RUN python3 -m pip --python /opt/llm-sidecar/bin/python install --no-compile ".[kube]" \
 && find /opt/llm-sidecar -name '*.so' -not -path '*.libs/*' -exec strip --strip-unneeded {} + \
 && python3 -m compileall -q --invalidation-mode unchecked-hash /opt/llm-sidecar

# ---- rootfs: the image's whole root, laid out on the base; the final stages are that tree alone ----
# The image keeps of the base only what the sidecar runs (scripts/image-rootfs.py says what and why): the
# interpreter, the standard library without pip, IDLE, Tk and the like, the shared libraries they load,
# /bin/sh (dash, for `kubectl exec`), CA certificates. No package manager, perl or coreutils.
FROM ${PYTHON_IMAGE} AS rootfs
COPY --from=sidecar-venv /opt/stdlib-imports.txt /tmp/
COPY scripts/image-rootfs.py /tmp/
# Bytecode for the standard-library modules the sidecar imports (the official python images ship none, so
# each start would compile ~190 modules, ~0.4 s of CPU), checked by hash: the tree is copied to the image.
# The stand-in base's own (Debian's) bytecode goes first, so that it keeps what the official image would.
RUN useradd --system --no-log-init --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin llm-sidecar \
 && find "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" -name __pycache__ -prune \
        -exec rm -rf {} + \
 && python3 -m compileall -q --invalidation-mode unchecked-hash -i /tmp/stdlib-imports.txt \
 && rm /tmp/stdlib-imports.txt

FROM rootfs AS sidecar-rootfs
COPY --from=sidecar-venv /opt/llm-sidecar /opt/llm-sidecar
RUN python3 /tmp/image-rootfs.py /opt/llm-sidecar /rootfs

FROM rootfs AS injector-rootfs
COPY --from=injector-venv /opt/llm-sidecar /opt/llm-sidecar
RUN python3 /tmp/image-rootfs.py /opt/llm-sidecar /rootfs

# ---- runtime: one layer, the rootfs; no strip, no pip, no build caches, no package manager ----
# FROM scratch drops the base's ENV: its PATH and LANG are declared again (its GPG_KEY, PYTHON_VERSION and
# PYTHON_SHA256 describe its own build and are not: `python3 -V` gives the version).
FROM scratch AS runtime
ENV PATH=/opt/llm-sidecar/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Runs with a read-only root filesystem; the pod gives it an emptyDir at /tmp.
USER 10001:10001
EXPOSE 15180 15190 8443
# aiohttp drains in-flight calls on SIGTERM (server.drain_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["llm-sidecar"]
CMD ["serve", "--config", "/etc/llm-sidecar/sidecar.yaml"]

FROM runtime AS injector
COPY --from=injector-rootfs /rootfs /

# The last stage is the default target: the sidecar image.
FROM runtime AS sidecar
COPY --from=sidecar-rootfs /rootfs /
