"""The ``shadowtune`` CLI on a real call log: ``logs``, ``keys`` and ``config`` through click's
CliRunner, text and ``--json`` output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.store import LogStore, LogWriter
from gateway.store.layout import WAL_SUFFIX
from gateway.store.schema import SCHEMA_VERSION

NOW_US = time.time_ns() // 1000


@pytest.fixture(autouse=True)
def _one_instant_per_test() -> None:
    """Every timestamp of a test derives from one instant, taken when the test starts (not at import)."""
    global NOW_US
    NOW_US = time.time_ns() // 1000


DAY_US = 86_400 * 1_000_000


def completion(text: str | None, tool: bool = False) -> str:
    msg: dict = {"role": "assistant", "content": text}
    if tool:
        msg["tool_calls"] = [
            {"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
        ]
    return json.dumps(
        {
            "id": f"chatcmpl-{text}",
            "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    )


def request(content: str) -> str:
    return json.dumps(
        {
            "model": "bot",
            "messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": content}],
        }
    )


@pytest.fixture
def populated(log_dir) -> str:
    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        w.append(
            "calls",
            {
                "call_id": "call_A",
                "ts": NOW_US - 3,
                "route": "bot",
                "variant": "baseline",
                "served": True,
                "status": 200,
                "user": "u1",
                "latency_ms": 12.5,
                "request": request("where is my parcel"),
                "response": completion("in transit"),
            },
        )
        w.flush()
        w.append(
            "calls",
            {
                "call_id": "call_B",
                "ts": NOW_US - 2,
                "route": "bot",
                "variant": "candidate",
                "served": False,
                "status": 200,
                "user": "u2",
                "request": request("refund please"),
                "response": completion(None, tool=True),
            },
        )
        w.append(
            "calls",
            {
                "call_id": "call_C",
                "ts": NOW_US - 1,
                "route": "other",
                "variant": "baseline",
                "served": True,
                "status": 502,
                "error_type": "upstream_error",
                "error_message": "cannot reach upstream",
                "request": request("hello"),
            },
        )
        w.flush()
        w.append(
            "calls",
            {
                "call_id": "call_OLD",
                "ts": NOW_US - 40 * DAY_US,
                "route": "bot",
                "variant": "baseline",
                "served": True,
                "status": 200,
                "request": request("old"),
                "response": completion("ancient"),
            },
        )
        w.append(
            "events",
            {
                "event_id": "ev_1",
                "call_id": "call_A",
                "ts": NOW_US,
                "kind": "thumbs",
                "value": "up",
                "value_num": 1,
            },
        )
    return log_dir


def run(*args: str, input: str | None = None, code: int = 0, stdout: bool = False) -> str:
    """Output of ``shadowtune ARGS`` (stdout and stderr together, or ``stdout`` only)."""
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout if stdout else result.output


def as_json(*args: str) -> object:
    return json.loads(run(*args, "--json", stdout=True))


class TestLogs:
    def test_status(self, populated):
        data = as_json("logs", "status", "--log-dir", populated)
        assert data["calls"]["rows"] == 4
        assert data["calls"]["files"] == 3
        assert data["calls"]["bytes"] > 0
        assert data["events"]["rows"] == 1
        assert data["wal"]["segments"] == 0
        assert data["oldest"] < data["newest"]
        text = run("logs", "status", "--log-dir", populated)
        assert "calls" in text and "4 rows" in text

    def test_status_counts_rows_not_yet_flushed(self, log_dir):
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        w.start()
        try:
            w.append("calls", {"call_id": "call_T", "ts": NOW_US, "status": 200})
            data = as_json("logs", "status", "--log-dir", log_dir)
            assert data["calls"]["rows"] == 1
            assert data["wal"]["segments"] >= 1 and data["wal"]["bytes"] > 0
        finally:
            w.close()

    def test_status_while_the_agent_deletes_a_segment(self, log_dir):
        """A segment listed and gone before it is looked at (converted and deleted by the agent
        meanwhile: here a name whose file is gone) is not counted, and the command does not fail."""
        w = LogWriter(log_dir, flush_interval=3600, compact_interval=0)
        w.start()
        try:
            w.append("calls", {"call_id": "call_T", "ts": NOW_US, "status": 200})
            wal = Path(log_dir) / "wal"
            before = as_json("logs", "status", "--log-dir", log_dir)["wal"]
            (wal / f"ghost.00000001{WAL_SUFFIX}").symlink_to(wal / "deleted-meanwhile")
            data = as_json("logs", "status", "--log-dir", log_dir)
            assert data["wal"] == before and before["segments"] >= 1
            assert data["calls"]["rows"] == 1
        finally:
            w.close()

    def test_list_newest_first_with_filters(self, populated):
        def listed(*flags: str) -> list[str]:
            return [r["call_id"] for r in as_json("logs", "list", "--log-dir", populated, *flags)]

        assert listed() == ["call_C", "call_B", "call_A", "call_OLD"]
        assert listed("--route", "bot") == ["call_B", "call_A", "call_OLD"]
        assert listed("--variant", "candidate") == ["call_B"]
        assert listed("--status", "error") == ["call_C"]
        assert listed("--status", "ok") == ["call_B", "call_A", "call_OLD"]
        assert listed("--status", "502") == ["call_C"]
        assert listed("--user", "u1") == ["call_A"]
        assert listed("-q", "REFUND") == ["call_B"]
        assert listed("-q", "transit") == ["call_A"]
        assert listed("--since", "7d") == ["call_C", "call_B", "call_A"]
        assert listed("-n", "2") == ["call_C", "call_B"]
        row = as_json("logs", "list", "--log-dir", populated, "--user", "u1")[0]
        assert (row["output_text"], row["status"], row["served"]) == ("in transit", 200, True)

    def test_list_as_text(self, populated):
        out = run("logs", "list", "--log-dir", populated)
        header, *lines = out.strip().splitlines()
        assert header.split() == [
            "CALL",
            "TIME",
            "ROUTE/VARIANT",
            "STATUS",
            "LATENCY",
            "USER",
            "FEEDBACK",
            "OUTPUT",
        ]
        assert len(lines) == 4
        assert lines[0].startswith("call_C") and "upstream_error" in lines[0]
        assert "(not served)" in lines[1] and " u2 " in lines[1]
        assert "in transit" in lines[2] and " u1 " in lines[2] and " up " in lines[2]
        # the columns line up under the header
        assert {line.index("bot/") for line in lines[1:]} == {header.index("ROUTE/VARIANT")}

    def test_show_renders_the_conversation(self, populated):
        out = run("logs", "show", "call_A", "--log-dir", populated)
        assert "[system]" in out and "be nice" in out
        assert "[user]" in out and "where is my parcel" in out
        assert "[assistant #0]" in out and "in transit" in out
        tool = run("logs", "show", "call_B", "--log-dir", populated)
        assert 'tool lookup({"q": "x"})' in tool
        err = run("logs", "show", "call_C", "--log-dir", populated)
        assert "upstream_error" in err and "cannot reach upstream" in err

    def test_show_as_json_by_call_id_or_response_id(self, populated):
        row = as_json("logs", "show", "call_A", "--log-dir", populated)
        assert row["call_id"] == "call_A"
        assert row["thumbs_up"] == 1
        assert as_json("logs", "show", "chatcmpl-in transit", "--log-dir", populated)["call_id"] == "call_A"

    def test_show_an_unknown_call_is_a_clear_error(self, populated):
        out = run("logs", "show", "call_nope", "--log-dir", populated, code=1)
        assert "no call 'call_nope'" in out

    def test_sql(self, populated):
        rows = as_json(
            "logs",
            "sql",
            "SELECT route, count(*) AS n FROM calls GROUP BY route ORDER BY route",
            "--log-dir",
            populated,
        )
        assert rows == [{"route": "bot", "n": 3}, {"route": "other", "n": 1}]
        text = run("logs", "sql", "SELECT call_id FROM calls WHERE status = 502", "--log-dir", populated)
        assert text.splitlines() == ["call_id", "call_C"]
        assert "(no rows)" in run("logs", "sql", "SELECT * FROM calls WHERE false", "--log-dir", populated)

    @pytest.mark.parametrize(
        "query",
        ["DELETE FROM calls", "DROP VIEW calls", "COPY calls TO 'x.csv'", "SELECT 1; DELETE FROM calls"],
    )
    def test_sql_refuses_writes(self, populated, query):
        out = run("logs", "sql", query, "--log-dir", populated, code=1)
        assert "read-only" in out
        assert as_json("logs", "status", "--log-dir", populated)["calls"]["rows"] == 4

    def test_sql_reports_a_bad_query_in_one_line(self, populated):
        out = run("logs", "sql", "SELECT nope FROM calls", "--log-dir", populated, code=1)
        assert out.startswith("Error:") and "Traceback" not in out
        assert len(out.strip().splitlines()) == 1

    def test_export_jsonl_and_parquet(self, populated, tmp_path):
        out = tmp_path / "calls.jsonl"
        run(
            "logs", "export", "--log-dir", populated, "--format", "jsonl", "--out", str(out), "--route", "bot"
        )
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["call_id"] for r in rows] == ["call_OLD", "call_A", "call_B"]
        pq_out = tmp_path / "calls.parquet"
        run(
            "logs",
            "export",
            "--log-dir",
            populated,
            "--format",
            "parquet",
            "--out",
            str(pq_out),
            "--since",
            "7d",
        )
        assert sorted(pq.read_table(pq_out).column("call_id").to_pylist()) == ["call_A", "call_B", "call_C"]
        ev = tmp_path / "events.jsonl"
        run("logs", "export", "--log-dir", populated, "--table", "events", "--out", str(ev))
        assert json.loads(ev.read_text())["kind"] == "thumbs"

    def test_compact_keeps_rows_exactly_once(self, populated):
        assert "compacted 2 file(s)" in run("logs", "compact", "--log-dir", populated)
        with LogStore.open(populated) as store:
            ids = [r["call_id"] for r in store.sql("SELECT call_id FROM calls ORDER BY call_id")]
        assert ids == ["call_A", "call_B", "call_C", "call_OLD"]

    def test_prune_asks_then_deletes_days_before_the_cutoff(self, populated):
        run("logs", "prune", "--log-dir", populated, "--before", "30d", input="n\n", code=1)
        assert as_json("logs", "status", "--log-dir", populated)["calls"]["rows"] == 4
        run("logs", "prune", "--log-dir", populated, "--before", "30d", "--yes")
        ids = [r["call_id"] for r in as_json("logs", "list", "--log-dir", populated)]
        assert ids == ["call_C", "call_B", "call_A"]

    def test_the_log_dir_defaults_to_the_environment(self, populated, monkeypatch):
        monkeypatch.setenv("SHADOWTUNE_LOG_DIR", populated)
        assert as_json("logs", "status")["calls"]["rows"] == 4

    def test_a_missing_log_is_a_clear_error(self, tmp_path):
        out = run("logs", "status", "--log-dir", str(tmp_path / "nowhere"), code=1)
        assert "no call log" in out

    def test_a_newer_schema_refuses_with_a_clear_error(self, populated):
        Path(populated, "store.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 5}))
        for args in (["logs", "status"], ["logs", "list"], ["logs", "sql", "SELECT 1"]):
            out = run(*args, "--log-dir", populated, code=1)
            assert "newer" in out and "upgrade" in out

    def test_path(self, log_dir):
        assert run("logs", "path", "--log-dir", log_dir).strip() == str(Path(log_dir).resolve())


class TestKeys:
    def test_create_list_revoke(self, log_dir):
        key = run("keys", "create", "app-1", "--log-dir", log_dir, stdout=True).strip()
        assert "\n" not in key
        assert key.startswith("sk-st-")
        run("keys", "create", "app-2", "--log-dir", log_dir)
        out = run("keys", "create", "app-1", "--log-dir", log_dir, code=1)
        assert "already exists" in out

        listed = as_json("keys", "list", "--log-dir", log_dir)
        assert [k["name"] for k in listed] == ["app-1", "app-2"]
        assert all("hash" not in k and k["revoked"] is None for k in listed)
        assert key not in json.dumps(listed)
        assert listed[0]["prefix"] == key[:10]

        assert "revoked" in run("keys", "revoke", "app-1", "--log-dir", log_dir)
        text = run("keys", "list", "--log-dir", log_dir)
        assert "app-1" in text and "revoked" in text and key not in text
        assert as_json("keys", "list", "--log-dir", log_dir)[0]["revoked"] is not None
        assert "no active key" in run("keys", "revoke", "app-1", "--log-dir", log_dir, code=1)

    def test_a_created_key_is_accepted_by_the_authenticator(self, log_dir):
        from gateway.auth import Authenticator

        key = run("keys", "create", "svc", "--log-dir", log_dir, stdout=True).strip()
        assert Authenticator(log_dir, "keys").check(f"Bearer {key}".encode()) == "svc"


class TestConfig:
    def test_show_prints_the_effective_settings_with_secrets_masked(self, tmp_path, monkeypatch):
        cfg = tmp_path / "shadowtune.yaml"
        cfg.write_text(
            "server:\n  admin_token: super-secret-admin\n  port: 9123\n"
            "upstreams:\n  gpt:\n    base_url: http://127.0.0.1:9/v1\n    api_key_env: OPENAI_API_KEY\n"
            "routes:\n  bot:\n    baseline: gpt\n"
        )
        monkeypatch.setenv("SHADOWTUNE_STORE__FLUSH_INTERVAL", "2.5")
        out = run("config", "show", "--config", str(cfg), stdout=True)
        data = json.loads(out)
        assert data["server"]["port"] == 9123
        assert data["store"]["flush_interval"] == 2.5
        assert data["routes"]["bot"]["baseline"] == "gpt"
        assert data["upstreams"]["gpt"]["api_key_env"] == "OPENAI_API_KEY"
        assert "super-secret-admin" not in out

    def test_an_invalid_config_is_a_clear_error(self, tmp_path):
        cfg = tmp_path / "bad.toml"
        cfg.write_text('[routes.bot]\nbaseline = "missing"\n')
        out = run("config", "show", "--config", str(cfg), code=1)
        assert "invalid configuration" in out and "missing" in out

    def test_reference_lists_every_setting_with_its_docstring(self):
        out = run("config", "reference")
        assert "| `store.log_dir` | `SHADOWTUNE_STORE__LOG_DIR`" in out
        assert "| `server.max_body_bytes` |" in out
        assert "Largest request body accepted" in out


def test_every_logs_command_speaks_json(tmp_path):
    import json as _json

    from click.testing import CliRunner

    from gateway.cli import main
    from gateway.store import LogWriter

    log_dir = str(tmp_path / "log")
    with LogWriter(log_dir) as w:
        w.append("calls", {"call_id": "call_1", "ts": 1_700_000_000_000_000, "route": "r", "status": 200})
    runner = CliRunner()
    for args in (
        ["logs", "path"],
        ["logs", "status"],
        ["logs", "list"],
        ["logs", "show", "call_1"],
        ["logs", "sql", "SELECT count(*) AS n FROM calls"],
        ["logs", "export", "--out", str(tmp_path / "x.jsonl")],
        ["logs", "compact"],
        ["logs", "prune", "--before", "2000-01-01", "--yes"],
    ):
        result = runner.invoke(main, [*args, "--log-dir", log_dir, "--json"])
        assert result.exit_code == 0, (args, result.output)
        _json.loads(result.stdout)


@pytest.fixture
def with_feedback(log_dir) -> str:
    def event(n: int, kind: str, value: str | None, **more: object) -> dict[str, object]:
        return {
            "event_id": f"ev_{n}",
            "call_id": "call_F",
            "ts": NOW_US + n,
            "kind": kind,
            "value": value,
            **more,
        }

    with LogWriter(log_dir, flush_interval=3600, compact_interval=0) as w:
        for call_id, user in (("call_F", "ann"), ("call_G", None)):
            w.append(
                "calls",
                {
                    "call_id": call_id,
                    "ts": NOW_US - 10,
                    "route": "bot",
                    "variant": "baseline",
                    "served": True,
                    "status": 200,
                    "user": user,
                    "latency_ms": 3.0,
                    "request": request("when is the meeting"),
                    "response": completion("on monday"),
                },
            )
        w.append(
            "events", event(1, "thumbs", "down", value_num=0, user="ann", client_key="app", source="api")
        )
        w.append("events", event(2, "rating", None, value_num=4, comment="close, wrong day", user="ann"))
        w.append("events", event(3, "choice", "b", user="bob", source="api"))
        w.append("events", event(4, "flag", "pii", source="detector"))
        w.append("events", event(5, "regeneration", None, source="detector"))
        w.append("events", event(6, "thumbs", "up", value_num=1, source="reviewer", reviewer="rita"))
        w.append(
            "events", event(7, "relabel", "on tuesday", source="reviewer", reviewer="rita", comment="fixed")
        )
    return log_dir


class TestFeedbackInLogs:
    def test_list_has_user_and_feedback_columns(self, with_feedback):
        header, first, second = run("logs", "list", "--log-dir", with_feedback).strip().splitlines()
        assert header.split()[5:7] == ["USER", "FEEDBACK"]
        rows = {line.split()[0]: line for line in (first, second)}
        feedback = rows["call_F"][header.index("FEEDBACK") : header.index("OUTPUT")].strip()
        assert feedback == "down, rating 4, choice b, flag, regenerated, review up, relabelled"
        assert rows["call_F"][header.index("USER") :].startswith("ann ")
        assert rows["call_G"][header.index("FEEDBACK") :].startswith("-")
        [row] = as_json("logs", "list", "--user", "ann", "--log-dir", with_feedback)
        assert (row["user"], row["thumbs_down"], row["rating"], row["choice"]) == ("ann", 1, 4.0, "b")
        assert (row["flags"], row["regenerated"], row["reviewer_thumbs_up"], row["relabelled"]) == (
            1,
            True,
            1,
            True,
        )

    def test_show_lists_the_feedback_and_who_posted_it(self, with_feedback):
        out = run("logs", "show", "call_F", "--log-dir", with_feedback)
        section = out[out.index("[feedback: 7]") :].splitlines()[1:]
        assert len(section) == 7
        assert "thumbs down  by user ann, key app (api)" in section[0]
        assert "rating 4  by user ann" in section[1] and "close, wrong day" in section[1]
        assert "choice b  by user bob (api)" in section[2]
        assert "flag pii  by detector" in section[3]
        assert "thumbs up  by reviewer rita" in section[5]
        assert "relabel on tuesday  by reviewer rita" in section[6] and "fixed" in section[6]
        data = as_json("logs", "show", "call_F", "--log-dir", with_feedback)
        assert [(e["kind"], e["poster"]) for e in data["feedback"]][:3] == [
            ("thumbs", "user ann, key app"),
            ("rating", "user ann"),
            ("choice", "user bob"),
        ]
        assert data["feedback"][1]["comment"] == "close, wrong day"
        assert "[feedback" not in run("logs", "show", "call_G", "--log-dir", with_feedback)
        assert as_json("logs", "show", "call_G", "--log-dir", with_feedback)["feedback"] == []
