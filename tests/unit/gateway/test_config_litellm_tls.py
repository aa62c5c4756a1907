"""Per-upstream TLS files (``ca_file``, ``cert_file``) work on the direct path only: litellm takes no
per-call CA or client certificate for every provider, so a litellm upstream that names them is
refused at start with one clear line instead of failing (or silently not verifying) each call."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gateway.cli import main


@pytest.mark.parametrize("field", ["ca_file", "cert_file"])
def test_tls_files_on_a_litellm_upstream_are_refused_at_start(tmp_path, field):
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"upstreams:\n  claude: {{provider: anthropic, model: m, {field}: '{pem}'}}\n"
        "routes:\n  bot: {baseline: claude}\n"
    )
    result = CliRunner().invoke(main, ["config", "show", "-c", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "provider 'anthropic' goes through litellm" in result.output
    assert "SSL_CERT_FILE" in result.output


def test_tls_files_on_a_direct_upstream_are_fine(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"upstreams:\n  up: {{base_url: 'https://h/v1', ca_file: '{pem}'}}\n")
    result = CliRunner().invoke(main, ["config", "show", "-c", str(config)])
    assert result.exit_code == 0, result.output
