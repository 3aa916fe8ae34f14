"""``llm-sidecar webhook``: the sidecar injector as an AdmissionReview v1 server over TLS.

A thin edge around :func:`proxy.kube.sidecar.plan`:

    POST /mutate   AdmissionReview in → AdmissionReview out (JSONPatch, base64)
    GET  /healthz  liveness;  GET /readyz  readiness (namespace view loaded)

It never blocks pod creation on its own failure: anything that goes wrong
while deciding answers ``allowed: true`` without a patch, logs why, and adds an
admission warning. (The MutatingWebhookConfiguration's ``failurePolicy:
Ignore`` covers the cases where we cannot answer at all.)

The TLS certificate is re-read when its files change, so cert-manager or a
``helm upgrade`` can rotate it without a restart. The ``kubernetes`` client is
imported only here (through :mod:`proxy.kube.namespaces`), never by the sidecar;
the sidecar image leaves it out, the injector image (``--target injector``) has it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from proxy.kube.sidecar import Context, SettingsError, SidecarSettings, plan

log = logging.getLogger("llm_sidecar.webhook")


class NamespaceView(Protocol):
    """What the webhook needs to know about a namespace to decide for a pod in it."""

    async def context(self, namespace: str) -> Context: ...

    def ready(self) -> bool: ...


@dataclass
class StaticView:
    """A fixed view: for tests and for ``--no-kube`` (no API access at all).

    ``objects`` ``None`` means "assume the ConfigMap and Secret exist".
    """

    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    objects: Mapping[str, frozenset[str]] | None = None
    kube_version: tuple[int, int] | None = None

    async def context(self, namespace: str) -> Context:
        present = None if self.objects is None else frozenset(self.objects.get(namespace, ()))
        return Context(
            namespace=namespace,
            namespace_labels=dict(self.labels.get(namespace, {})),
            kube_version=self.kube_version,
            objects_present=present,
        )

    def ready(self) -> bool:
        return True


def _response(uid: str, patch: list[dict[str, Any]] | None, warnings: list[str]) -> dict[str, Any]:
    resp: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        resp["patchType"] = "JSONPatch"
        resp["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
    if warnings:
        resp["warnings"] = warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}


async def review(body: Any, settings: SidecarSettings, view: NamespaceView) -> dict[str, Any]:
    """Answer one AdmissionReview; raises ValueError only on a body that is not one (any JSON may come)."""
    request = body.get("request") if isinstance(body, Mapping) else None
    if not isinstance(request, dict) or body.get("kind") != "AdmissionReview" or "uid" not in request:
        raise ValueError("not an admission.k8s.io/v1 AdmissionReview with a request.uid")
    uid = request["uid"]
    pod = request.get("object")
    # The API server sends these typed; a body that is not (any client can post one) is a 400, not a crash.
    if not isinstance(request.get("kind") or {}, dict) or not isinstance(pod, dict | None):
        raise ValueError("not an AdmissionReview: request.kind and request.object must be objects")
    if pod is not None and not isinstance(pod.get("metadata") or {}, dict):
        raise ValueError("not an AdmissionReview: request.object.metadata must be an object")
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation", "CREATE") != "CREATE" or not isinstance(pod, dict):
        return _response(uid, None, [])
    # On CREATE a pod from a controller has no name yet and may carry no namespace.
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    name = (pod.get("metadata") or {}).get("name") or (pod.get("metadata") or {}).get("generateName", "?")
    try:
        decision = plan(pod, settings, await view.context(namespace))
    except Exception:  # never block pod creation on our own bug
        log.exception("injection failed for %s/%s; admitting unchanged", namespace, name)
        return _response(uid, None, ["llm-sidecar: injection failed, pod admitted without the sidecar"])
    if decision.injected:
        log.info("injected %s/%s", namespace, name)
        return _response(uid, decision.patch, [])
    log.info("skipped %s/%s: %s", namespace, name, "; ".join(decision.reasons))
    # Only tell the user when they asked for injection and did not get it.
    asked = not any(r.startswith(("not opted in", "already injected", "namespace ")) for r in decision.reasons)
    warnings = [f"llm-sidecar not injected: {r}" for r in decision.reasons] if asked else []
    return _response(uid, None, warnings)


#: seconds a client has for its request head, then again for its body (and an idle keep-alive lasts)
HEADER_TIMEOUT = 15.0

SETTINGS = web.AppKey("settings", SidecarSettings)
VIEW = web.AppKey("view", NamespaceView)


async def _mutate(request: web.Request) -> web.Response:
    try:
        # The header timeout ends with the head; a body that stops coming would hold the
        # connection (busy, never evicted past the cap) for good.
        async with asyncio.timeout(HEADER_TIMEOUT):
            body = await request.json()
    except TimeoutError:
        return web.json_response({"error": f"request body not received within {HEADER_TIMEOUT:g} s"}, status=408)
    except (ValueError, json.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    try:
        answer = await review(body, request.app[SETTINGS], request.app[VIEW])
    except (ValueError, json.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(answer)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    if request.app[VIEW].ready():
        return web.Response(text="ok\n")
    return web.Response(text="namespace view not loaded\n", status=503)


def build_app(settings: SidecarSettings, view: NamespaceView) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[SETTINGS] = settings
    app[VIEW] = view
    app.router.add_post("/mutate", _mutate)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


class ReloadingCert:
    """An SSL context whose certificate is re-read when the files change (rotation)."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: tuple[float, float] | None = None
        self.reload()

    def _mtimes(self) -> tuple[float, float]:
        return os.stat(self.cert_file).st_mtime, os.stat(self.key_file).st_mtime

    def reload(self) -> bool:
        stamp = self._mtimes()
        if stamp == self._stamp:
            return False
        # New handshakes use the new chain; open connections keep theirs.
        self.context.load_cert_chain(self.cert_file, self.key_file)
        self._stamp = stamp
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                if self.reload():
                    log.info("reloaded TLS certificate %s", self.cert_file)
            except (OSError, ssl.SSLError) as exc:  # half-written during rotation: retry next tick
                log.warning("could not reload TLS certificate: %s", exc)


