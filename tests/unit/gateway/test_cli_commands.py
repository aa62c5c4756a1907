"""Every ``shadowtune`` command is built the same way (`gateway.clikit`): walked from the root.

Each command that prints takes ``--json``; every ``--log-dir`` is the one option (so each
honours ``$SHADOWTUNE_LOG_DIR`` and ``$SHADOWTUNE_STORE__LOG_DIR``); every time option reads
the same forms (``1.5h``); every group is loaded from one table; under ``--json`` stdout is JSON.
"""

from __future__ import annotations

import datetime as dt
import json

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from gateway import durations
from gateway.cli import main
from gateway.clikit import registry
from gateway.clikit.options import DURATION, MOMENT
from gateway.store import LogWriter

RUNS_SERVERS = {"serve"}
"""Commands that run the gateway itself and print only its log lines."""

TIME_OPTIONS = {"since", "until", "before"}
DURATION_OPTIONS = {"window", "current", "reference_window"}


def walk(
    group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()
) -> list[tuple[str, click.Command]]:
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"{' '.join((*path, name))} is listed but cannot be loaded"
        if isinstance(cmd, click.Group):
            out += walk(cmd, click.Context(cmd, parent=ctx, info_name=name), (*path, name))
        else:
            out.append((" ".join((*path, name)), cmd))
    return out


@pytest.fixture(scope="module")
def commands() -> dict[str, click.Command]:
    ctx = click.Context(main, info_name="shadowtune")
    found = dict(walk(main, ctx))
    assert len(found) > 40  # the trainer's and evals' groups are there too
    return found


def test_every_group_comes_from_one_table():
    ctx = click.Context(main, info_name="shadowtune")
    table = registry.groups()
    assert set(main.list_commands(ctx)) == set(table) | {"serve"}
    for name in ("logs", "routes", "feedback", "keys", "config"):
        assert table[name].value == registry.BUILTIN[name]
    for name in ("dataset", "train", "models", "eval", "drift", "triggers", "controller"):
        assert name in table, f"{name} is not an installed shadowtune.commands entry point"
    assert "outcomes" in main.get_command(ctx, "eval").list_commands(ctx)  # type: ignore[union-attr]


def test_every_command_that_prints_takes_json(commands):
    missing = [
        name
        for name, cmd in commands.items()
        if name not in RUNS_SERVERS
        and not any(
            isinstance(p, click.Option) and "--json" in p.opts and p.name == "as_json" for p in cmd.params
        )
    ]
    assert missing == []
    for name in ("keys create", "feedback add", "keys revoke", "controller pause", "dataset relabel"):
        assert name in commands


def test_every_log_dir_is_the_one_option_and_honours_both_variables(commands, monkeypatch):
    monkeypatch.delenv("SHADOWTUNE_LOG_DIR", raising=False)
    monkeypatch.setenv("SHADOWTUNE_STORE__LOG_DIR", "/from/store-var")
    seen = 0
    for name, cmd in commands.items():
        if name in RUNS_SERVERS:
            continue
        for p in cmd.params:
            if p.name == "log_dir":
                ctx = click.Context(cmd)
                assert p.get_default(ctx) == "/from/store-var", name
                assert p.help == "Call log directory or s3:// URI.", name
                seen += 1
    assert seen > 30
    monkeypatch.setenv("SHADOWTUNE_LOG_DIR", "/from/log-var")
    outcomes = commands["eval outcomes"]
    [p] = [p for p in outcomes.params if p.name == "log_dir"]
    assert p.get_default(click.Context(outcomes)) == "/from/log-var"


def test_every_time_and_duration_option_reads_the_same_forms(commands):
    checked = set()
    for name, cmd in commands.items():
        for p in cmd.params:
            if p.name in TIME_OPTIONS:
                if name == "eval outcomes":  # parsed in the command against one "now" for --since and --until
                    continue
                assert p.type is MOMENT, f"{name} --{p.name}"
                checked.add(name)
            elif p.name in DURATION_OPTIONS:
                assert p.type is DURATION, f"{name} --{p.name}"
                checked.add(name)
    assert {"logs list", "dataset build", "eval judge", "drift check", "feedback orphans"} <= checked


