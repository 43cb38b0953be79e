"""The Helm chart (helm/pgraft), rendered with default values and with HA values, every object
validated against Kubernetes' schemas (kubernetes-validate, strict), and what makes it a working
cluster checked: the initial cluster names one member per replica, by the pods' DNS names under
the headless service, the selectors pick the pods, probes hit /livez and /readyz, a
PodDisruptionBudget keeps a quorum.

Rendering uses `helm template` where helm is installed, else the test-only renderer in
helm_render.py (the same templates; it refuses any construct it does not implement)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from harness import REPO_ROOT
from helm_render import TemplateError, lex, parse, render_chart

CHART = REPO_ROOT / "helm" / "pgraft"
K8S_VERSION = "1.30.0"

HA_VALUES = {
    "replicaCount": 5,
    "podAntiAffinity": "required",
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "networkPolicy": {"enabled": True,
                      "clientFrom": [{"namespaceSelector": {"matchLabels": {"app": "db"}}}]},
    "extraEnv": {"ETCD_SNAPSHOT_COUNT": "50000"},
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    "persistence": {"storageClass": "fast", "size": "20Gi"},
}


def render(values: dict | None) -> list[dict]:
    helm = shutil.which("helm")
    if helm:
        args = [helm, "template", "test", str(CHART)]
        if values:
            args += ["--values", "-"]
        out = subprocess.run(args, input=json.dumps(values or {}), capture_output=True,
                             text=True, check=True, timeout=60).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    return [obj for objs in render_chart(CHART, values).values() for obj in objs]


def by_kind(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


@pytest.mark.parametrize("values", [None, HA_VALUES], ids=["default", "ha"])
def test_chart_renders_valid_objects(values):
    objs = render(values)
    kinds = by_kind(objs)
    assert {"StatefulSet", "Service", "PodDisruptionBudget"} <= set(kinds), kinds.keys()
    for o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD (the Prometheus operator's): its schema is not Kubernetes'.
            assert o["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        try:
            kubernetes_validate.validate(o, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{o['kind']} {o['metadata']['name']}: {e.message} at "
                        f"{'/'.join(map(str, e.path))}", pytrace=False)


@pytest.mark.parametrize("values", [None, HA_VALUES], ids=["default", "ha"])
def test_chart_makes_a_cluster(values):
    replicas = (values or {}).get("replicaCount", 3)
    kinds = by_kind(render(values))
    (sts,) = kinds["StatefulSet"]
    spec = sts["spec"]
    assert spec["replicas"] == replicas
    assert spec["podManagementPolicy"] == "Parallel"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()

    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    headless = services[spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    for s in services.values():
        assert s["spec"]["selector"].items() <= pod_labels.items()

    (c,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    members = env["ETCD_INITIAL_CLUSTER"].split(",")
    assert len(members) == replicas
    sts_name = sts["metadata"]["name"]
    for i, m in enumerate(members):
        name, url = m.split("=", 1)
        assert name == f"{sts_name}-{i}"
        assert url == (f"http://{sts_name}-{i}.{headless['metadata']['name']}.default.svc."
                       f"cluster.local:2380")
    # Each pod advertises the peer URL its entry names ($(MY_POD_NAME) is the pod's name).
    assert env["ETCD_NAME"] == "$(MY_POD_NAME)"
    assert env["ETCD_INITIAL_ADVERTISE_PEER_URLS"] == (
        f"http://$(MY_POD_NAME).{headless['metadata']['name']}.default.svc.cluster.local:2380")
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "new"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["lifecycle"]["preStop"]
    (pdb,) = kinds["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    if values:
        assert env["ETCD_SNAPSHOT_COUNT"] == "50000"
        aff = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert "requiredDuringSchedulingIgnoredDuringExecution" in aff
        (np,) = kinds["NetworkPolicy"]
        peer_rule = next(r for r in np["spec"]["ingress"] if r["ports"][0]["port"] == 2380)
        assert peer_rule["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert kinds["ServiceMonitor"][0]["metadata"]["labels"]["release"] == "prom"
        claim = spec["volumeClaimTemplates"][0]["spec"]
        assert claim["storageClassName"] == "fast"
    else:
        assert "NetworkPolicy" not in kinds and "ServiceMonitor" not in kinds


def test_upgrade_joins_existing_cluster():
    """A pod made by an upgrade (scaling up after `member add`) joins the running cluster."""
    objs = [o for os_ in render_chart(CHART, {"replicaCount": 4}, is_install=False).values()
            for o in os_]
    (sts,) = [o for o in objs if o["kind"] == "StatefulSet"]
    env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert len(env["ETCD_INITIAL_CLUSTER"].split(",")) == 4


def test_renderer_refuses_what_it_does_not_know():
    with pytest.raises(TemplateError):
        render_template('{{ sha256sum "x" }}')
    with pytest.raises(TemplateError):
        render_template("{{ if .a }}x")
    assert render_template('{{- $x := list -}}{{ range $i := until 3 }}{{ $x = append $x $i }}'
                           '{{ end }}{{ join "," $x }}') == "0,1,2"
    assert render_template('a  {{- "b" -}}  c {{/* note */}}d') == "abc d"
    assert render_template('{{ if eq .v "x" }}1{{ else if .w }}2{{ else }}3{{ end }}',
                           v="y", w=True) == "2"
    assert render_template('{{ printf "%s-%d" "a" 3 | quote }}') == '"a-3"'


def render_template(src: str, **dot) -> str:
    from helm_render import Renderer, Scope
    tree = parse(lex(src))
    return Renderer({}).render(tree, dot, Scope(), dot)
