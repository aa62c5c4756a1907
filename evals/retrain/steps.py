"""Built-in retraining pipeline steps, backed by the trainer (``shadowtune[train]``).

Name them in a trigger policy (``<log_dir>/triggers/policies.yaml``)::

    routes:
      orders:
        drift_windows: 2
        steps:
          build_dataset: evals.retrain.steps:build_dataset
          train: evals.retrain.steps:train
          evaluate: evals.retrain.steps:evaluate
          register: evals.retrain.steps:register
          deploy: evals.retrain.steps:deploy
        params:
          base_model: /models/qwen2.5-0.5b     # local path or hub id available offline
          dataset: orders-auto                  # dataset name (default <route>-auto)
          hyperparameters: {epochs: 3}
          min_exact_match: 0.0                  # the new model must beat the current one AND this
          serve: dev                            # dev: start `shadowtune models serve` for the version
          serve_url: null                       # or the URL of an OpenAI-compatible server that serves it
          gateway_url: http://127.0.0.1:8000

The fast eval scores exact match on the dataset's fixed test split (never trained on) for
the new version and for the current model — the route's present candidate when it is a
registered version, else the untrained base model — and wins only when the new one is
strictly better. The prompted **baseline** is scored on the same split next to them (what the
fine-tune is meant to replace): ``params.baseline_model`` through the gateway, else the route
itself while the gateway says its baseline serves every call (mode ``off`` or ``shadow``);
those calls carry the ``fast-eval`` tag. When it cannot be asked, the result says why
(``baseline.error``) rather than leaving it out. The labels are the baseline's own served
answers unless relabelled, so its score measures how far the labels are from what it answers
now, the ceiling a copy of it could reach. Deploying registers the served model as an upstream and makes it the
route's candidate in **shadow** mode, never straight to users.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from evals.errors import TriggerError


def _params(ctx: Any) -> dict[str, Any]:
    return dict(ctx.policy.params or {})


def build_dataset(ctx: Any) -> str:
    """A new version of the route's dataset, with every call logged so far (new traffic included)."""
    from trainer.dataset import build_dataset as build

    name = _params(ctx).get("dataset") or f"{ctx.route}-auto"
    dv = build(ctx.log_dir, name, route=ctx.route, warn=False)
    return str(dv.ref)


def train(ctx: Any) -> dict[str, Any]:
    """LoRA on the new dataset version; returns the registered version and its metrics."""
    from trainer.dataset import load_dataset
    from trainer.lora import train_lora

    params = _params(ctx)
    if not params.get("base_model"):
        raise TriggerError("params.base_model is required to train", step="train")
    dataset = load_dataset(ctx.log_dir, ctx.results["build_dataset"])
    mv = train_lora(
        ctx.log_dir,
        params["base_model"],
        dataset,
        hyperparameters=params.get("hyperparameters"),
        progress=True,  # a bar on a terminal (quiet under --json); step and loss in the run record
        exact_match_limit=0,
    )
    return {"version": mv.version, "metrics": mv.metrics}


def evaluate(ctx: Any) -> dict[str, Any]:
    """Exact and field match on the fixed test split: the new version against the current model.

    ``params.metric`` (``exact_match``, or ``field_match`` for JSON answers: the share of the
    label's fields answered equal) decides; both are reported, for the baseline too."""
    from trainer.dataset import load_dataset
    from trainer.fast_eval import score
    from trainer.registry import Registry
    from trainer.serve import ChatModel

    params = _params(ctx)
    metric = str(params.get("metric") or "exact_match")
    if metric not in ("exact_match", "field_match"):
        raise TriggerError(f"params.metric {metric!r}: use exact_match or field_match", step="evaluate")
    dataset = load_dataset(ctx.log_dir, ctx.results["build_dataset"])
    test = dataset.examples("test")
    if not test:
        raise TriggerError("the dataset's test split is empty: nothing to evaluate on", step="evaluate")
    registry = Registry(ctx.log_dir)
    new = registry.get(ctx.results["train"]["version"])
    new_scores = score(ChatModel.from_version(new), test)
    current_name = _current_candidate(ctx, params)
    current_version = None
    try:
        current_version = registry.get(current_name) if current_name else None
    except Exception:  # the candidate is not a registered version (e.g. a hosted model): compare with base
        current_version = None
    if current_version is not None and current_version.status == "ready":
        current = ChatModel.from_version(current_version)
        current_label = current_version.version
    else:
        current = ChatModel.load(params["base_model"])
        current_label = f"base:{params['base_model']}"
    current_scores = score(current, test)
    floor = float(params.get("min_exact_match", 0.0))
    new_score, current_score = new_scores[metric], current_scores[metric]
    wins = new_score > current_score and new_scores["exact_match"] >= floor
    result = {
        "wins": wins,
        "metric": metric,
        "test_examples": len(test),
        "new": {"version": new.version, **new_scores},
        "current": {"model": current_label, **current_scores},
        "baseline": baseline_score(ctx, params, test),
    }
    if not wins:  # never deployed: `models list` says rejected, and why
        why = f"fast eval: {metric} {new_score:.3f} vs {current_score:.3f} ({current_label}), floor {floor:g}"
        registry.update(  # merged into the record as it is now, under its lock
            new.version, lambda m: m.metrics.update(fast_eval=result), status="rejected", error=why
        )
    return result


