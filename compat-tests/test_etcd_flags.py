"""etcd's command line and config file start pgraftd unchanged: a long etcd-style command line
(every kind of flag with a typical value, `--enable-v2=true` as Patroni's harness passes it),
etcd's sample YAML through `--config-file`, and etcd's refusals of bad values. Each test also runs
against real etcd 3.4.23, which checks that the flags and values used are etcd's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import reference_only
from harness import HERE, free_ports, run_etcdctl, server_binary

KINDS = ["etcd"] if reference_only() else ["etcd", "pgraftd"]

# etcd 3.4 flags with typical values (etcd 3.4.23 accepts every one of them).
ETCD34_FLAGS = [
    "--enable-v2=true",
    "--logger=zap",
    "--snapshot-count=10000",
    "--heartbeat-interval=100",
    "--election-timeout=1000",
    "--initial-election-tick-advance=false",
    "--max-snapshots=3",
    "--max-wals=3",
    "--max-txn-ops=256",
    "--max-request-bytes=2097152",
    "--max-concurrent-streams=1000",
    "--grpc-keepalive-min-time=10s",
    "--grpc-keepalive-interval=1h",
    "--grpc-keepalive-timeout=30s",
    "--backend-batch-interval=10ms",
    "--backend-batch-limit=1000",
    "--discovery-fallback=proxy",
    "--strict-reconfig-check",
    "--pre-vote=true",
    "--auto-compaction-mode=revision",
    "--auto-compaction-retention=1000",
    "--cors=*",
    "--host-whitelist=*",
    "--enable-pprof",
    "--metrics=extensive",
    "--proxy=off",
    "--proxy-dial-timeout=2000",
    "--experimental-initial-corrupt-check=true",
    "--experimental-backend-bbolt-freelist-type=map",
    "--experimental-enable-lease-checkpoint=true",
    "--experimental-compaction-batch-limit=500",
    "--experimental-watch-progress-notify-interval=5s",
    "--experimental-warning-apply-duration=200ms",
    "--force-new-cluster=false",
]

# etcd 3.5 flags, given to pgraftd only (etcd 3.4 does not know them).
ETCD35_FLAGS = [
    "--enable-grpc-gateway=true",
    "--v2-deprecation=not-yet",
    "--socket-reuse-address=true",
    "--raft-read-timeout=5s",
    "--experimental-compaction-sleep-interval=20ms",
    "--experimental-enable-distributed-tracing=false",
    "--experimental-snapshot-catchup-entries=4000",
    "--unsafe-no-fsync=false",
    "--enable-log-rotation=false",
    "--backend-bbolt-freelist-type=map",
    "--socket-reuse-port=false",
    "--raft-write-timeout=5s",
    "--listen-client-http-urls=",
    "--discovery=",
    "--discovery-proxy=",
    "--discovery-srv=",
    "--discovery-srv-name=etcd",
    "--experimental-enable-v2v3=/v2/",
    "--proxy-failure-wait=5000",
    "--proxy-refresh-interval=30000",
    "--proxy-write-timeout=5000",
    "--proxy-read-timeout=0",
    '--log-rotation-config-json={"maxsize": 100}',
    "--debug=false",
    "--log-package-levels=etcdserver=INFO",
    "--experimental-compact-hash-check-enabled=true",
    "--experimental-compact-hash-check-time=2m",
    "--experimental-enable-lease-checkpoint-persist=true",
    "--experimental-downgrade-check-time=10s",
    "--experimental-memory-mlock=false",
    "--experimental-txn-mode-write-with-shared-buffer=true",
    "--experimental-stop-grpc-service-on-defrag=false",
    "--experimental-bootstrap-defrag-threshold-megabytes=100",
    "--experimental-distributed-tracing-address=localhost:4317",
    "--experimental-distributed-tracing-service-name=etcd",
    "--experimental-distributed-tracing-instance-id=m1",
    "--experimental-distributed-tracing-sampling-rate=0",
]


def inert_flags_of_pgraftd() -> set[str]:
    """The flags `pgraftd --help` lists under its heading for etcd flags without effect."""
    out = subprocess.run([str(server_binary("pgraftd")), "--help"], capture_output=True,
                         text=True, timeout=30).stdout
    section = out.split("etcd flags without effect in pgraftd:", 1)[1]
    return set(re.findall(r"^\s+(--[a-z0-9-]+)", section, re.M))


def flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize("kind", KINDS)
def test_long_etcd_command_line(kind, server_factory, tmp_path):
    metrics_port = free_ports(1)[0]
    log_file = tmp_path / "etcd.log"
    extra = [
        *ETCD34_FLAGS,
        f"--wal-dir={tmp_path / 'wal'}",
        f"--listen-metrics-urls=http://127.0.0.1:{metrics_port}",
        f"--log-outputs=stderr,{log_file}",
    ]
    if kind == "pgraftd":
        extra += ETCD35_FLAGS
    server = server_factory(kind, extra_args=extra)
    assert run_etcdctl(server.endpoint, "put", "foo", "bar")[0] == 0
    rc, out, err = run_etcdctl(server.endpoint, "get", "foo", "--print-value-only")
    assert (rc, out.strip()) == (0, "bar"), err
    # --listen-metrics-urls serves /health and /metrics.
    assert json.loads(get(f"http://127.0.0.1:{metrics_port}/health"))["health"] == "true"
    assert "etcd_server_has_leader" in get(f"http://127.0.0.1:{metrics_port}/metrics")
    # --log-outputs: the file gets the JSON log lines too.
    lines = [json.loads(l) for l in log_file.read_text().splitlines() if l.startswith("{")]
    assert lines, "no JSON log lines in the --log-outputs file"
    if kind != "pgraftd":
        return
    # One line per flag that has no effect here, naming it.
    log = Path(server.log_path).read_text()
    inert = re.findall(r'"message":"etcd flag accepted; it has no effect in pgraftd","flag":"(--[a-z0-9-]+)"', log)
    assert len(inert) == len(set(inert)), inert
    given = {flag_name(a) for a in extra}
    assert set(inert) == given & inert_flags_of_pgraftd()
    for f in ["--enable-v2", "--max-wals", "--wal-dir", "--enable-pprof", "--metrics",
              "--grpc-keepalive-min-time", "--experimental-initial-corrupt-check",
              "--enable-grpc-gateway", "--raft-read-timeout", "--proxy"]:
        assert f in inert, f"{f} was not reported: {inert}"
    # Honoured flags and defaults given explicitly are not reported as inert.
    for f in ["--pre-vote", "--auto-compaction-retention", "--log-outputs", "--max-txn-ops",
              "--force-new-cluster"]:
        assert f not in inert


@pytest.mark.parametrize("kind", KINDS)
def test_sample_config_file(kind, server_factory, tmp_path):
    server = server_factory(kind, start=False, name="default")
    sample = (HERE / "etcd.conf.yml.sample").read_text()
    text = (
        sample.replace("http://localhost:2380", server.peer_url)
        .replace("http://localhost:2379", server.client_url)
        .replace("/var/lib/pgraft/default.etcd", str(server.data_dir))
        .replace("\ninitial-cluster:\n", f"\ninitial-cluster: default={server.peer_url}\n")
        .replace("\nwal-dir:\n", f"\nwal-dir: {tmp_path / 'wal'}\n")
    )
    conf = tmp_path / "etcd.conf.yml"
    conf.write_text(text)
    # As in etcd, flags next to --config-file are ignored.
    server.command = lambda: [str(server.binary), "--config-file", str(conf), "--name", "ignored"]
    server.start()
    assert run_etcdctl(server.endpoint, "put", "k", "v")[0] == 0
    rc, members, err = run_etcdctl(server.endpoint, "member", "list")
    assert rc == 0, err
    assert ", default, " in members, members


@pytest.mark.parametrize("kind", KINDS)
def test_environment_only(kind, tmp_path):
    """As from a systemd unit with `EnvironmentFile=/etc/default/etcd` and no flags."""
    client, peer, metrics = free_ports(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    env.update(
        ETCD_NAME="envnode",
        ETCD_DATA_DIR=str(tmp_path / "data"),
        ETCD_LISTEN_CLIENT_URLS=f"http://127.0.0.1:{client}",
        ETCD_ADVERTISE_CLIENT_URLS=f"http://127.0.0.1:{client}",
        ETCD_LISTEN_PEER_URLS=f"http://127.0.0.1:{peer}",
        ETCD_INITIAL_ADVERTISE_PEER_URLS=f"http://127.0.0.1:{peer}",
        ETCD_INITIAL_CLUSTER=f"envnode=http://127.0.0.1:{peer}",
        ETCD_LISTEN_METRICS_URLS=f"http://127.0.0.1:{metrics}",
        ETCD_ENABLE_V2="true",
        ETCD_MAX_WALS="3",
        ETCD_LOGGER="zap",
        ETCD_LOG_OUTPUTS="stdout",
        ETCD_AUTO_COMPACTION_RETENTION="1",
    )
    log = open(tmp_path / "out.log", "wb")
    errlog = open(tmp_path / "err.log", "wb")
    p = subprocess.Popen([str(server_binary(kind))], env=env, stdout=log, stderr=errlog,
                         stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            rc, out, err = run_etcdctl(f"127.0.0.1:{client}", "member", "list")
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rc == 0, err
        assert ", envnode, " in out
        assert json.loads(get(f"http://127.0.0.1:{metrics}/health"))["health"] == "true"
    finally:
        p.terminate()
        p.wait(timeout=15)
        log.close()
        errlog.close()
    # --log-outputs=stdout: the JSON log lines went to stdout.
    lines = (tmp_path / "out.log").read_text().splitlines()
    assert any('"serving' in l and l.startswith("{") for l in lines), lines[:5]


# Values etcd refuses, and the words of its message pgraftd's must contain too.
BAD_VALUES = [
    (["--enable-v2=maybe"], ["maybe", "parse error"]),
    (["--grpc-keepalive-interval=5"], ["5"]),
    (["--max-wals=-1"], ["-1"]),
    (["--proxy=bad"], ["bad"]),
    (["--initial-cluster-state=zz"], ["zz"]),
    (["--logger=foo"], ['unknown logger option "foo"']),
    (["--auto-compaction-mode=foo", "--auto-compaction-retention=1"], ['unknown auto-compaction-mode "foo"']),
    (["--logger=capnslog", "--log-outputs=stderr,stdout"], ["--logger=capnslog supports only 1 value in '--log-outputs'"]),
    (["--no-such-flag=1"], ["no-such-flag"]),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("args,words", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_invalid_values_are_refused(kind, args, words, tmp_path):
    client, peer = free_ports(2)
    cmd = [
        str(server_binary(kind)),
        "--data-dir", str(tmp_path / "data"),
        "--listen-client-urls", f"http://127.0.0.1:{client}",
        "--advertise-client-urls", f"http://127.0.0.1:{client}",
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"default=http://127.0.0.1:{peer}",
        *args,
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode != 0, p.stderr[-2000:]
    for w in words:
        assert w in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "data").exists() or kind == "etcd"


@pytest.mark.parametrize("kind", KINDS)
def test_periodic_auto_compaction(kind, server_factory):
    """`--auto-compaction-retention=2s`: after 2 s the member compacts by itself, at the revision
    of 2 s before, and logs etcd's lines."""
    server = server_factory(kind, extra_args=[
        "--logger=zap", "--auto-compaction-mode=periodic", "--auto-compaction-retention=2s",
    ])
    for i in range(5):
        assert run_etcdctl(server.endpoint, "put", "k", f"v{i}")[0] == 0
    deadline = time.monotonic() + 10
    while True:
        rc, out, err = run_etcdctl(server.endpoint, "get", "k", "--rev=2")
        if rc != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rc != 0 and "required revision has been compacted" in err, (rc, out, err)
    # The latest value is kept.
    rc, out, _ = run_etcdctl(server.endpoint, "get", "k", "--print-value-only")
    assert out.strip() == "v4"
    log = Path(server.log_path).read_text()
    assert "starting auto periodic compaction" in log
    assert "completed auto periodic compaction" in log
