"""Config: YAML + ${VAR}, secrets that never print, errors that name the field path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, expand_env, load_config, parse_config
from proxy.secret import Secret
from tests.servers import LLM_SIDECAR

EXAMPLE = Path(__file__).parent.parent / "proxy" / "examples" / "sidecar.yaml"


def minimal(**endpoint: object) -> dict:
    return {"model_groups": {"g": {"endpoints": [{"name": "e", "url": "http://127.0.0.1:1/v1", **endpoint}]}}}


def test_a_few_lines_are_enough() -> None:
    config = parse_config(minimal())
    assert config.server.port == 15180 and config.server.admin_port == 15190
    endpoint = config.model_groups["g"].endpoints[0]
    assert endpoint.dialect == "openai" and endpoint.max_concurrent == 64


def test_errors_name_the_field_path() -> None:
    bad = {
        "model_groups": {
            "gpt-4o": {
                "endpoints": [
                    {"name": "a", "url": "http://x/v1"},
                    {"name": "b", "url": "http://y/v1", "max_concurrent": 0},
                ]
            }
        },
        "server": {"prot": 1},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert "model_groups.gpt-4o.endpoints[1].max_concurrent: Input should be greater than or equal to 1" in text
    assert "server.prot: Extra inputs are not permitted" in text


def test_unknown_fallback_group_is_rejected() -> None:
    config = minimal()
    config["model_groups"]["g"]["fallbacks"] = ["nope"]
    with pytest.raises(ConfigError, match="unknown model group 'nope'"):
        parse_config(config)


def test_env_expansion() -> None:
    assert expand_env("a ${X} ${Y:-dflt}", {"X": "1"}) == "a 1 dflt"
    with pytest.raises(ConfigError, match="not set: MISSING"):
        expand_env("${MISSING}", {})


def test_secrets_from_env_and_file_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_KEY", "sk-from-env-123")
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-456\n")
    from_env = parse_config(minimal(api_key_env="TEST_KEY")).model_groups["g"].endpoints[0]
    from_file = parse_config(minimal(api_key_file=str(key_file))).model_groups["g"].endpoints[0]
    assert from_env.api_key.reveal() == "sk-from-env-123"
    assert from_file.api_key.reveal() == "sk-from-file-456"
    config = parse_config(minimal(api_key="sk-literal-789"))
    for text in (repr(config), str(config), config.model_dump_json(), repr(from_env), str(from_file.api_key)):
        assert "sk-" not in text
    assert str(Secret("x")) == "***"


def test_missing_key_sources_are_reported_not_fatal(tmp_path: Path) -> None:
    """A missing key leaves the config usable (serve runs the other groups); check-config and
    serve's log report it by field path (tests/test_missing_key.py runs both commands)."""
    assert parse_config(minimal(api_key_env="NOT_THERE_XYZ")).missing_keys() == [
        "model_groups.g.endpoints[0].api_key_env: environment variable NOT_THERE_XYZ is not set"
    ]
    (tmp_path / "empty").write_text("\n")
    for path, why in (("absent", "cannot read"), ("empty", "is empty")):
        (problem,) = parse_config(minimal(api_key_file=str(tmp_path / path))).missing_keys()
        assert problem.startswith("model_groups.g.endpoints[0].api_key_file: ") and why in problem
    with pytest.raises(ConfigError, match="only one of"):
        parse_config(minimal(api_key="a", api_key_env="HOME"))


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-example")
    config = load_config(EXAMPLE)
    assert set(config.model_groups) == {"gpt-4o-mini", "claude-sonnet"}
    assert config.model_groups["claude-sonnet"].endpoints[0].dialect == "anthropic"


def test_check_config_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("model_groups:\n  g:\n    endpoints:\n      - {name: e, url: 'http://127.0.0.1:1/v1'}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_groups:\n  g:\n    endpoints:\n      - {name: e, url: 'ftp://x', max_concurrent: -1}\n")
    ok = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "ok" in ok.stdout
    failed = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "model_groups.g.endpoints[0].url" in failed.stderr
    assert "model_groups.g.endpoints[0].max_concurrent" in failed.stderr


def test_urls_that_would_swallow_the_operation_path_are_rejected() -> None:
    for url in ("http://x/openai/deployments/d?api-version=2024-06-01", "http://user:pw@x/v1", "http://x/v1#frag"):
        with pytest.raises(ConfigError, match=r"endpoints\[0\].*no query string, fragment or user:password@"):
            parse_config(minimal(url=url))


