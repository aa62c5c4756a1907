"""The eval, drift and triggers commands through click's CliRunner on a real log dir."""

from __future__ import annotations

import json
import os

import duckdb
import pytest
from click.testing import CliRunner
from evals_traffic import HOUR_US, now_us, traffic, write_dataset, write_shadow_pairs, write_traffic

from evals.cli import drift, eval_group, triggers


@pytest.fixture
def runner():
    return CliRunner()


def shadow_log(log_dir: str, n: int = 12) -> None:
    items = [
        (f"question {i}", f"short {i}", f"a much longer answer number {i}" if i % 4 else f"s{i}")
        for i in range(n)
    ]
    write_shadow_pairs(log_dir, "support", items)


def invoke(runner, group, args, **kw):
    result = runner.invoke(group, args, catch_exceptions=False, **kw)
    return result


def test_eval_judge_on_shadow_pairs_stores_verdicts_and_a_rerun_costs_nothing(
    runner, fake_judge, log_dir, tmp_path
):
    provider, url = fake_judge
    shadow_log(log_dir)
    prices = tmp_path / "prices.yaml"
    prices.write_text("judge-long: {input: 1.0, output: 2.0}\n")
    args = ["judge", "--route", "support", "--judges", "judge-long", "--both-orders", "--url", url]
    args += ["--prices", str(prices), "--log-dir", log_dir, "--json"]
    before = provider.calls("judge-long")
    result = invoke(runner, eval_group, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["wins"], summary["losses"]) == (9, 3)
    assert summary["position_consistency"]["rate"] == 1.0
    assert summary["cost"]["calls"] == 24 and summary["cost"]["actual_usd"] > 0
    assert "estimated $" in result.stderr
    assert provider.calls("judge-long") - before == 24
    rows = duckdb.sql(
        f"SELECT outcome, count(*) AS n FROM read_parquet('{summary['stored_at']}/verdicts.parquet') "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [("baseline", 3), ("candidate", 9)]
    reasons = duckdb.sql(
        f"SELECT reason FROM read_parquet('{summary['stored_at']}/judgements.parquet') LIMIT 1"
    ).fetchall()[0][0]
    assert "judge-long picks" in reasons
    from gateway.store import LogStore

    with LogStore.open(log_dir) as store:  # the verdicts are in the log store, next to the calls they judge
        joined = store.sql(
            "SELECT count(*) AS n, count(v.reasons) AS with_reasons "
            "FROM judge_verdicts v JOIN calls c ON c.call_id = v.call_id AND c.served"
        )
    assert joined == [{"n": 12, "with_reasons": 12}]

    again = json.loads(invoke(runner, eval_group, args).stdout)
    assert provider.calls("judge-long") - before == 24
    assert again["cost"]["actual_usd"] == 0 and again["cost"]["cached_calls"] == 24
    listed = json.loads(invoke(runner, eval_group, ["runs", "--log-dir", log_dir, "--json"]).stdout)
    assert [r["run_id"] for r in listed] == [again["run_id"], summary["run_id"]]


def test_eval_judge_human_output_and_the_family_guard(runner, fake_judge, log_dir):
    _, url = fake_judge
    shadow_log(log_dir, n=4)
    ok = invoke(
        runner,
        eval_group,
        ["judge", "--route", "support", "--judges", "judge-long", "--url", url, "--log-dir", log_dir],
    )
    assert ok.exit_code == 0 and "candidate wins" in ok.stdout and "cost: $" in ok.stdout
    assert "flag: family unknown for gpt-4o-mini, judge-long, qwen2.5-0.5b-lora" in ok.stdout
    families = ["--family", "gpt-4.1=openai", "--family", "gpt-4o-mini=openai"]
    refused = invoke(
        runner,
        eval_group,
        ["judge", "--route", "support", "--judges", "gpt-4.1", *families, "--url", url, "--log-dir", log_dir],
    )
    assert refused.exit_code == 1
    assert "self-preference risk: judge gpt-4.1 and contestant gpt-4o-mini are both openai" in refused.stderr
    args = ["judge", "--route", "support", "--judges", "gpt-4o", "--family", "gpt-4o=other"]
    costly = invoke(runner, eval_group, [*args, "--max-cost", "0.00001", "--url", url, "--log-dir", log_dir])
    assert costly.exit_code == 1 and "above --max-cost" in costly.stderr


def test_eval_judge_through_the_real_gateway_takes_families_from_its_upstream_config(
    runner, fake_judge, make_settings, start_gateway, log_dir
):
    provider, judge_url = fake_judge
    upstream = {"base_url": judge_url, "provider": "openai_compatible"}
    settings = make_settings(
        upstreams={
            "long-up": {**upstream, "model": "judge-long", "family": "anthropic"},
            "qwen-up": {**upstream, "model": "judge-long", "family": "qwen"},
            "qwen-base": {**upstream, "model": "Qwen/Qwen2.5-0.5B-Instruct", "family": "qwen"},
        },
        routes={"judge-long": {"baseline": "long-up"}, "qwen-judge": {"baseline": "qwen-up"}},
        server={"admin_token": "admin-secret"},
    )
    gw = start_gateway(settings)
    shadow_log(log_dir, n=4)
    # the candidate is a fine-tune registered on the qwen base: it inherits the base's family
    from trainer.registry import Registry

    Registry(log_dir).register(
        "support-lora", base_model="Qwen/Qwen2.5-0.5B-Instruct", hosted_model="qwen2.5-0.5b-lora"
    )
    args = [
        "judge",
        "--route",
        "support",
        "--url",
        gw.base_url,
        "--admin-token",
        "admin-secret",
        "--log-dir",
        log_dir,
    ]
    before = provider.calls("judge-long")
    ok = invoke(runner, eval_group, [*args, "--judges", "judge-long", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["wins"] == 3
    assert provider.calls("judge-long") - before == 4  # through the gateway to the fake provider
    refused = invoke(runner, eval_group, [*args, "--judges", "qwen-judge"])
    assert refused.exit_code == 1
    assert "judge qwen-judge and contestant qwen2.5-0.5b-lora are both qwen" in refused.stderr


def test_eval_judge_on_a_dataset_test_split_generates_both_answers(runner, fake_judge, log_dir):
    _, url = fake_judge
    rows = [(f"where is order {i}?", f"on its way {i}", "test" if i < 6 else "train") for i in range(10)]
    write_dataset(log_dir, "tickets", rows)
    args = ["judge", "--route", "support", "--source", "dataset:tickets", "--baseline-model", "echo"]
    args += [
        "--candidate-model",
        "shout",
        "--judges",
        "judge-long",
        "--url",
        url,
        "--log-dir",
        log_dir,
        "--json",
    ]
    summary = json.loads(invoke(runner, eval_group, args).stdout)
    assert summary["n_items"] == 6 and summary["wins"] == 6


def test_eval_golden_scores_a_model_on_a_golden_file_and_a_dataset(runner, fake_judge, log_dir, tmp_path):
    _, url = fake_judge
    golden = tmp_path / "golden.jsonl"
    golden.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"id": "a", "input": "yes", "expected": "Yes"},
                {"id": "b", "input": '{"x": 1}', "expected": {"x": 1}},
                {"id": "c", "input": "no", "expected": "maybe"},
                {"id": "d", "input": "{broken", "expected": "{broken"},
            ]
        )
    )
    args = [
        "golden",
        "--model",
        "echo",
        "--golden",
        str(golden),
        "--metric",
        "exact_match",
        "--metric",
        "json_valid",
    ]
    result = invoke(
        runner, eval_group, [*args, "--no-baseline", "--url", url, "--log-dir", log_dir, "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metrics"]["exact_match"]["exact_match"] == pytest.approx(0.75)
    assert summary["metrics"]["json_valid"]["json_valid"] == pytest.approx(0.25)
    assert summary["baseline"] is None and summary["baseline_note"] == "--no-baseline"
    # without a baseline (and no way to find one), a fast eval refuses to run
    refused = runner.invoke(eval_group, [*args, "--url", url, "--log-dir", log_dir])
    assert refused.exit_code == 2 and "--baseline MODEL" in refused.output
    both = invoke(
        runner, eval_group, [*args, "--baseline", "shout", "--url", url, "--log-dir", log_dir, "--json"]
    )
    summary = json.loads(both.stdout)
    assert summary["baseline"]["model"] == "shout"
    assert summary["baseline"]["metrics"]["exact_match"]["exact_match"] == 0.0  # "YES!!!" is not "Yes"
    assert summary["delta"]["exact_match"]["exact_match"] == pytest.approx(0.75)
    write_dataset(
        log_dir, "labels", [("spam", "spam", "test"), ("ham", "spam", "test"), ("ham", "ham", "train")]
    )
    args = ["golden", "--model", "echo", "--dataset", "labels", "--metric", "classification", "--no-baseline"]
    args += ["--url", url]
    summary = json.loads(invoke(runner, eval_group, [*args, "--log-dir", log_dir, "--json"]).stdout)
    assert summary["n"] == 2 and summary["metrics"]["classification"]["accuracy"] == 0.5
    bad = invoke(
        runner,
        eval_group,
        [
            "golden",
            "--model",
            "echo",
            "--golden",
            str(golden),
            "--metric",
            "nope",
            "--no-baseline",
            "--log-dir",
            log_dir,
        ],
    )
    assert bad.exit_code == 1 and "unknown metric 'nope'" in bad.stderr


def test_eval_golden_on_a_trainer_dataset_scores_its_labels_next_to_the_baseline(runner, fake_judge, log_dir):
    from tests.support.tiny_model import call_record, write_log
    from trainer.dataset import build_dataset

    _, url = fake_judge
    rows = [
        call_record(
            [{"role": "system", "content": "Answer."}, {"role": "user", "content": q}], a, ts_us=now_us() + i
        )
        for i, (q, a) in enumerate([("Paris", "Paris."), ("the big apple", "Big Apple"), ("blue", "red")])
    ]
    write_log(log_dir, rows)
    build_dataset(log_dir, "cities", test_fraction=0.0, warn=False)  # every example in train
    args = ["golden", "--model", "echo", "--baseline", "shout", "--dataset", "cities", "--split", "train"]
    result = invoke(runner, eval_group, [*args, "--url", url, "--log-dir", log_dir, "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["n"] == 3 and s["no_reference"] == 0
    # the labels (kept apart from the messages, in `completion`) are the references
    assert s["metrics"]["exact_match"]["exact_match"] == 0.0  # "Paris" is not "Paris."
    assert s["metrics"]["squad_exact_match"]["squad_exact_match"] == pytest.approx(2 / 3)
    assert s["metrics"]["token_f1"]["token_f1"] == pytest.approx(2 / 3)
    assert s["baseline"]["model"] == "shout"  # "PARIS!!!", "THE BIG APPLE!!!", "BLUE!!!"
    assert s["baseline"]["metrics"]["squad_exact_match"]["squad_exact_match"] == pytest.approx(2 / 3)
    assert s["delta"]["token_f1"]["token_f1"] == pytest.approx(0.0)
    human = invoke(runner, eval_group, [*args, "--url", url, "--log-dir", log_dir])
    assert "baseline shout on the same examples" in human.output
    assert "squad_exact_match" in human.output and "token_f1" in human.output


def test_eval_golden_refuses_a_dataset_without_references(runner, fake_judge, log_dir):
    import os as _os

    import pyarrow as pa
    import pyarrow.parquet as pq

    _, url = fake_judge
    folder = _os.path.join(log_dir, "datasets", "prompts")
    _os.makedirs(folder)
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}], "split": "test"} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), _os.path.join(folder, "part-0.parquet"))
    args = ["golden", "--model", "echo", "--dataset", "prompts", "--no-baseline", "--url", url]
    result = runner.invoke(eval_group, [*args, "--log-dir", log_dir])
    assert result.exit_code == 1
    assert "none of the 3 examples has a reference answer" in result.output


