"""The deploy files, checked without a Docker engine or a cluster: every compose file against the
compose specification's JSON schema (vendored by check-jsonschema), every Kubernetes manifest against
the Kubernetes JSON schemas (shipped by kubernetes-validate, strict: unknown fields fail), pinned
images, the gateway configs they carry accepted by `gateway.config.Settings` with the environment the
containers get, and the pieces wired to one another (probes, volumes, ports, services, scrape targets,
the dashboard's datasource). Each validator is shown to reject a broken copy, so a pass means something."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import gateway
from gateway.config import Settings, StoreConfig
from tests.support.deploy_files import (
    DASHBOARDS,
    DEPLOY,
    K8S,
    ROOT,
    all_k8s_documents,
    compose_files,
    containers,
    dashboard_selectors,
    images,
    k8s_documents,
    k8s_files,
    k8s_object,
    load_dashboard,
    load_yaml,
    pod_spec,
)

K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are meant for (PDB policy/v1, CronJob batch/v1)
COMPOSE = DEPLOY / "compose.yaml"
# Settings the deploy configs use that come with branches not merged yet: dropped from the config before it
# is validated only while `StoreConfig` lacks the field (then the check is strict again by itself).
PENDING_SETTINGS = {"state_url": "state", "create_bucket": "log-table"}


def compose_schema() -> dict[str, Any]:
    ref = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema: dict[str, Any] = json.loads(ref.read_text())
    return schema


def compose_errors(doc: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


# -- schemas -------------------------------------------------------------------------------
def test_there_are_deploy_files_to_check():
    assert COMPOSE in compose_files()
    names = {p.name for p in k8s_files()}
    assert {"gateway.yaml", "postgres.yaml", "vllm.yaml", "retrain.yaml", "otel-collector.yaml"} <= names


@pytest.mark.parametrize("path", compose_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_compose_file_matches_the_compose_specification(path):
    assert compose_errors(load_yaml(path)) == []


def test_the_compose_schema_rejects_a_broken_file():
    broken = copy.deepcopy(compose())
    broken["services"]["postgres"]["helthcheck"] = broken["services"]["postgres"].pop("healthcheck")
    broken["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"] = "all"
    errors = compose_errors(broken)
    assert any("helthcheck" in e for e in errors), errors
    assert any("devices" in e for e in errors), errors


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_manifest_matches_the_kubernetes_schemas(path):
    docs = k8s_documents(path)
    assert docs
    for doc in docs:
        assert k8s_errors(doc) == [], f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def test_the_kubernetes_schemas_reject_a_broken_manifest():
    sts = copy.deepcopy(k8s_object("StatefulSet", "shadowtune"))
    c = pod_spec(sts)["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    assert any("readinesProbe" in e for e in k8s_errors(sts))
    pdb = copy.deepcopy(k8s_object("PodDisruptionBudget", "shadowtune"))
    pdb["spec"]["minAvailable"] = [1]
    assert k8s_errors(pdb)


def test_the_kustomization_lists_every_manifest_but_the_secret_example():
    kz = load_yaml(K8S / "kustomization.yaml")
    assert kz["kind"] == "Kustomization"
    listed = set(kz["resources"])
    assert all((K8S / r).is_file() for r in listed)
    assert listed == {p.name for p in k8s_files()} - {"secret.example.yaml"}


# -- images --------------------------------------------------------------------------------
def test_every_image_is_pinned():
    found = images()
    assert len(found) >= 10
    for where, image in found:
        assert image, f"{where}: no image"
        _name, _, tag = image.rpartition("/")[2].partition(":")
        assert tag and tag != "latest" and "${" not in image, f"{where}: {image!r} is not pinned"
    ours = {image for _, image in found if image.split(":")[0] in ("shadowtune", "shadowtune-trainer")}
    assert ours == {f"shadowtune:{gateway.__version__}", f"shadowtune-trainer:{gateway.__version__}"}


def test_the_compose_gateways_are_two_replicas_of_one_image():
    services = compose()["services"]
    gateways = {n: s for n, s in services.items() if n.startswith("gateway")}
    assert len(gateways) == 2
    assert len({s["image"] for s in gateways.values()}) == 1
    assert len({s["ports"][0].split(":")[0] for s in gateways.values()}) == 2  # two host ports
    data_volumes = [v for s in gateways.values() for v in s["volumes"] if v.endswith(":/data")]
    assert len(set(data_volumes)) == 2, "each replica has its own WAL volume"


# -- the gateway's config, as the containers load it ----------------------------------------
def dockerfile_env(path: Path = ROOT / "Dockerfile") -> dict[str, str]:
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def interpolate(value: str) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` with made-up values for the secrets."""
    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: f"test-{m.group(1).lower()}", value)


