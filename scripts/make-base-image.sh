#!/usr/bin/env bash
# Make a local stand-in for the Dockerfile's base image (python:3.11-slim)
# when no container registry is reachable: a minimal Debian bookworm root
# filesystem with python3 + venv + pip, imported into the project's own image
# store (vfs), never podman's default one: tests/kube/store.py says why.
#
#   scripts/make-base-image.sh [IMAGE_NAME]
#
# The store: graph root /var/lib/llm-sidecar/containers, run root
# /run/llm-sidecar/containers; with LLM_SIDECAR_IMAGE_STORE=DIR, DIR/storage and
# DIR/run (the same definition as tests/kube/store.py's, for the shell).
# Needs root, debootstrap and podman. The Debian mirror is the one apt uses.
set -euo pipefail
name=${1:-python:3.11-slim}
if [ -n "${LLM_SIDECAR_IMAGE_STORE:-}" ]; then
  storage=(--root "$LLM_SIDECAR_IMAGE_STORE/storage" --runroot "$LLM_SIDECAR_IMAGE_STORE/run" --storage-driver vfs)
else
  storage=(--root /var/lib/llm-sidecar/containers --runroot /run/llm-sidecar/containers --storage-driver vfs)
fi
if podman "${storage[@]}" image exists "$name" 2>/dev/null; then
  echo "base image $name already present"; exit 0
fi
mirror=${DEBIAN_MIRROR:-$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1)}
[ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
rootfs=$(mktemp -d); trap 'rm -rf "$rootfs"' EXIT
chmod 0755 "$rootfs"   # mktemp makes it 0700, and it becomes the image's /
debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman "${storage[@]}" import --change 'CMD ["python3"]' - "$name"