def test_drift_check_finds_the_year_shift_in_the_log_and_stores_the_report(runner, log_dir):
    now = now_us()
    write_traffic(
        log_dir, "support", traffic(240, seed=11), start_us=now - 6 * 24 * HOUR_US, spread_us=4 * 24 * HOUR_US
    )
    write_traffic(
        log_dir,
        "support",
        traffic(80, seed=12, year=2024),
        start_us=now - 20 * HOUR_US,
        spread_us=18 * HOUR_US,
    )
    args = ["check", "--route", "support", "--reference", "window:7d", "--current", "24h", "--rounds", "39"]
    result = invoke(runner, drift, [*args, "--log-dir", log_dir, "--json", "--fail-on-drift"])
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["drifted"] and (report["n_reference"], report["n_current"]) == (240, 80)
    checks = {c["name"]: c for c in report["checks"]}
    assert "2024" in [t["token"] for t in checks["domain_classifier"]["details"]["top_current_tokens"]][:3]
    assert checks["years"]["drifted"]
    assert os.path.exists(report["stored_at"])
    text = invoke(
        runner,
        drift,
        ["check", "--route", "support", "--reference", "window:7d", "--rounds", "39", "--log-dir", log_dir],
    )
    assert (
        text.exit_code == 0
        and text.stdout.startswith("DRIFT")
        and "current-leaning words: 2024" in text.stdout
    )
    history = json.loads(
        invoke(runner, drift, ["history", "--route", "support", "--log-dir", log_dir, "--json"]).stdout
    )
    assert len(history) == 2 and history[0]["scores"]["drift.detected"] == 1.0
    assert "years" in history[0]["drifted_checks"]