def load_as_container(config: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`Settings.load` of ``config`` with the container's environment and nothing of this process's."""
    import os

    for key in list(os.environ):
        if key.startswith("SHADOWTUNE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = yaml.safe_load(config.read_text())
    for field, branch in PENDING_SETTINGS.items():
        if field not in StoreConfig.model_fields and field in data.get("store", {}):
            del data["store"][field]  # comes with the `branch` branch
            print(f"store.{field} not checked: it comes with the {branch} branch")
    config.write_text(yaml.safe_dump(data))
    return Settings.load(config)


def compose_gateway_configs() -> list[tuple[str, Path, dict[str, str]]]:
    out = []
    for name, svc in compose()["services"].items():
        if not name.startswith("gateway"):
            continue
        mounts = [v.split(":") for v in svc["volumes"]]
        [host] = [h for h, target, *_ in mounts if target == "/etc/shadowtune/config.yaml"]
        assert svc["command"][:2] == ["--config", "/etc/shadowtune/config.yaml"]
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        out.append((name, (DEPLOY / host).resolve(), env))
    return out


def k8s_gateway_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    cm = k8s_object("ConfigMap", "shadowtune-config")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    [c] = pod_spec(k8s_object("StatefulSet", "shadowtune"))["containers"]
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    secret = k8s_object("Secret", "shadowtune-secrets")
    env.update({k: v or f"test-{k.lower()}" for k, v in secret["stringData"].items()})
    return path, env


def check_gateway_settings(settings: Settings, raw: dict[str, Any]) -> None:
    store = settings.store
    # what the file says is what the gateway gets: no variable of the image moves the log elsewhere
    assert store.log_dir == raw["store"]["log_dir"]
    assert store.log_dir.startswith("s3://")
    assert store.wal_dir == raw["store"]["wal_dir"]
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8000
    assert settings.server.admin_token is not None  # from the environment, not from the file
    url = raw["store"]["state_url"]
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "postgresql" and parts.password is None, "no password in the config: PGPASSWORD"
    if "state_url" in StoreConfig.model_fields:
        assert store.state_url == url  # type: ignore[attr-defined]
    route = settings.routes["support-bot"]
    assert route.candidate == "ft-small" and settings.upstreams["ft-small"].model == "candidate"
    text = yaml.safe_dump(raw).lower()
    assert "password" not in text and "secret" not in text and "sk-" not in text


def test_the_compose_gateways_config_is_accepted_as_the_containers_load_it(tmp_path, monkeypatch):
    configs = compose_gateway_configs()
    assert len(configs) == 2
    for name, host_path, svc_env in configs:
        path = tmp_path / f"{name}.yaml"
        path.write_text(host_path.read_text())
        raw = yaml.safe_load(path.read_text())
        settings = load_as_container(path, {**dockerfile_env(), **svc_env}, monkeypatch)
        check_gateway_settings(settings, raw)
        assert "PGPASSWORD" in svc_env and "AWS_SECRET_ACCESS_KEY" in svc_env
        for up in settings.upstreams.values():
            if up.api_key_env:
                assert up.api_key_env in svc_env, f"{name}: {up.api_key_env} not given"


def test_the_kubernetes_gateway_config_is_accepted_as_the_pods_load_it(tmp_path, monkeypatch):
    path, env = k8s_gateway_config(tmp_path)
    raw = yaml.safe_load(path.read_text())
    settings = load_as_container(path, {**dockerfile_env(), **env}, monkeypatch)
    check_gateway_settings(settings, raw)
    for up in settings.upstreams.values():
        if up.api_key_env:
            assert up.api_key_env in env


def test_the_image_environment_would_override_a_log_dir_in_the_config(tmp_path, monkeypatch):
    """Why the Dockerfile sets no SHADOWTUNE_STORE__LOG_DIR: the environment beats the config file."""
    path = tmp_path / "c.yaml"
    path.write_text("store: {log_dir: s3://bucket/prefix}\n")
    settings = load_as_container(path, {"SHADOWTUNE_STORE__LOG_DIR": "/data"}, monkeypatch)
    assert settings.store.log_dir == "/data"
    assert not any(k.startswith("SHADOWTUNE_STORE__") for k in dockerfile_env())


# -- Kubernetes wiring ------------------------------------------------------------------------
def test_the_gateway_pods_are_locked_down_and_probed_on_the_right_endpoints():
    from gateway.api.health import router

    paths = {r.path for r in router.routes}  # type: ignore[attr-defined]
    sts = k8s_object("StatefulSet", "shadowtune")
    spec = pod_spec(sts)
    [c] = spec["containers"]
    port_names = {p["name"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in paths
        assert c[probe]["httpGet"]["port"] in port_names
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in paths and annotations["prometheus.io/port"] == "8000"
    uid = int(re.search(r"useradd --uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == uid and pod_sc["fsGroup"] == uid
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert c["image"].endswith(":" + gateway.__version__)


def test_the_gateway_writes_only_to_its_volumes_and_shares_state_through_postgres(tmp_path):
    sts = k8s_object("StatefulSet", "shadowtune")
    [c] = pod_spec(sts)["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert "/state" not in mounts
    writable = [p for p, m in mounts.items() if not m.get("readOnly")]
    path, _ = k8s_gateway_config(tmp_path)
    store = yaml.safe_load(path.read_text())["store"]
    for key in ("wal_dir", "state_dir"):
        assert any(store[key].startswith(p + "/") for p in writable), f"{key} {store[key]} is not on a volume"
    assert "/tmp" in writable  # the log agent's socket (tempfile)
    assert c["args"][:2] == ["--config", "/etc/shadowtune/config.yaml"]
    assert mounts["/etc/shadowtune"]["readOnly"] is True
    wal_claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert mounts["/data"]["name"] in wal_claims  # a pod's own PersistentVolume
    claims = [d for d in all_k8s_documents() if d["kind"] == "PersistentVolumeClaim"]
    assert all(d["metadata"]["name"] != "shadowtune-state" for d in claims)
    # state_url names the PostgreSQL Service; its password is the Secret's PGPASSWORD
    host = urllib.parse.urlsplit(store["state_url"]).hostname
    pg = k8s_object("Service", host)
    assert pg["spec"]["ports"][0]["port"] == urllib.parse.urlsplit(store["state_url"]).port
    assert "PGPASSWORD" in k8s_object("Secret", "shadowtune-secrets")["stringData"]
    assert any(
        e["name"] == "POSTGRES_PASSWORD" for e in containers(k8s_object("StatefulSet", "postgres"))[0]["env"]
    )


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_and_the_disruption_budget_select_their_pods():
    workloads = [d for d in all_k8s_documents() if d["kind"] in ("Deployment", "StatefulSet")]
    for svc in (d for d in all_k8s_documents() if d["kind"] == "Service"):
        matched = [
            w
            for w in workloads
            if _selects(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        assert matched, f"Service {svc['metadata']['name']} selects no pods"
        ports = {p["name"] for w in matched for c in containers(w) for p in c.get("ports", []) if "name" in p}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in ports, f"{svc['metadata']['name']}: {target}"
    pdb = k8s_object("PodDisruptionBudget", "shadowtune")
    sts = k8s_object("StatefulSet", "shadowtune")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["minAvailable"] < sts["spec"]["replicas"]
    assert k8s_object("Service", sts["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_the_retraining_job_asks_for_a_gpu_node():
    cron = k8s_object("CronJob", "shadowtune-retrain")
    spec = pod_spec(cron)
    [c] = spec["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    assert c["args"][:2] == ["triggers", "run"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SHADOWTUNE_URL"] == "http://shadowtune"  # the gateways' Service
    assert any(
        v["name"] == "config" and v["configMap"]["name"] == "shadowtune-config" for v in spec["volumes"]
    )


def lora_modules(args: list[str]) -> dict[str, str]:
    assert "--enable-lora" in args
    i = args.index("--lora-modules")
    return dict(a.split("=", 1) for a in args[i + 1 :] if "=" in a and not a.startswith("--"))


def test_vllm_serves_the_candidate_adapter_on_a_gpu(tmp_path):
    path, _ = k8s_gateway_config(tmp_path)
    upstream = yaml.safe_load(path.read_text())["upstreams"]["ft-small"]
    vllm = k8s_object("Deployment", "vllm")
    [c] = pod_spec(vllm)["containers"]
    modules = lora_modules(c["args"])
    assert upstream["model"] in modules
    assert any(modules[upstream["model"]].startswith(m["mountPath"]) for m in c["volumeMounts"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert urllib.parse.urlsplit(upstream["base_url"]).hostname == "vllm"
    svc = compose()["services"]["vllm"]
    assert upstream["model"] in lora_modules(svc["command"])
    [device] = svc["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


# -- compose wiring ---------------------------------------------------------------------------
def test_compose_services_are_wired_to_one_another():
    services = compose()["services"]
    config = load_yaml(DEPLOY / "shadowtune.yaml")
    for url in (config["store"]["state_url"], config["telemetry"]["otlp_endpoint"],
                config["upstreams"]["ft-small"]["base_url"]):  # fmt: skip
        assert urllib.parse.urlsplit(url).hostname in services, url
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith("./") and source != "./models":  # models: the operator's files
                assert (DEPLOY / source).exists(), f"{name}: {source} is not in the repository"
    # the bucket of the log is made before the gateways start
    bucket = urllib.parse.urlsplit(config["store"]["log_dir"]).hostname
    init = services["minio-init"]
    assert f"local/{bucket}" in " ".join(init["command"])
    for name in ("gateway-a", "gateway-b"):
        deps = services[name]["depends_on"]
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
    # Prometheus scrapes both gateways, Grafana reads Prometheus through the provisioned datasource
    prom = load_yaml(DEPLOY / "prometheus.yaml")
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "shadowtune"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {"gateway-a:8000", "gateway-b:8000"}
    [ds] = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert urllib.parse.urlsplit(ds["url"]).hostname in services
    [provider] = load_yaml(DEPLOY / "grafana/provisioning/dashboards/shadowtune.yaml")["providers"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    for path in DASHBOARDS.glob("*.json"):
        dash = load_dashboard(path)
        uids = {p["datasource"]["uid"] for p in dash["panels"] if "datasource" in p}
        assert uids == {ds["uid"]}, path.name


def test_no_secret_is_written_in_the_deploy_files():
    for path in [*compose_files(), *k8s_files(), DEPLOY / "shadowtune.yaml"]:
        for line in path.read_text().splitlines():
            m = re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)\w*:\s*(\S+)", line)
            if m and not line.lstrip().startswith("#"):
                value = m.group(2).strip("'\"")
                assert value in ("", '""') or value.startswith("${"), f"{path.name}: {line.strip()}"


# -- the dashboard (static part; the metric names are checked against a live gateway in
#    tests/integration/test_deploy_dashboard.py) -----------------------------------------------
def test_the_dashboard_covers_what_the_issue_asks_for():
    [path] = list(DASHBOARDS.glob("*.json"))
    titles = " ".join(p["title"].lower() for p in load_dashboard(path)["panels"])
    for topic in ("calls", "error", "latency", "outcome", "canary share", "controller decisions", "drift"):
        assert topic in titles, topic
    metrics = {sel.metric for _, sel in dashboard_selectors()}
    assert {"shadowtune_calls_total", "shadowtune_errors_total", "shadowtune_controller_decisions_total",
            "shadowtune_drift_statistic", "shadowtune_feedback_total"} <= metrics  # fmt: skip


def _parses(group_path: list[str], args: list[str], mounted: dict[str, str] | None = None) -> None:
    """``shadowtune <group_path> args`` is accepted by the CLI's option parser (nothing is run); the
    files the container has mounted are given as ``mounted`` (container path -> a local file)."""
    import click

    from gateway.cli import main

    ctx = click.Context(main)
    cmd: click.Command = main
    for name in group_path:
        assert isinstance(cmd, click.Group)
        found = cmd.get_command(ctx, name)
        assert found is not None, f"no command {name!r}"
        cmd = found
    args = [(mounted or {}).get(a, a) for a in args]
    cmd.make_context(" ".join(group_path), args, resilient_parsing=False)


def test_the_commands_the_deploy_files_run_are_accepted_by_the_cli(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    mounted = {"/etc/shadowtune/config.yaml": str(config)}
    for name, svc in compose()["services"].items():
        if name.startswith("gateway"):
            _parses(["serve"], svc["command"], mounted)  # the image's entrypoint is `shadowtune serve`
    [c] = pod_spec(k8s_object("StatefulSet", "shadowtune"))["containers"]
    _parses(["serve"], c["args"], mounted)
    [job] = pod_spec(k8s_object("CronJob", "shadowtune-retrain"))["containers"]
    _parses(job["args"][:2], job["args"][2:])
    with pytest.raises(Exception, match="No such option"):
        _parses(["serve"], ["--config", str(config), "--wrokers", "2"])


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed"
)
def test_the_kustomization_renders_and_what_it_renders_is_valid():
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    expected = [d for p in k8s_files() if p.name != "secret.example.yaml" for d in k8s_documents(p)]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in expected
    )
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shadowtune"
        assert k8s_errors(doc) == [], f"{doc['kind']}/{doc['metadata']['name']}"
