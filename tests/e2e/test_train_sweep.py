"""`shadowtune train sweep` over two tiny bases built locally, on CPU: one dataset version, two
LoRA runs, one comparison table, two registry entries with their lineage, the best deployed in
shadow in one command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.support.tiny_model import LORA_HP, build_tiny_model, log_extraction_task
from trainer.cli import models, train
from trainer.dataset import build_dataset
from trainer.registry import Registry
from trainer.sweep import load_sweep, parse_grid, plan, resolve_version

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # two trainings; slow on a loaded machine
TOKEN = "admin-t0ken"


def test_grid_plan_and_parsing():
    grid = parse_grid(["lora_r=8,16", "learning_rate=5e-3"])
    assert grid == {"lora_r": [8, 16], "learning_rate": [0.005]}
    runs = plan(["a", "b"], grid)
    assert [(r.base, r.params["lora_r"]) for r in runs] == [("a", 8), ("a", 16), ("b", 8), ("b", 16)]
    assert plan(["a"])[0].params == {}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    wide = build_tiny_model(str(root / "tiny-wide"), hidden=64, layers=2)
    narrow = build_tiny_model(str(root / "tiny-narrow"), hidden=32, layers=1)
    log_dir = str(root / "log")
    log_extraction_task(log_dir, 160, seed=5)
    build_dataset(log_dir, "orders", route="extract", warn=False)
    hp = [f"{k}={v}" for k, v in {**LORA_HP, "epochs": 3}.items()]
    args = ["sweep", "--dataset", "orders@v1", "--base", wide, "--base", narrow, "--eval-limit", "8",
            "--log-dir", log_dir, "--json", *[x for h in hp for x in ("--hp", h)]]  # fmt: skip
    res = CliRunner().invoke(train, args)
    assert res.exit_code == 0, res.output
    return log_dir, json.loads(res.stdout), wide, narrow


def test_sweep_table_and_lineage(swept):
    log_dir, table, wide, narrow = swept
    assert table["dataset"] == "orders@v1" and len(table["runs"]) == 2
    wide_run, narrow_run = table["runs"]
    assert (wide_run["base"], narrow_run["base"]) == (wide, narrow)
    for run in table["runs"]:
        q = run["quality"]
        assert q["n"] == 8 == table["test_examples"]
        assert q["ci"][0] <= q["exact_match"] <= q["ci"][1]
        assert run["train_s"] > 0 and run["latency_ms"] > 0
    # the narrow model's adapter is smaller (LoRA matrices scale with the width and the depth)
    assert narrow_run["adapter_bytes"] < wide_run["adapter_bytes"]
    assert table["baseline"]["exact_match"] == 1.0  # no relabels: the labels are the baseline's answers
    # every run is a registry version with its lineage and the sweep it belongs to
    registry = Registry(log_dir)
    for run in table["runs"]:
        mv = registry.get(run["version"])
        assert mv.status == "ready" and mv.base_model == run["base"]
        assert mv.dataset["name"] == "orders" and mv.dataset["version"] == 1
        assert mv.metrics["sweep"] == {"id": table["sweep_id"], "dataset": "orders@v1", "base": run["base"],
                                       "params": {}}  # fmt: skip
        assert mv.hyperparameters["epochs"] == 3
    assert load_sweep(log_dir, table["sweep_id"]) == table
    assert resolve_version(log_dir, f"sweep:{table['sweep_id']}") == table["best"]


def test_sweep_text_table_and_best_deployed_in_one_command(
    swept, make_settings, start_gateway, fake_upstream
):
    from trainer.sweep import format_sweep

    log_dir, table, _, _ = swept
    text = format_sweep(table)
    for run in table["runs"]:
        assert run["version"] in text
    assert "baseline" in text and f"{table['best']} *" in text
    assert f"shadowtune models deploy sweep:{table['sweep_id']}" in text
    gw = start_gateway(
        make_settings(
            server={"admin_token": TOKEN},
            upstreams={"base": {"model": "echo-base"}},
            routes={"extract": {"baseline": "base"}},
        )
    )
    res = CliRunner().invoke(
        models,
        ["deploy", f"sweep:{table['sweep_id']}", "--route", "extract", "--serve-url", fake_upstream.base_url,
         "--url", gw.url, "--admin-token", TOKEN, "--log-dir", log_dir, "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    dep = json.loads(res.stdout)
    assert dep["route_state"]["candidate"] == table["best"] and dep["route_state"]["mode"] == "shadow"
