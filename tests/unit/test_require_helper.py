"""A part a test needs is a skip on a developer's machine and a failure under CI (`.ci/run` provides it)."""

import pytest

from tests.support.require import require


def test_a_missing_part_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="no thing under CI"):
        require(False, "no thing", "install it")


def test_a_missing_part_skips_elsewhere(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"no thing \(install it\)"):
        require(False, "no thing", "install it")
    require(True, "no thing", "install it")  # present: nothing happens
