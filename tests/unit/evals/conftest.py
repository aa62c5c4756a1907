from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
if _ROOT not in sys.path:  # `tests.support` without a pytest `pythonpath` setting
    sys.path.insert(0, _ROOT)

from tests.support.fake_judge import FakeJudge, ServerThread  # noqa: E402


@pytest.fixture(scope="session")
def fake_judge() -> Iterator[tuple[FakeJudge, str]]:
    """The scripted judge provider on a real loopback port: ``(provider, base_url)``."""
    provider = FakeJudge()
    with ServerThread(provider.app) as server:
        yield provider, server.url