def test_drift_check_against_the_training_dataset(runner, log_dir):
    write_dataset(
        log_dir, "tickets", [(t, "ok", "train") for t in traffic(200, seed=21)] + [("x", "y", "test")]
    )
    write_traffic(
        log_dir,
        "support",
        traffic(60, seed=22, year=2024),
        start_us=now_us() - 5 * HOUR_US,
        spread_us=HOUR_US,
    )
    args = [
        "check",
        "--route",
        "support",
        "--reference",
        "dataset:tickets",
        "--current",
        "6h",
        "--rounds",
        "39",
    ]
    report = json.loads(invoke(runner, drift, [*args, "--log-dir", log_dir, "--json"]).stdout)
    assert report["reference"] == "dataset:tickets" and report["n_reference"] == 200
    assert report["drifted"] and {c["name"] for c in report["checks"] if c["drifted"]} >= {
        "domain_classifier",
        "years",
    }


def test_drift_check_with_too_little_traffic_says_so(runner, log_dir):
    write_traffic(
        log_dir, "support", traffic(10, seed=1), start_us=now_us() - HOUR_US, spread_us=HOUR_US // 2
    )
    result = invoke(runner, drift, ["check", "--route", "support", "--log-dir", log_dir])
    assert result.exit_code == 1 and "too little traffic" in result.stderr


