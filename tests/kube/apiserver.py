"""A stand-in for the Kubernetes API server: the calls the injector's namespace sync and the
sidecar's EndpointSlice discovery make.

No API server can run on these machines, and the injector Deployment's default
arguments (no ``--no-kube``) make the webhook list namespaces, watch them, and
copy the sidecar's ConfigMap and Secret into opted-in namespaces. This serves
those calls over HTTPS from an in-memory store loaded from manifests (the
chart's rendered output, the example namespace), so the injector runs with its
exact arguments. EndpointSlices (``EndpointSlices``) are served with real list and watch
semantics: resourceVersions, bookmarks, 410 Gone. Not modelled: selectors other than
``metadata.name`` (and ``kubernetes.io/service-name`` for slices), resourceVersions of the
other kinds, admission, RBAC (the token is not checked).

    python -m tests.kube.apiserver --port 6443 --cert tls.crt --key tls.key --objects a.yaml [b.yaml ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import yaml
from aiohttp import web

VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.0",
    "gitCommit": "stand-in",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.22",
    "compiler": "gc",
    "platform": "linux/amd64",
}
KINDS = {"namespaces": "Namespace", "configmaps": "ConfigMap", "secrets": "Secret"}


def _stored(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server keeps: stringData folded into base64 data, a uid and a resourceVersion."""
    obj = json.loads(json.dumps(obj))
    if obj.get("kind") == "Secret" and obj.get("stringData"):
        data = obj.setdefault("data", {}) or {}
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()})
        obj["data"] = data
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", f"uid-{meta.get('namespace', '')}-{meta['name']}")
    meta["resourceVersion"] = "1"
    return obj


class Store:
    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.items: dict[tuple[str, str, str], dict[str, Any]] = {}
        for obj in objects:
            if obj.get("kind") in KINDS.values():
                self.put(obj)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = _stored(obj)
        self.items[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        return obj

    def listing(self, kind: str, namespace: str | None, name: str | None) -> list[dict[str, Any]]:
        return [
            o
            for (k, ns, n), o in sorted(self.items.items())
            if k == kind and (namespace is None or ns == namespace) and (name is None or n == name)
        ]


def _field_name(request: web.Request) -> str | None:
    selector = request.query.get("fieldSelector", "")
    return selector.split("=", 1)[1] if selector.startswith("metadata.name=") else None


def _not_found(kind: str, name: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
            "message": f'{kind.lower()}s "{name}" not found',
        },
        status=404,
    )


class EndpointSlices:
    """EndpointSlices as the API server serves them: every change gets the next resourceVersion;
    a watch resumes from a version it still remembers, else ends with a 410 Gone ERROR event.

    The tests change the slices (``put``, ``delete``), send ``bookmark`` events, forget the
    history (``expire``: old versions are Gone) and end the open watches (``end_watches``).
    """

    def __init__(self) -> None:
        self.version = 100
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        #: (resourceVersion, event type, object) since the oldest version a watch may resume from
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.oldest = self.version
        self.watchers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        #: (``list`` or ``watch``, the resourceVersion asked for, the answer's status) per request
        self.requests: list[tuple[str, str | None, int]] = []
        #: answer every call with 403 Forbidden, as the API server does without the RBAC
        self.forbidden = False

    def _record(self, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, kind, obj))
        for queue in self.watchers:
            queue.put_nowait({"type": kind, "object": obj})

    def put(self, obj: dict[str, Any]) -> None:
        obj = json.loads(json.dumps(obj))
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        meta.setdefault("uid", f"uid-{meta['name']}")
        self._record("MODIFIED" if key in self.items else "ADDED", obj)
        self.items[key] = obj

    def delete(self, namespace: str, name: str) -> None:
        obj = self.items.pop((namespace, name))
        self._record("DELETED", json.loads(json.dumps(obj)))

    def bookmark(self) -> None:
        """A BOOKMARK event to every watch: only the newest resourceVersion, no object."""
        mark = {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1"}
        for queue in self.watchers:
            queue.put_nowait(
                {"type": "BOOKMARK", "object": {**mark, "metadata": {"resourceVersion": str(self.version)}}}
            )

    def expire(self) -> None:
        """Compact the history at the current version (etcd): a watch from an older one gets 410 Gone."""
        self.history.clear()
        self.oldest = self.version

    def end_watches(self) -> None:
        for queue in self.watchers:
            queue.put_nowait(None)

    def matching(self, namespace: str, selector: str) -> Callable[[dict[str, Any]], bool]:
        name, _, value = selector.partition("=")

        def match(obj: dict[str, Any]) -> bool:
            meta = obj["metadata"]
            return meta.get("namespace") == namespace and (not name or (meta.get("labels") or {}).get(name) == value)

        return match

    async def handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        if self.forbidden:
            self.requests.append(("forbidden", request.query.get("resourceVersion"), 403))
            user = "system:serviceaccount:apps:default"
            message = (
                f'endpointslices.discovery.k8s.io is forbidden: User "{user}" cannot list resource '
                f'"endpointslices" in API group "discovery.k8s.io" in the namespace "{namespace}"'
            )
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403}
            return web.json_response({**status, "metadata": {}, "message": message}, status=403)
        match = self.matching(namespace, request.query.get("labelSelector", ""))
        if request.query.get("watch", "").lower() not in ("true", "1"):
            self.requests.append(("list", request.query.get("resourceVersion"), 200))
            items = [o for _, o in sorted(self.items.items()) if match(o)]
            return web.json_response(
                {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": items,
                }
            )
        since = int(request.query["resourceVersion"])
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        if since < self.oldest:
            self.requests.append(("watch", str(since), 410))
            gone = {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {since} ({self.oldest})",
                "reason": "Expired",
                "code": 410,
            }
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        self.requests.append(("watch", str(since), 200))
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        for version, kind, obj in self.history:
            if version > since:
                queue.put_nowait({"type": kind, "object": obj})
        self.watchers.add(queue)
        try:
            deadline = asyncio.get_running_loop().time() + float(request.query.get("timeoutSeconds", "60"))
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    change = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
                if change is None:
                    break
                if change["type"] == "BOOKMARK" or match(change["object"]):
                    await response.write(json.dumps(change).encode() + b"\n")
        finally:
            self.watchers.discard(queue)
        return response


