"""Config that would start and then fail every call is refused at start, one clear line each;
the CLI never shows a traceback for a bad file or a bad output path."""

from __future__ import annotations

import os
import sys

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import Settings

GOOD_UPSTREAM = "upstreams:\n  base: {base_url: 'http://127.0.0.1:9/v1'}\n"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        result.exception
    )
    return result.exit_code, result.output


def refused(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    for command in (["config", "show", "-c", str(path)], ["serve", "-c", str(path)]):
        code, output = cli(*command)
        assert code == 1, output
        assert "Traceback" not in output
        assert output.startswith("Error: ")
    return output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "upstreams:\n  base: {base_url: 'http://h/v1', timeout: -1}\n",
            "upstreams.base.timeout: Input should be greater than 0",
        ),
        ("upstreams:\n  base: {base_url: 'http://h/v1', retries: -1}\n", "retries: Input should be greater"),
        (
            "upstreams:\n  base: {base_url: 'ftp://h/v1'}\n",
            "base_url 'ftp://h/v1' must start with http:// or https://",
        ),
        ("upstreams:\n  base: {base_url: 'http:///v1'}\n", "has no host"),
        (
            GOOD_UPSTREAM + "routes:\n  bot: {baseline: base, mode: canary, share: 5}\n",
            "routes.bot: Value error, mode 'canary' needs a candidate",
        ),
        (
            GOOD_UPSTREAM + "routes:\n  bot: {baseline: base, mode: primary}\n",
            "mode 'primary' needs a candidate",
        ),
        (
            GOOD_UPSTREAM + "routes:\n  bot: {baseline: base, mode: off}\n",
            'mode is the boolean false (YAML reads an unquoted off as a boolean): write mode: "off"',
        ),
        (
            GOOD_UPSTREAM + "routes:\n  bot: {baseline: base, candidate: base, mode: canary, share: 500}\n",
            "share is a percentage",
        ),
        ("server: {header_timeout_s: 0}\n", "server.header_timeout_s: Input should be greater than 0"),
        ("server: {passthrough_url: 'file:///etc/passwd'}\n", "must start with http:// or https://"),
        ("server: {public_endpoints: [everything]}\n", "server.public_endpoints.0"),
    ],
    ids=[
        "negative-timeout",
        "negative-retries",
        "ftp-base-url",
        "no-host",
        "canary-without-candidate",
        "primary-without-candidate",
        "yaml-off-boolean",
        "share-over-100",
        "zero-header-timeout",
        "file-passthrough",
        "unknown-public-endpoint",
    ],
)
def test_config_that_would_fail_every_call_is_refused_at_start(tmp_path, text, expected):
    output = refused(tmp_path, text)
    assert expected in output


def test_a_quoted_off_is_fine(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD_UPSTREAM + "routes:\n  bot: {baseline: base, mode: 'off'}\n")
    code, output = cli("config", "show", "-c", str(path))
    assert code == 0, output


def test_a_litellm_provider_without_litellm_installed_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litellm", None)  # importlib finds no litellm
    output = refused(tmp_path, "upstreams:\n  claude: {provider: anthropic, model: claude-x}\n")
    assert "provider 'anthropic' is called through litellm, which is not installed" in output
    assert "pip install 'shadowtune[providers]'" in output
    Settings.model_validate({"upstreams": {"gpt": {"base_url": "http://h/v1"}}})  # OpenAI-compatible: fine


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("server: {port: 8000\n", "config.yaml", "config.yaml, line 2, column 1: not valid YAML"),
        ("server:\n  port: 8000\n   host: x\n", "config.yaml", "line 3, column 8: not valid YAML"),
        ("[server\nport = 1\n", "config.toml", "config.toml: not valid TOML"),
        ("- a list\n", "config.yaml", "the config file must be a mapping"),
    ],
)
def test_a_file_that_does_not_parse_is_one_line(tmp_path, text, name, expected):
    output = refused(tmp_path, text, name)
    assert expected in output
    assert len(output.strip().splitlines()) == 1, output


class TestProviderKeys:
    def test_whitespace_around_a_key_is_stripped_from_the_variable(self, monkeypatch):
        monkeypatch.setenv("EI_KEY", "  sk-abc123\n")
        Settings.model_validate({"upstreams": {"u": {"base_url": "http://h/v1", "api_key_env": "EI_KEY"}}})
        assert os.environ["EI_KEY"] == "sk-abc123"
        monkeypatch.setenv("EI_KEY2", "sk-zzz\r\n")
        Settings.model_validate({"server": {"upstream_key_env": "EI_KEY2"}})
        assert os.environ["EI_KEY2"] == "sk-zzz"

    @pytest.mark.parametrize("key", ["sk-ab\ncd", "sk-ab\tcd", "sk ab", "sk-é", "sk-\x7f"])
    def test_a_key_with_a_control_character_inside_is_refused_at_start(self, tmp_path, monkeypatch, key):
        monkeypatch.setenv("EI_KEY", key)
        output = refused(tmp_path, "upstreams:\n  u: {base_url: 'http://h/v1', api_key_env: EI_KEY}\n")
        assert "the key in the environment variable EI_KEY has the character" in output
        assert key not in output  # the key itself is never echoed

    def test_serve_refuses_a_bad_upstream_key_env(self, monkeypatch):
        monkeypatch.setenv("EI_KEY", "sk-a\nb")
        code, output = cli("serve", "--upstream", "http://127.0.0.1:9/v1", "--upstream-key-env", "EI_KEY")
        assert code == 1
        assert "server.upstream_key_env" in output and "EI_KEY" in output

    def test_an_unset_variable_is_not_an_error(self, monkeypatch):
        monkeypatch.delenv("EI_NOT_SET", raising=False)
        Settings.model_validate(
            {"upstreams": {"u": {"base_url": "http://h/v1", "api_key_env": "EI_NOT_SET"}}}
        )


def test_logs_export_to_a_missing_directory_is_one_line(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    for out in (tmp_path / "missing" / "dir" / "x.jsonl", tmp_path / "missing" / "x.parquet"):
        fmt = "parquet" if out.suffix == ".parquet" else "jsonl"
        code, output = cli("logs", "export", "--log-dir", str(log_dir), "--out", str(out), "--format", fmt)
        assert code == 1, output
        assert "Traceback" not in output
        assert output.strip() == f"Error: cannot write {out}: the directory {out.parent} does not exist"


def test_the_first_key_created_says_how_zero_config_then_needs_upstream_key_env(tmp_path):
    result = CliRunner().invoke(main, ["keys", "create", "app", "--log-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "--upstream-key-env" in result.output
    again = CliRunner().invoke(main, ["keys", "create", "other", "--log-dir", str(tmp_path)])
    assert "--upstream-key-env" not in again.output  # said once, when the gateway leaves open mode
