"""Where the eval commands look things up: model families for the judge's guard (the gateway's
upstream settings, the registry's lineage, ``--family``) and a dataset route's baseline."""

from __future__ import annotations

import click


def _loopback(url: str) -> bool:
    import httpx

    return httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")


def gateway_families(base: str, admin_token: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """``(model name -> family, upstream name -> model id)`` from the gateway config.

    Families by upstream name and model id (an upstream's own name wins over a shared model id),
    and routes by their baseline's. Empty, with a note on stderr, when the admin API cannot be read.
    """
    from gateway.admin_client import AdminClient, AdminError

    try:
        with AdminClient(base, admin_token) as admin:
            ups = admin.upstreams()
            routes = admin.routes().get("data") or []
    except AdminError as exc:
        click.echo(
            f"note: no model families from {base}/admin ({exc}); only registry lineage and --family", err=True
        )
        return {}, {}
    ups = [u for u in ups if isinstance(u, dict) and u.get("name")]
    models = {str(u["name"]): str(u.get("model") or u["name"]) for u in ups}
    with_family = [u for u in ups if u.get("family")]
    by_name = {str(u["name"]): str(u["family"]) for u in with_family}
    out = {str(u["model"]): str(u["family"]) for u in with_family if u.get("model")}
    out.update(by_name)  # an upstream's own name wins over a shared model id
    for r in routes:
        if isinstance(r, dict) and by_name.get(str(r.get("baseline"))):
            out[str(r["route"])] = by_name[str(r["baseline"])]
    return out, models


def judge_families(
    log_dir: str, admin_url: str | None, admin_token: str | None, use_gateway: bool, specs: tuple[str, ...]
) -> dict[str, str]:
    """Families for the judge's guard: registry lineage, the gateway's upstreams, then ``--family``."""
    from evals.judge.families import resolve_families
    from trainer.registry import Registry

    upstream_families, upstream_models = (
        gateway_families(admin_url, admin_token) if use_gateway and admin_url else ({}, {})
    )
    overrides: dict[str, str] = {}
    for spec in specs:
        model, sep, fam = spec.partition("=")
        if not sep or not model or not fam:
            raise click.BadParameter(f"expected MODEL=FAMILY, got {spec!r}", param_hint="--family")
        overrides[model] = fam
    known = {**upstream_families, **overrides}
    try:
        lineage = Registry(log_dir).families(known)
    except Exception as exc:  # a registry that cannot be read: say so, judge with what is known
        click.echo(f"note: no families from the model registry ({exc})", err=True)
        lineage = {}
    return resolve_families(
        registry=lineage,
        upstream_families=upstream_families,
        upstream_models=upstream_models,
        overrides=overrides,
    )


def route_baseline(log_dir: str, dataset: str, url: str, admin_token: str | None) -> str | None:
    """The dataset's route, when the gateway (on loopback) says its baseline serves every call."""
    from gateway.admin_client import AdminClient, AdminError
    from trainer.dataset import load_dataset
    from trainer.errors import DatasetError

    try:
        route = (load_dataset(log_dir, dataset).manifest.get("source") or {}).get("route")
    except DatasetError:
        return None
    if not route or not _loopback(url):
        return None
    try:
        with AdminClient(url, admin_token) as admin:
            state = admin.get_route(str(route))
    except AdminError:
        return None
    return str(route) if isinstance(state, dict) and state.get("mode") in ("off", "shadow") else None
