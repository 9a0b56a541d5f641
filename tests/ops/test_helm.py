"""The Helm chart, rendered and linted by Helm's own engine (helm-python-sdk), default
and production values, and the rendered objects checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from ops.observability import RULES
from ops.settings import load_settings

CHART = Path("helm/tiermesh")
PRODUCTION = yaml.safe_load(Path("helm/values-production.yaml").read_text())
PROFILES = {"default": None, "production": PRODUCTION}
Rendered = tuple[str, list[dict[str, Any]]]


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values=values, name="tm", namespace="games", is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


@pytest.fixture(scope="module", params=list(PROFILES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return request.param, render(PROFILES[request.param])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_chart_lints_clean(profile: str) -> None:
    result = helm.lint(str(CHART), values=PROFILES[profile], strict=True)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []  # info only ("icon is recommended")


def test_every_container_has_probes_and_resources(rendered: Rendered) -> None:
    _, docs = rendered
    for name, deployment in objects(docs, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container.get("readinessProbe"), f"{name}: no readiness probe"
            assert container.get("livenessProbe"), f"{name}: no liveness probe"
            assert container["resources"]["requests"], f"{name}: no resource requests"
            assert container["resources"]["limits"], f"{name}: no resource limits"


def test_gold_and_silver_request_gpus_and_gold_is_ready_on_triton_health(
    rendered: Rendered,
) -> None:
    _, docs = rendered
    deployments = objects(docs, "Deployment")
    for tier in ("gold", "silver"):
        [container] = deployments[f"tm-tiermesh-{tier}"]["spec"]["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] >= 1
    [triton] = deployments["tm-tiermesh-gold"]["spec"]["template"]["spec"]["containers"]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert any(arg.startswith("--model-repository=") for arg in triton["args"])


def test_services_select_their_pods_and_tiers_are_headless(
    rendered: Rendered,
) -> None:
    _, docs = rendered
    pods = {
        name: deployment["spec"]["template"]["metadata"]["labels"]
        for name, deployment in objects(docs, "Deployment").items()
    }
    for name, service in objects(docs, "Service").items():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pods.values()), f"{name} selects nothing"
        if name.endswith(("-gold", "-silver")):
            assert service["spec"]["clusterIP"] == "None"  # the router balances replicas itself
    for name, deployment in objects(docs, "Deployment").items():
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pods[name].items()


def test_router_scales_and_is_protected_from_disruption(rendered: Rendered) -> None:
    _, docs = rendered
    [hpa] = objects(docs, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tm-tiermesh-router"
    [pdb] = objects(docs, "PodDisruptionBudget").values()
    router_labels = objects(docs, "Deployment")["tm-tiermesh-router"]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= router_labels.items()


def test_the_router_has_a_writable_tmp_under_its_read_only_root(rendered: Rendered) -> None:
    # The native edge's private socket to its grpc.aio server lives there (router/native/).
    _, docs = rendered
    pod = objects(docs, "Deployment")["tm-tiermesh-router"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_the_settings_configmap_loads_with_the_codes_settings_schema(
    rendered: Rendered, tmp_path: Path
) -> None:
    profile, docs = rendered
    path = tmp_path / "mesh.yaml"
    path.write_text(objects(docs, "ConfigMap")["tm-tiermesh-settings"]["data"]["mesh.yaml"])
    settings = load_settings(path)
    tiers = settings.router.tiers
    assert tiers["silver"].endpoints == ["dns:///tm-tiermesh-silver.games.svc.cluster.local:50061"]
    assert tiers["gold"].protocol == "triton"
    assert settings.silver.listen == "0.0.0.0:50061"
    assert "guard-1" in settings.personas
    if profile == "production":
        assert settings.state.backend == "redis"
        assert settings.security.mesh_tls.require_client_cert
        assert settings.security.auth.required
        assert settings.router.tiers["silver"].hedge


def test_monitoring_ships_the_rules_and_dashboards(rendered: Rendered) -> None:
    _, docs = rendered
    [rule] = objects(docs, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboards = [
        cm for cm in objects(docs, "ConfigMap").values() if cm["metadata"]["labels"].get("grafana_dashboard")
    ]
    assert sorted(key for cm in dashboards for key in cm["data"]) == [
        "tiermesh-cost.json",
        "tiermesh-overview.json",
    ]
    [monitor] = objects(docs, "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_network_policies_admit_tiers_only_from_the_router(
    rendered: Rendered,
) -> None:
    _, docs = rendered
    policies = objects(docs, "NetworkPolicy")
    for tier in ("gold", "silver", "bronze"):
        ingress = policies[f"tm-tiermesh-{tier}"]["spec"]["ingress"][0]
        assert ingress["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "router"


def test_production_bronze_uses_irsa_and_no_static_keys() -> None:
    docs = render(PRODUCTION)
    [account] = objects(docs, "ServiceAccount").values()
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    bronze = objects(docs, "Deployment")["tm-tiermesh-bronze"]["spec"]["template"]["spec"]
    env = {e["name"] for c in bronze["containers"] for e in c.get("env", [])}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # TLS on: kubelet's gRPC probe speaks no TLS, so the pod probes itself.
    [router] = objects(docs, "Deployment")["tm-tiermesh-router"]["spec"]["template"]["spec"]["containers"]
    assert router["readinessProbe"]["exec"]["command"][:2] == ["tiermesh", "health"]


def test_values_schema_refuses_bad_values() -> None:
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"router": {"port": "fifty"}})
    with pytest.raises(helm.HelmError):
        chart.validate_schema({"auth": {"enabled": True, "apiKeys": [{"client_id": "x", "sha256": "short"}]}})


# The Prometheus Operator's kinds: no schema of Kubernetes' own covers them.
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def supported_versions() -> list[str]:
    """Every Kubernetes version kubernetes-validate carries from the chart's kubeVersion
    floor on."""
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = tuple(int(part) for part in floor.strip(">=").split("-")[0].split(".")[:2])
    newest = int(kubernetes_validate.latest_version().split(".")[1])
    return [f"1.{minor}.0" for minor in range(low[1], newest + 1)]


def test_every_manifest_validates_against_the_kubernetes_versions_the_chart_claims(
    rendered: Rendered,
) -> None:
    versions = supported_versions()
    assert versions[0] == "1.27.0"
    assert len(versions) >= 5
    checked = 0
    for doc in rendered[1]:
        if (doc["apiVersion"], doc["kind"]) in OPERATOR_KINDS:
            continue
        for version in versions:
            # strict: a field Kubernetes does not know is an error, not ignored.
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 10


def test_a_manifest_kubernetes_would_refuse_is_caught(rendered: Rendered) -> None:
    deployment = next(doc for doc in rendered[1] if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.27.0", strict=True)
