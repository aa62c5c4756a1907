"""The files of ``deploy/`` as the tests read them: compose files (YAML merge keys resolved), Kubernetes
documents, the gateway configs they carry, the Grafana dashboard's PromQL queries, and the metric and
label names those queries use (a small PromQL scanner: enough for the selectors, ``by``/``without``/
``on``/``ignoring``/``group_*`` lists and function calls that dashboards are made of)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"


def compose_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.y*ml") if p.name.startswith(("compose", "docker-compose")))


def k8s_files() -> list[Path]:
    """Every Kubernetes manifest (the kustomization is kustomize's, not a Kubernetes object)."""
    return sorted(p for p in K8S.rglob("*.y*ml") if p.name != "kustomization.yaml")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_k8s_documents() -> list[dict[str, Any]]:
    return [d for p in k8s_files() for d in k8s_documents(p)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in all_k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a workload (Deployment, StatefulSet, Job, CronJob)."""
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    result: dict[str, Any] = spec["template"]["spec"]
    return result


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return [*spec.get("initContainers", []), *spec["containers"]]


def images() -> list[tuple[str, str]]:
    """(where, image) of every image named in the compose files and the Kubernetes manifests."""
    out = []
    for path in compose_files():
        for name, svc in load_yaml(path)["services"].items():
            out.append((f"{path.name}:{name}", svc.get("image", "")))
    for doc in all_k8s_documents():
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"):
            for c in containers(doc):
                out.append((f"{doc['kind']}/{doc['metadata']['name']}:{c['name']}", c.get("image", "")))
    return out


# -- the dashboard's queries ---------------------------------------------------------------
def dashboards() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable of a dashboard."""
    out = []
    for p in _panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            out.append((f"panel {p.get('title')!r} {t.get('refId')}", t["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((f"variable {var['name']}", q))
    return out


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\]]*\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan"}  # fmt: skip


class Selector:
    """One vector selector of a query: its metric name and its label matchers."""

    def __init__(self, metric: str, matchers: list[tuple[str, str, str]]) -> None:
        self.metric = metric
        self.matchers = matchers

    def __repr__(self) -> str:
        return f"{self.metric}{self.matchers}"


def scan(query: str) -> tuple[list[Selector], set[str]]:
    """The selectors of a PromQL query and the label names of its grouping/matching lists.

    Grafana's ``label_values(metric, label)`` counts as a selector of ``metric`` and a use of
    ``label``. Every metric must be written as a selector (``name{...}``) or bare; function names
    are told apart by the ``(`` that follows them.
    """
    labels: set[str] = set()
    lv = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*,\s*(\w+)\s*\)\s*", query)
    if lv:
        matchers = _MATCHER.findall(lv.group(2) or "")
        return [Selector(lv.group(1), matchers)], {lv.group(3)}
    for m in _LABEL_LISTS.finditer(query):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    rest = _LABEL_LISTS.sub(" ", query)
    selectors: list[Selector] = []
    # metric{matchers}
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", rest):
        selectors.append(Selector(m.group(1), _MATCHER.findall(m.group(2))))
    rest = re.sub(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}", " ", rest)
    rest = _SELECTOR.sub(" ", _RANGE.sub(" ", _STRING.sub(" ", rest)))
    for m in _IDENT.finditer(rest):
        name = m.group(0)
        after = rest[m.end() :].lstrip()
        if after.startswith("(") or name.lower() in _KEYWORDS or name.startswith("$"):
            continue  # a function, a keyword
        if rest[max(0, m.start() - 1)] == "$":
            continue  # a Grafana variable ($__rate_interval)
        selectors.append(Selector(name, []))
    return selectors, labels


def dashboard_selectors() -> list[tuple[str, Selector]]:
    out = []
    for path in dashboards():
        for where, q in queries(load_dashboard(path)):
            for sel in scan(q)[0]:
                out.append((f"{path.name} {where}", sel))
    return out


def dashboard_grouping_labels() -> list[tuple[str, str]]:
    out = []
    for path in dashboards():
        for where, q in queries(load_dashboard(path)):
            out.extend((f"{path.name} {where}", label) for label in scan(q)[1])
    return out