def test_an_empty_key_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty in the config itself: invalid. Empty in its variable or file (a Secret's empty
    entry): a missing key, reported like an unset one."""
    with pytest.raises(ConfigError, match="key is empty"):
        parse_config(minimal(api_key=" "))
    empty = tmp_path / "key"
    empty.write_text("\n")
    assert "is empty" in parse_config(minimal(api_key_file=str(empty))).missing_keys()[0]
    monkeypatch.setenv("EMPTY_KEY", "")
    assert "EMPTY_KEY is empty" in parse_config(minimal(api_key_env="EMPTY_KEY")).missing_keys()[0]


def test_passwords_in_other_sections_stay_out_of_repr() -> None:
    config = parse_config(
        {
            **minimal(),
            "cache": {"backend": "redis", "redis_url": "redis://:hunter2@h:6379/0"},
            "telemetry": {"tracing": {"enabled": True, "headers": {"Authorization": "Bearer t0k"}}},
        }
    )
    assert "hunter2" not in repr(config) and "t0k" not in repr(config)


def test_check_config_reports_every_error_at_once_by_its_path(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = tmp_path / "sidecar.yaml"
    config.write_text(f"""
server: {{port: 99999, prot: 1}}
model_groups:
  a:
    endpoints:
      - {{name: x, url: "http://h/v1", api_key_env: NOT_SET_XYZ, max_concurrent: 0, max_answer_bytes: 0}}
      - {{name: y, url: "${{UNSET_URL_XYZ}}", api_key: "sk-secret-in-file-123"}}
    fallbacks: [zzz]
    context: {{corpus: nope}}
cache: {{backend: redis}}
retrieval:
  corpora: {{typo: {tmp_path / "absent"}, empty: {tmp_path / "empty"}}}
""")
    result = subprocess.run([LLM_SIDECAR, "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 2
    reported = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert sorted(reported) == sorted(
        [
            "model_groups.a.endpoints[1].url: environment variable not set: UNSET_URL_XYZ",
            "server.port: Input should be less than or equal to 65535",
            "server.prot: Extra inputs are not permitted",
            "model_groups.a.endpoints[0].api_key_env: environment variable NOT_SET_XYZ is not set",
            "model_groups.a.endpoints[0].max_concurrent: Input should be greater than or equal to 1",
            "model_groups.a.endpoints[0].max_answer_bytes: Input should be greater than or equal to 1",
            "model_groups.a.fallbacks[0]: unknown model group 'zzz'",
            "model_groups.a.context.corpus: unknown corpus 'nope'",
            "cache.redis_url: required with backend: redis",
            f"retrieval.corpora.typo: {tmp_path / 'absent'} is not a directory",
            f"retrieval.corpora.empty: no .txt or .md files in {tmp_path / 'empty'}",
        ]
    )
    assert "sk-secret-in-file-123" not in result.stderr + result.stdout


# ---------------------------------------------------------------- parsing bounds

BOMB = (
    "\n".join(
        [f"l0: &l0 [{', '.join(['lol'] * 9)}]"]
        + [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 9)]
    )
    + "\n"
)  # nine lines that stand for 9^9 (387 million) strings once the aliases are copied


def _memory_capped() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # an unbounded parse ends here, not in the machine


@pytest.mark.parametrize(
    "content, error",
    [
        (BOMB, "is too large to be a config: more than 100000 values once its aliases are expanded"),
        ("[" * 5000 + "]" * 5000 + "\n", "is too large to be a config: nested deeper than 32 levels"),
        ("server: {}\n" + "# padding\n" * 120_000, "is larger than 1024 KiB"),
        ("server: {}\n# caf\xe9 au lait\n".encode("latin-1"), "is not UTF-8 text (byte 16)"),
    ],
    ids=["alias-bomb", "deep", "huge", "latin-1"],
)
def test_config_parsing_is_bounded_with_a_one_line_error(tmp_path: Path, content: str | bytes, error: str) -> None:
    path = tmp_path / "sidecar.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = subprocess.run(
        [LLM_SIDECAR, "check-config", str(path)], capture_output=True, text=True, timeout=120, preexec_fn=_memory_capped
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"llm-sidecar: {path} {error}"]


def test_the_admin_port_on_the_proxy_port_is_a_config_error(tmp_path: Path) -> None:
    # check-config said ok, and serve said the port was "already in use; change server.admin_port
    # or stop what holds the port": the sidecar held it itself.
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        "server: {port: 18080, admin_port: 18080}\n"
        "model_groups:\n  g:\n    endpoints:\n      - {name: e, url: 'http://127.0.0.1:1/v1'}\n"
    )
    for command in (["check-config", str(config)], ["serve", "--config", str(config)]):
        done = subprocess.run([LLM_SIDECAR, *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2
        assert "server.admin_port: the proxy's port (server.port) too; give the admin listener its own" in done.stderr
    # Port 0 (any free port) on both is two ports.
    assert parse_config({**minimal(), "server": {"port": 0, "admin_port": 0}}).server.port == 0
