"""A stand-in for the Kubernetes API server: just the calls the injector's namespace sync makes.

No API server can run on these machines, and the injector Deployment's default
arguments (no ``--no-kube``) make the webhook list namespaces, watch them, and
copy the sidecar's ConfigMap and Secret into opted-in namespaces. This serves
those calls over HTTPS from an in-memory store loaded from manifests (the
chart's rendered output, the example namespace), so the injector runs with its
exact arguments. Not modelled: selectors other than ``metadata.name``,
resourceVersions, admission, RBAC (the token is not checked).

    python -m tests.kube.apiserver --port 6443 --cert tls.crt --key tls.key --objects a.yaml [b.yaml ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
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


def build_app(store: Store) -> web.Application:
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
