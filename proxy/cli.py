"""``llm-sidecar``: serve | demo | mock-provider | check-config | index | cache | inject | webhook."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from proxy.config import Config, ConfigError, load_config, parse_config, with_server


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.server import serve
    from proxy.telemetry.logs import setup_logging

    # The listeners' ports from the command line beat the file's: the injector sets them per
    # pod, while one ConfigMap serves every pod of a namespace. Reloads keep them too.
    overrides = {k: v for k, v in (("port", args.port), ("admin_port", args.admin_port)) if v is not None}
    config = with_server(load_config(args.config), overrides)
    setup_logging(config.telemetry.log_level)
    _run(serve(config, args.config, overrides))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_keys=True)  # serve starts without a missing key; not so here
    groups = ", ".join(
        f"{name} ({len(g.endpoints)} endpoint(s){' + discovered' if g.discover else ''})"
        for name, g in config.model_groups.items()
    )
    print(f"{args.config}: ok: model groups {groups}; cache {config.cache.backend}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from proxy.rag.indexer import run_index

    config = load_config(args.config, require_keys=True)
    return run_index(config, args.corpus)


def _behaviour(spec: str) -> tuple[str, object]:
    """``--behaviour`` parsed up front: a bad value is a usage error, not a traceback."""
    from proxy.mock_provider import Behaviour

    try:
        return Behaviour.parse(spec)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc} (expected MODEL:KEY=VALUE,...)") from None


def cmd_mock_provider(args: argparse.Namespace) -> int:
    from aiohttp import web

    from proxy.listeners import listen_error
    from proxy.mock_provider import build_mock_app

    behaviours = dict(args.behaviour)
    try:
        web.run_app(
            build_mock_app(behaviours),
            host=args.host,
            port=args.port,
            access_log=None,
            print=lambda _: print(f"mock provider on http://{args.host}:{args.port}", flush=True),
        )
    except OSError as exc:
        raise listen_error(args.host, args.port, "mock-provider --port", exc) from None
    return 0


def demo_config(mock_url: str, port: int, admin_port: int) -> Config:
    """Two model groups in front of the mock provider, caching every call in memory."""
    # "always", not the default "deterministic": a repeated demo call shows a cache hit.
    cache = {"mode": "always", "ttl": 600}
    return parse_config(
        {
            "server": {"port": port, "admin_port": admin_port, "admin_host": "127.0.0.1"},
            "model_groups": {
                "gpt-4o-mini": {
                    "cache": cache,
                    "endpoints": [
                        {
                            "name": "mock-openai",
                            "url": f"{mock_url}/v1",
                            "dialect": "openai",
                            "model": "mock-gpt",
                            "api_key": "demo-key",
                        }
                    ],
                },
                "claude-sonnet": {
                    "cache": cache,
                    "endpoints": [
                        {
                            "name": "mock-anthropic",
                            "url": mock_url,
                            "dialect": "anthropic",
                            "model": "mock-claude",
                            "api_key": "demo-key",
                        }
                    ],
                },
            },
        }
    )


DEMO_HELP = """\
llm-sidecar demo is running (Ctrl-C stops it).
  proxy    http://127.0.0.1:{port}   (OpenAI under /v1, Anthropic under /anthropic)
  admin    http://127.0.0.1:{admin_port}/healthz  /readyz  /metrics
  provider http://127.0.0.1:{mock_port}   (the built-in mock provider)

Try it (twice: the second answer says x-llm-sidecar-cache: hit):
  curl -si http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 OPENAI_API_KEY=unused {python} -c '
