#!/usr/bin/env bash
# End-to-end on a kind cluster: build the image, load it, install the chart,
# deploy the example app in a labelled namespace, and check that its calls go
# through the sidecar (cache hit on the second call, metrics scraped).
#
# Needs: docker, kind, kubectl, helm (scripts/get-helm.sh). Not runnable on
# machines without Docker; `make e2e` runs the same flow with podman (see
# docs/kubernetes.md, "What is checked here").
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cluster=${CLUSTER:-llm-sidecar}
image=localhost/llm-sidecar:0.1.0
injector_image=localhost/llm-sidecar-injector:0.1.0
helm=${HELM:-$(command -v helm || echo "$root/.tools/bin/helm")}
[ -x "$helm" ] || "$root/scripts/get-helm.sh"
keep=${KEEP_CLUSTER:-0}

step() { printf '\n==> %s\n' "$*"; }
cleanup() { [ "$keep" = 1 ] || kind delete cluster --name "$cluster" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step "build $image and $injector_image"
docker build -t "$image" "$root"
docker build --target injector -t "$injector_image" "$root"

step "kind cluster $cluster"
grep -qx "$cluster" <<<"$(kind get clusters)" || kind create cluster --name "$cluster" --config "$root/k8s/kind/cluster.yaml" --wait 120s
kind load docker-image "$image" "$injector_image" --name "$cluster"

step "install the chart"
kubectl create namespace llm-sidecar --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f "$root/k8s/examples/mock-provider.yaml"
"$helm" upgrade --install llm-sidecar "$root/helm/llm-sidecar" -n llm-sidecar \
  -f "$root/k8s/examples/values-kind.yaml" --wait --timeout 180s
"$helm" test llm-sidecar -n llm-sidecar

step "deploy the example app in an opted-in namespace"
kubectl apply -f "$root/k8s/examples/namespace.yaml"
# The injector copies the ConfigMap and Secret into the namespace; wait for them.
for _ in $(seq 60); do
  kubectl -n demo-app get configmap/llm-sidecar-config secret/llm-sidecar-keys >/dev/null 2>&1 && break; sleep 1
done
kubectl -n demo-app get configmap/llm-sidecar-config secret/llm-sidecar-keys
kubectl apply -f "$root/k8s/examples/app.yaml"
kubectl -n demo-app rollout status deploy/chat-app --timeout 180s
kubectl -n demo-app wait --for=condition=complete job/batch-summarize --timeout 180s

step "the pods were injected (and the opted-out one was not)"
pod=$(kubectl -n demo-app get pod -l app=chat-app -o jsonpath='{.items[0].metadata.name}')
test "$(kubectl -n demo-app get pod "$pod" -o jsonpath='{.metadata.annotations.llm-sidecar\.io/status}')" = injected
test "$(kubectl -n demo-app get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}')" = llm-sidecar
test -z "$(kubectl -n demo-app get pod debug-shell -o jsonpath='{.metadata.annotations.llm-sidecar\.io/status}')"

step "calls went through the sidecar: a cache hit after the first call, metrics scraped"
# The app calls every 10 s and its config caches every call: the second call is a hit.
admin=$(kubectl -n demo-app get pod "$pod" -o jsonpath='{.spec.initContainers[0].ports[?(@.name=="llm-admin")].containerPort}')
kubectl -n demo-app port-forward "pod/$pod" "19090:$admin" >/dev/null 2>&1 & pf=$!
trap 'kill "$pf" 2>/dev/null || true; cleanup' EXIT
metrics=""
for _ in $(seq 90); do
  metrics=$(curl -fsS http://127.0.0.1:19090/metrics 2>/dev/null) || metrics=""
  grep -Eq '^llm_sidecar_cache_calls_total\{.*cache_status="hit".*\} [1-9]' <<<"$metrics" && break
  sleep 1
done
# No `grep | head` here: under pipefail, head exiting first kills grep with SIGPIPE and the script.
grep -E -m 20 '^llm_sidecar_(calls|cache_calls)_total' <<<"$metrics" || true
grep -Eq '^llm_sidecar_cache_calls_total\{.*cache_status="hit".*\} [1-9]' <<<"$metrics" \
  || { echo "no cache hit in metrics" >&2; exit 1; }
echo; echo "e2e passed"