def baseline_score(ctx: Any, params: dict[str, Any], test: list[Any]) -> dict[str, Any]:
    """Exact match of the prompted baseline on ``test`` (trainer `Example`s), asked through the gateway."""
    url = (params.get("gateway_url") or os.environ.get("SHADOWTUNE_URL", "http://127.0.0.1:8000")).rstrip("/")
    model = params.get("baseline_model")
    if not model:
        state = _route_state(ctx, params)
        if state is None:
            return {"model": None, "error": f"the gateway at {url} does not answer for route {ctx.route}"}
        if state.get("mode") not in ("off", "shadow"):
            return {
                "model": None,
                "error": f"route {ctx.route} is in {state.get('mode')} mode: set params.baseline_model "
                "to a model name the gateway answers with the baseline",
            }
        model = ctx.route
    key = os.environ.get("SHADOWTUNE_API_KEY")
    headers = {"x-shadowtune-tags": "fast-eval", **({"Authorization": f"Bearer {key}"} if key else {})}
    from concurrent.futures import ThreadPoolExecutor

    from gateway.progress import Bar
    from trainer.fast_eval import scores

    def ask(http: httpx.Client, e: Any) -> str | None:
        body = {"model": model, "messages": e.messages, "temperature": 0}
        try:
            resp = http.post("/v1/chat/completions", json=body)
            text = resp.raise_for_status().json()["choices"][0]["message"].get("content") or ""
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
            return None
        return str(text)

    with (
        httpx.Client(base_url=url, headers=headers, timeout=120) as http,
        ThreadPoolExecutor(4) as pool,
        Bar(len(test), f"eval baseline {model}", unit="ex") as bar,
    ):
        answers = []
        for answer in pool.map(lambda e: ask(http, e), test):
            answers.append(answer)
            bar.update(1)
    failed = sum(a is None for a in answers)
    got = scores([a or "" for a in answers], [e.answer for e in test])
    out: dict[str, Any] = {"model": str(model), **got, "failed": failed}
    if failed == len(test):
        out["error"] = f"every call to {model} through {url} failed"
    return out


def register(ctx: Any) -> str:
    """Record the fast eval in the version's metrics (training already registered it, status ready)."""
    from trainer.registry import Registry

    version = str(ctx.results["train"]["version"])
    result = ctx.results.get("evaluate") or {}
    registry = Registry(ctx.log_dir)
    metrics = dict(registry.get(version).metrics)
    metrics["fast_eval"] = result
    registry.update(version, metrics=metrics)
    return version


def deploy(ctx: Any) -> dict[str, Any]:
    """Serve the version (dev server or a given URL) and make it the route's candidate in shadow mode."""
    from trainer.deploy import deploy_version

    params = _params(ctx)
    version = str(ctx.results["register"])
    gateway_url = params.get("gateway_url") or os.environ.get("SHADOWTUNE_URL", "http://127.0.0.1:8000")
    serve_url = params.get("serve_url")
    served: dict[str, Any] = {}
    if not serve_url:
        if params.get("serve") != "dev":
            raise TriggerError(
                "set params.serve_url, or params.serve: dev to start the dev server", step="deploy"
            )
        served = _start_dev_server(ctx.log_dir, version, params.get("serve_port"))
        serve_url = served["url"]
    deployment = deploy_version(
        ctx.log_dir,
        version,
        ctx.route,
        url=gateway_url,
        admin_token=os.environ.get("SHADOWTUNE_ADMIN_TOKEN"),
        serve_url=serve_url,
        reason=f"trigger {ctx.run_id}: {ctx.reason}",
    )
    return {
        "candidate": version,
        "mode": "shadow",
        "serve_url": serve_url,
        **served,
        "deployment": deployment,
    }


def _route_state(ctx: Any, params: dict[str, Any]) -> dict[str, Any] | None:
    url = params.get("gateway_url") or os.environ.get("SHADOWTUNE_URL", "http://127.0.0.1:8000")
    from gateway.admin_client import AdminClient, AdminError

    try:
        with AdminClient(url, os.environ.get("SHADOWTUNE_ADMIN_TOKEN")) as admin:
            return admin.get_route(ctx.route)
    except AdminError:
        return None


def _current_candidate(ctx: Any, params: dict[str, Any]) -> str | None:
    state = _route_state(ctx, params)
    candidate = state.get("candidate") if state else None
    return str(candidate) if candidate else None


def _start_dev_server(log_dir: str, version: str, port: Any) -> dict[str, Any]:
    """The version's dev server (`trainer.serve.start_dev_server`): its URL and pid once it answers."""
    from trainer.errors import ServeError
    from trainer.serve import start_dev_server

    try:
        server = start_dev_server(log_dir, version, int(port) if port else None)
    except ServeError as exc:
        raise TriggerError(str(exc), step="deploy") from exc
    return {"url": server.url, "pid": server.pid}
