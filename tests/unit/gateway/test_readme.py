"""The README's settings reference is generated from the settings' docstrings; keep it in sync."""

from pathlib import Path

from gateway.config import reference_markdown

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_settings_reference_matches_the_code():
    text = README.read_text()
    start = text.index("<!-- settings-reference:start -->") + len("<!-- settings-reference:start -->")
    end = text.index("<!-- settings-reference:end -->")
    assert text[start:end].strip() == reference_markdown().strip(), "run: shadowtune config reference"


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    assert "shadowtune serve --upstream https://api.openai.com/v1" in text
    assert "\nmake test\n" in text