def build_app(store: Store, slices: EndpointSlices | None = None) -> web.Application:
    async def version(_: web.Request) -> web.Response:
        return web.json_response(VERSION)

    async def collection(request: web.Request) -> web.StreamResponse:
        kind = KINDS[request.match_info["resource"]]
        namespace = request.match_info.get("namespace")
        items = store.listing(kind, namespace, _field_name(request))
        if request.query.get("watch", "").lower() in ("true", "1"):
            # Current objects as ADDED events, then an idle stream until the client's timeout.
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            await resp.prepare(request)
            for item in items:
                await resp.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
            await asyncio.sleep(float(request.query.get("timeoutSeconds", "60")))
            await resp.write_eof()
            return resp
        return web.json_response(
            {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {"resourceVersion": "1"}, "items": items}
        )

    async def create(request: web.Request) -> web.Response:
        obj = await request.json()
        obj.setdefault("metadata", {})["namespace"] = request.match_info["namespace"]
        return web.json_response(store.put(obj), status=201)

    async def item(request: web.Request) -> web.Response:
        kind = KINDS[request.match_info["resource"]]
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        key = (kind, namespace, name)
        if request.method == "PUT":
            if key not in store.items:
                return _not_found(kind, name)
            return web.json_response(store.put(await request.json()))
        if key not in store.items:
            return _not_found(kind, name)
        if request.method == "DELETE":
            del store.items[key]
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        return web.json_response(store.items[key])

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/version/", version)
    app.router.add_get("/api/v1/{resource:namespaces|configmaps|secrets}", collection)
    app.router.add_get("/api/v1/namespaces/{namespace}/{resource:configmaps|secrets}", collection)
    app.router.add_post("/api/v1/namespaces/{namespace}/{resource:configmaps|secrets}", create)
    app.router.add_route("*", "/api/v1/namespaces/{namespace}/{resource:configmaps|secrets}/{name}", item)
    if slices is not None:
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", slices.handle)
    return app


def main() -> None:
    import ssl

    p = argparse.ArgumentParser(prog="python -m tests.kube.apiserver")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--objects", nargs="+", default=[], help="YAML files; Namespaces, ConfigMaps, Secrets are kept")
    args = p.parse_args()
    objects: list[dict[str, Any]] = []
    for path in args.objects:
        with open(path, encoding="utf-8") as f:
            objects += [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    web.run_app(
        build_app(Store(objects)),
        host=args.host,
        port=args.port,
        ssl_context=ctx,
        access_log=None,
        print=lambda _: print(f"api server stand-in on https://{args.host}:{args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