def _cert_watch(cert: ReloadingCert, interval: float):  # noqa: ANN202 - cleanup_ctx shape
    async def ctx(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(cert.watch(interval))
        yield
        task.cancel()

    return ctx


def run(args: argparse.Namespace) -> int:
    """``llm-sidecar webhook`` (its arguments are defined in :mod:`proxy.cli`)."""
    from proxy.kube.inject import load_settings
    from proxy.listeners import run_app
    from proxy.telemetry.logs import setup_logging

    setup_logging(args.log_level)
    if not args.no_kube and importlib.util.find_spec("kubernetes") is None:
        log.error(
            "cannot start: the Kubernetes client is not installed (the sidecar image leaves it out): run the "
            "injector image (the Dockerfile's injector target), install llm-sidecar[kube], or pass --no-kube"
        )
        return 2
    try:
        settings = load_settings(args.settings)
        cert = ReloadingCert(args.tls_cert_file, args.tls_key_file)
    except (OSError, SettingsError, ssl.SSLError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    if args.no_kube:
        view: Any = StaticView(kube_version=args.kube_version)
    else:
        from proxy.kube.namespaces import KubeNamespaces  # imports the kubernetes client

        try:
            view = KubeNamespaces(settings, source_namespace=args.source_namespace, resync_seconds=args.resync_seconds)
        except Exception as exc:  # noqa: BLE001 - the client's ConfigException: neither in a pod nor a kubeconfig
            log.error("cannot reach the Kubernetes API (%s): run it in a pod, set KUBECONFIG, or pass --no-kube", exc)
            return 2
    app = build_app(settings, view)
    if hasattr(view, "cleanup_ctx"):
        app.cleanup_ctx.append(view.cleanup_ctx)
    app.cleanup_ctx.append(_cert_watch(cert, args.cert_reload_interval))
    # Only the API server calls it: a small cap, and a short idle/header timeout.
    run_app(
        app,
        host=args.host,
        port=args.port,
        setting="webhook --port",
        ssl_context=cert.context,
        max_connections=256,
        keepalive_timeout=HEADER_TIMEOUT,
        shutdown_timeout=5,
    )
    return 0
