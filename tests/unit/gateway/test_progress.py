"""Progress bars: listeners see every update with an ETA, bars stay off under --json, numbers are rounded."""

from __future__ import annotations

import io
import sys

import pytest

from gateway import progress
from gateway.progress import Bar, listening, rounded


def test_listeners_see_progress_with_an_eta_and_the_end():
    seen: list[dict] = []
    with listening(seen.append), Bar(4, "train", every_s=0.0) as bar:
        bar.update(1, loss=1.23456789)
        bar.set(2)
    assert [s["done"] for s in seen] == [1, 2, 2]
    assert seen[0]["loss"] == 1.235 and seen[0]["total"] == 4 and seen[1]["eta_s"] is not None
    assert seen[-1]["label"] == "train"


def test_a_listener_error_never_breaks_the_work_unless_it_means_to():
    def broken(_: dict) -> None:
        raise ValueError("disk full")

    class Stop(Exception):
        stops_work = True

    def stop(_: dict) -> None:
        raise Stop

    with listening(broken), Bar(2, "x", every_s=0.0) as bar:
        bar.update(1)  # swallowed
    with pytest.raises(Stop), listening(stop), Bar(2, "x", every_s=0.0) as bar:
        bar.update(1)


def test_bars_draw_on_a_terminal_and_stay_quiet_under_json(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("SHADOWTUNE_PROGRESS", "1")
    monkeypatch.setattr(sys, "argv", ["shadowtune", "triggers", "run"])
    with Bar(3, "eval", unit="ex") as bar:
        bar.update(3)
    assert "eval" in err.getvalue() and "3/3" in err.getvalue()
    monkeypatch.setattr(sys, "argv", ["shadowtune", "triggers", "run", "--json"])
    assert not progress.enabled()
    monkeypatch.setattr(sys, "argv", ["shadowtune"])
    with progress.quiet():
        assert not progress.enabled()
    monkeypatch.setenv("SHADOWTUNE_PROGRESS", "0")
    assert not progress.enabled()


def test_rounded_summaries():
    assert rounded({"loss": 0.123456789, "steps": 3, "xs": [1.0000001, None, True]}) == {
        "loss": 0.1235,
        "steps": 3,
        "xs": [1.0, None, True],
    }