from openai import OpenAI
r = OpenAI().chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}])
print(r.choices[0].message.content)'
"""


async def _demo(port: int, admin_port: int) -> None:
    import signal

    from aiohttp import web

    from proxy.mock_provider import build_mock_app
    from proxy.server import Servers

    mock_runner = web.AppRunner(build_mock_app(), access_log=None)
    await mock_runner.setup()
    mock_site = web.TCPSite(mock_runner, "127.0.0.1", 0)
    await mock_site.start()
    mock_port = mock_runner.addresses[0][1]
    servers = Servers(demo_config(f"http://127.0.0.1:{mock_port}", port, admin_port))
    await servers.start(settings=("demo --port", "demo --admin-port"))  # the demo has no config file
    # The interpreter running the demo has the SDKs: the snippet works without activating the venv.
    print(
        DEMO_HELP.format(
            port=servers.port, admin_port=servers.admin_port, mock_port=mock_port, python=shlex.quote(sys.executable)
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await servers.stop()
    await mock_runner.cleanup()
    print("demo stopped", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.telemetry.logs import setup_logging

    setup_logging("warning")
    _run(_demo(args.port, args.admin_port))
    return 0


def _version(text: str) -> tuple[int, int]:
    from proxy.kube.sidecar import SettingsError, parse_version

    try:
        return parse_version(text)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_inject(args: argparse.Namespace) -> int:
    from proxy.kube.inject import run

    return run(args)


def cmd_webhook(args: argparse.Namespace) -> int:
    from proxy.kube.webhook import run

    return run(args)


def cmd_cache(args: argparse.Namespace) -> int:
    """``cache export`` / ``cache import``: the shared Redis's entries as JSON lines (``proxy/cache/transfer.py``)."""
    from redis.exceptions import RedisError

    from proxy.cache.redis import async_client
    from proxy.cache.transfer import BadLine, export_entries, import_entries, read_entries

    settings = load_config(args.config).cache
    if settings.backend != "redis":
        raise ConfigError(
            f"{args.config}: cache {args.action} works on a shared Redis (cache.backend: redis); a memory cache "
            "lives inside each sidecar: give it a file with cache.preload instead"
        )

    exporting = args.action == "export"
    path = args.output if exporting else args.input
    try:  # before Redis: a file that cannot be opened is the caller's mistake (exit 2), not Redis failing
        file = _open(path, "wb" if exporting else "rb", sys.stdout.buffer if exporting else sys.stdin.buffer)
    except OSError as exc:
        print(
            f"llm-sidecar: cache {args.action}: cannot {'write' if exporting else 'read'} {path}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2

    async def run() -> str:
        client = async_client(settings)
        try:
            with file as stream:
                if exporting:
                    return f"exported {await export_entries(client, settings.namespace, stream)} entries"
                imported, expired = await import_entries(client, read_entries(stream))
                return f"imported {imported} entries ({expired} expired, skipped)"
        finally:
            await client.aclose()

    try:
        summary = asyncio.run(run())
    except BadLine as exc:
        print(f"llm-sidecar: {args.input}: {exc}", file=sys.stderr)
        return 2
    except (OSError, RedisError) as exc:
        print(f"llm-sidecar: cache {args.action}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    return 0


def _open(path: str, mode: str, standard: Any) -> Any:
    """The file at ``path``, or ``standard`` (stdin/stdout, left open) for ``-``."""
    return contextlib.nullcontext(standard) if path == "-" else open(path, mode)


def port(text: str) -> int:
    """A ``--port`` value; out of range it is a usage error naming the flag, not bind()'s traceback."""
    value = int(text)  # a ValueError: argparse's "invalid port value"
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-sidecar", description="An LLM egress proxy for Kubernetes pods.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy and the admin listener")
    serve.add_argument("--config", "-c", required=True, help="the YAML config file")
    serve.add_argument("--port", type=port, help="proxy port (overrides server.port)")
    serve.add_argument("--admin-port", type=port, help="admin port (overrides server.admin_port)")
    serve.set_defaults(run=cmd_serve)

    check = commands.add_parser("check-config", help="validate a config file without starting")
    check.add_argument("config")
    check.set_defaults(run=cmd_check_config)

    index = commands.add_parser(
        "index",
        help="embed a corpus's changed chunks into the vector store",
        description="For each dense or hybrid corpus of the config: chunk its files, embed the chunks the "
        "vector store does not have yet through the config's own embeddings model group (an in-process sidecar "
        "on a free loopback port, so routing, limits and cache apply), and delete the chunks that are gone.",
    )
    index.add_argument("--config", "-c", required=True, help="the YAML config file")
    index.add_argument("--corpus", action="append", help="only this corpus (repeatable; default: every one)")
    index.set_defaults(run=cmd_index)

    cache = commands.add_parser(
        "cache",
        help="export or import the shared Redis cache's entries (JSON lines)",
        description="export: write the namespace's entries, each with the time it has left, as JSON lines; "
        "import: store such a file's entries that have not expired. Both stream a batch at a time.",
    )
    cache_actions = cache.add_subparsers(dest="action", required=True)
    export = cache_actions.add_parser("export", help="write the cache's entries to a file or stdout")
    export.add_argument("--config", "-c", required=True, help="the YAML config file (its cache section)")
    export.add_argument("--output", "-o", default="-", help="file to write (default: - for stdout)")
    export.set_defaults(run=cmd_cache)
    load = cache_actions.add_parser("import", help="store a file's (or stdin's) entries in the cache")
    load.add_argument("--config", "-c", required=True, help="the YAML config file (its cache section)")
    load.add_argument("--input", "-i", default="-", help="file to read (default: - for stdin)")
    load.set_defaults(run=cmd_cache)

    demo = commands.add_parser("demo", help="the proxy in front of the built-in mock provider")
    demo.add_argument("--port", type=port, default=8080)
    demo.add_argument("--admin-port", type=port, default=9090)
    demo.set_defaults(run=cmd_demo)

    mock = commands.add_parser("mock-provider", help="run the mock OpenAI/Anthropic provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=port, default=8000)
    mock.add_argument(
        "--behaviour",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE,...",
        type=_behaviour,
        help="per-model behaviour, e.g. slow:ttft_ms=200,chunk_delay_ms=10",
    )
    mock.set_defaults(run=cmd_mock_provider)

    # The kube commands import their modules only when run: `serve` never loads them.
    inject = commands.add_parser(
        "inject",
        help="add the sidecar to Kubernetes YAML offline",
        description="Write the YAML with the sidecar injected into every workload's pod template to stdout; "
        "a summary goes to stderr. Running the command is the opt-in: only pods annotated "
        "llm-sidecar.io/inject: disabled are left alone.",
    )
    inject.add_argument("-f", "--filename", required=True, help="YAML file to inject, or - for stdin")
    inject.add_argument("--settings", help="injector.yaml as rendered by the chart (default: chart defaults)")
    inject.add_argument("--image", help="sidecar image (overrides --settings)")
    inject.add_argument(
        "--kube-version",
        type=_version,
        default="1.29",
        help="target cluster version; >= 1.29 gets a native sidecar (default 1.29)",
    )
    inject.add_argument("-n", "--namespace", default="default", help="namespace of objects that name none")
    inject.set_defaults(run=cmd_inject)

    webhook = commands.add_parser(
        "webhook",
        help="serve the sidecar-injecting admission webhook",
        description="Serve the mutating admission webhook over TLS: POST /mutate (AdmissionReview v1), "
        "GET /healthz, GET /readyz.",
    )
    webhook.add_argument("--host", default="127.0.0.1", help="address to bind (the chart passes 0.0.0.0)")
    webhook.add_argument("--port", type=port, default=8443)
    webhook.add_argument("--tls-cert-file", required=True, help="serving certificate (PEM), re-read when it changes")
    webhook.add_argument("--tls-key-file", required=True, help="its private key (PEM)")
    webhook.add_argument("--settings", help="injector.yaml rendered by the chart (default: chart defaults)")
    webhook.add_argument(
        "--cert-reload-interval", type=float, default=30.0, help="seconds between certificate checks (default 30)"
    )
    webhook.add_argument(
        "--no-kube",
        action="store_true",
        help="no API access: only pod annotations opt in, objects are assumed present, no namespace sync",
    )
    webhook.add_argument(
        "--kube-version", type=_version, help="with --no-kube: cluster version (e.g. 1.30) for native sidecars"
    )
    webhook.add_argument(
        "--source-namespace",
        default=os.environ.get("POD_NAMESPACE", ""),
        help="namespace holding the ConfigMap and Secret to copy (default: $POD_NAMESPACE)",
    )
    webhook.add_argument(
        "--resync-seconds",
        type=float,
        default=60.0,
        help="seconds between full resyncs of namespaces and copies (default 60)",
    )
    webhook.add_argument("--log-level", default="info")
    webhook.set_defaults(run=cmd_webhook)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.port and args.port == args.admin_port:
        parser.error("demo: --admin-port is --port too; give each its own")  # it has no config keys to name
    try:
        return args.run(args)
    except ConfigError as exc:  # a config that cannot be used: say why, exit 2, no traceback
        print(f"llm-sidecar: {exc}", file=sys.stderr)
        return 2