def test_triggers_status_and_run_through_the_cli(runner, log_dir):
    write_traffic(log_dir, "support", traffic(5, seed=1), start_us=now_us() - HOUR_US, spread_us=HOUR_US // 2)
    os.makedirs(os.path.join(log_dir, "triggers"))
    with open(os.path.join(log_dir, "triggers", "policies.yaml"), "w") as f:
        f.write(
            "routes:\n  support:\n    drift_windows: 3\n    new_examples: 5\n    steps:\n"
            "      build_dataset: evals_traffic:build_dataset_step\n      train: evals_traffic:train_step\n"
            "      evaluate: evals_traffic:evaluate_wins_step\n      register: evals_traffic:register_step\n"
            "      deploy: evals_traffic:deploy_step\n"
        )
    status = invoke(runner, triggers, ["status", "--log-dir", log_dir])
    assert (
        status.exit_code == 0
        and status.stdout.startswith("support: FIRE")
        and "5 new examples" in status.stdout
    )
    dry = json.loads(invoke(runner, triggers, ["run", "--dry-run", "--log-dir", log_dir, "--json"]).stdout)
    assert dry[0]["status"] == "dry_run" and dry[0]["would_run"]
    assert not os.path.exists(os.path.join(log_dir, "triggers", "runs"))
    done = invoke(runner, triggers, ["run", "--route", "support", "--log-dir", log_dir])
    assert done.exit_code == 0 and "support: deployed" in done.stdout and "deploy" in done.stdout
    after = json.loads(invoke(runner, triggers, ["status", "--log-dir", log_dir, "--json"]).stdout)
    assert after[0]["would_fire"] is False and after[0]["last_run"]["status"] == "deployed"
    missing = invoke(runner, triggers, ["run", "--route", "nope", "--log-dir", log_dir])
    assert missing.exit_code == 1 and "no trigger policy for route nope" in missing.stderr