@pytest.mark.parametrize("text", ["1.5h", "90m", "7d", "2w", "30s", " 12h "])
def test_an_age_is_read_the_same_way_by_every_parser(text):
    from evals.drift import parse_duration as drift_duration
    from evals.outcomes_cli import parse_since
    from trainer.dataset import parse_time

    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    expected = now - durations.parse_duration(text)
    assert MOMENT.convert(text, None, None) <= dt.datetime.now(dt.UTC) - durations.parse_duration(text)
    assert parse_time(text, now=now) == expected
    assert parse_since(text, now=now.timestamp()) == expected.timestamp()
    assert drift_duration(text) == durations.parse_duration(text)


@given(st.one_of(st.text(max_size=12), st.from_regex(r"\A\d{1,20}(\.\d{0,3})?[smhdw]\Z")))
def test_bad_times_are_a_clear_error_never_a_crash(text):
    try:
        durations.parse_moment(text)
    except ValueError as exc:
        assert "use a duration such as" in str(exc)


def test_an_age_too_long_for_the_calendar_is_a_clear_error():
    for text in ("99999999999w", "2999999d"):
        with pytest.raises(ValueError, match="use a duration such as"):
            durations.parse_moment(text)
    with pytest.raises(ValueError, match="too long"):
        durations.parse_duration("1" * 20 + "w")


def test_a_bad_since_is_a_usage_error_naming_the_forms(tmp_path):
    res = CliRunner().invoke(main, ["logs", "list", "--since", "yesterday", "--log-dir", str(tmp_path)])
    assert res.exit_code == 2 and "use a duration such as 90s, 30m, 1.5h" in res.output
    res = CliRunner().invoke(main, ["dataset", "build", "x", "--since", "soon", "--log-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--since" in res.output and "1.5h" in res.output


@pytest.fixture
def small_log(log_dir) -> str:
    now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append(
            "calls", {"call_id": "call_1", "ts": now_us, "route": "bot", "variant": "baseline", "status": 200}
        )
        w.append(
            "events", {"event_id": "ev_1", "call_id": "call_1", "ts": now_us, "kind": "thumbs", "value": "up"}
        )
    return log_dir


READ_ONLY = [
    ["logs", "path"],
    ["logs", "status"],
    ["logs", "list"],
    ["logs", "show", "call_1"],
    ["logs", "sql", "SELECT count(*) AS n FROM calls"],
    ["logs", "compact"],
    ["feedback", "orphans"],
    ["keys", "list"],
    ["dataset", "list"],
    ["models", "list"],
    ["eval", "runs"],
    ["drift", "history", "--route", "bot"],
    ["eval", "outcomes", "--route", "bot"],
    ["controller", "status", "bot"],
    ["controller", "pause", "bot"],
    ["controller", "resume", "bot"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_under_json_stdout_is_json_only(small_log, args):
    res = CliRunner().invoke(main, [*args, "--json", "--log-dir", small_log], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)


def test_config_commands_print_json(tmp_path):
    for args in (["config", "show"], ["config", "reference"]):
        res = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data
    rows = json.loads(CliRunner().invoke(main, ["config", "reference", "--json"]).stdout)
    assert {"setting": "store.log_dir", "env": "SHADOWTUNE_STORE__LOG_DIR"}.items() <= next(
        r for r in rows if r["setting"] == "store.log_dir"
    ).items()


def test_keys_create_and_revoke_print_json(log_dir):
    res = CliRunner().invoke(main, ["keys", "create", "app", "--json", "--log-dir", log_dir])
    assert res.exit_code == 0, res.output
    created = json.loads(res.stdout)
    assert created["name"] == "app" and created["key"].startswith(created["prefix"]) and created["first"]
    listed = json.loads(CliRunner().invoke(main, ["keys", "list", "--json", "--log-dir", log_dir]).stdout)
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    res = CliRunner().invoke(main, ["keys", "revoke", "app", "--json", "--log-dir", log_dir])
    assert json.loads(res.stdout) == {"name": "app", "revoked": True}
