"""pgraftd under the systemd unit written for etcd: Debian's own `etcd.service` (from the
etcd-server package), run the way systemd runs it, with only the binary swapped, as an operator
replacing etcd would do (a drop-in with another ExecStart, or /usr/bin/etcd pointing to pgraftd).

The unit is `Type=notify`: systemd counts the start as done when the daemon sends `READY=1` on
the datagram socket named in NOTIFY_SOCKET, and as failed (stopping the service) when that does
not come within TimeoutStartSec. The test plays systemd's part: the unit's Environment= lines,
then its EnvironmentFile (/etc/default/etcd, here a file of the test's own with ETCD_* settings
on free ports), the ExecStart line with $DAEMON_ARGS expanded, the unit's User= when run as root,
a notify socket; then etcdctl against the service, and the stop as systemd does it (SIGTERM,
a clean exit expected: exit 0 or death by SIGTERM; the unit restarts only on abnormal ones). Real etcd goes through the same
steps first, so the emulation is checked against the daemon the unit was written for."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from harness import (ETCD_BIN, ETCDCTL_BIN, daemon_work_root, etcdctl_env, free_ports,
                     pgraftd_path)

UNIT = Path("/lib/systemd/system/etcd.service")
START_TIMEOUT = 30.0  # below systemd's default TimeoutStartSec (90 s)
STOP_TIMEOUT = 30.0


def parse_unit(text: str) -> dict[str, list[str]]:
    """The [Service] section's settings, each key with its values in order."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def specifiers(v: str) -> str:
    """The unit specifiers etcd.service uses: %H (host name), %p (unit prefix), %%."""
    return v.replace("%H", socket.gethostname()).replace("%p", "etcd").replace("%%", "%")


def environment(unit: dict[str, list[str]], env_file: Path) -> dict[str, str]:
    """systemd's environment for the service: a clean one, then Environment= assignments,
    then the EnvironmentFile (ours in place of /etc/default/etcd), later ones winning."""
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    for v in unit.get("Environment", []):
        for word in shlex.split(v):
            k, _, val = word.partition("=")
            env[k] = specifiers(val)
    assert unit.get("EnvironmentFile"), "the unit reads no EnvironmentFile"
    for line in env_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, val = line.partition("=")
            env[k.strip()] = val.strip()
    return env


def exec_argv(unit: dict[str, list[str]], env: dict[str, str], binary: str) -> list[str]:
    """ExecStart with $VAR expanded to words (systemd's rule), the daemon swapped for
    `binary`."""
    (line,) = unit["ExecStart"]
    argv = []
    for word in line.split():
        m = re.fullmatch(r"\$(\w+)|\$\{(\w+)\}", word)
        if m:
            argv.extend(env.get(m.group(1) or m.group(2), "").split())
        else:
            argv.append(specifiers(word))
    assert argv[0] == "/usr/bin/etcd", argv
    argv[0] = binary
    return argv


def run_as(user: str):
    """preexec_fn that takes the unit's User= (when the test runs as root and it exists)."""
    if os.geteuid() != 0:
        return None, None
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None, None

    def drop():
        os.setgid(pw.pw_gid)
        os.initgroups(user, pw.pw_gid)
        os.setuid(pw.pw_uid)
    return drop, pw


def etcdctl(endpoint: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ETCDCTL_BIN, f"--endpoints={endpoint}", "--command-timeout=10s", *args],
                          env=etcdctl_env(), capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def unit_dir():
    """A directory the unit's user can enter (a clone under /root is closed to it)."""
    d = Path(tempfile.mkdtemp(prefix="systemd-unit-", dir=daemon_work_root()))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("kind", ["etcd", "pgraftd"])
def test_debian_etcd_unit_runs_the_daemon(kind, unit_dir):
    tmp_path = unit_dir
    if not UNIT.exists():
        pytest.fail(f"{UNIT} missing: scripts/test-deps.sh installs etcd-server", pytrace=False)
    binary = ETCD_BIN if kind == "etcd" else str(pgraftd_path())
    unit = parse_unit(UNIT.read_text())
    assert unit.get("Type") == ["notify"], unit.get("Type")

    client, peer = free_ports(2)
    data = tmp_path / "data"
    env_file = tmp_path / "etcd.default"
    env_file.write_text("\n".join([
        "# what an operator puts in /etc/default/etcd",
        f"ETCD_DATA_DIR={data}",
        f"ETCD_LISTEN_CLIENT_URLS=http://127.0.0.1:{client}",
        f"ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:{client}",
        f"ETCD_LISTEN_PEER_URLS=http://127.0.0.1:{peer}",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS=http://127.0.0.1:{peer}",
        f"ETCD_INITIAL_CLUSTER={socket.gethostname()}=http://127.0.0.1:{peer}",
        "ETCD_INITIAL_CLUSTER_STATE=new",
        "",
    ]))
    env = environment(unit, env_file)
    assert env["ETCD_NAME"] == socket.gethostname()  # the unit's own Environment=ETCD_NAME=%H
    argv = exec_argv(unit, env, binary)

    preexec, pw = run_as(unit.get("User", ["root"])[0])
    os.chmod(tmp_path, 0o755)
    if pw is not None:
        data.mkdir()
        os.chown(data, pw.pw_uid, pw.pw_gid)
        if kind == "pgraftd":
            # Installed where the unit's user can run it, as a package would put it.
            installed = tmp_path / "pgraftd"
            shutil.copy(binary, installed)
            argv[0] = str(installed)

    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    os.chmod(notify_path, 0o777)
    env["NOTIFY_SOCKET"] = str(notify_path)
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen(argv, env=env, cwd="/", stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, preexec_fn=preexec)
    try:
        # systemd's start: done at READY=1, failed at the timeout or an early exit.
        states: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT
        notify.settimeout(0.5)
        while "READY=1" not in states:
            assert proc.poll() is None, (
                f"{kind} exited ({proc.returncode}) before READY=1:\n"
                + (tmp_path / "daemon.log").read_text()[-3000:])
            assert time.monotonic() < deadline, (
                f"{kind} sent no READY=1 in {START_TIMEOUT:.0f}s (got {states}): systemd would "
                "fail the start and stop it\n" + (tmp_path / "daemon.log").read_text()[-3000:])
            try:
                states.extend(notify.recv(4096).decode().split("\n"))
            except socket.timeout:
                pass

        endpoint = f"http://127.0.0.1:{client}"
        cp = etcdctl(endpoint, "put", "/unit/key", "from-systemd")
        assert cp.returncode == 0, cp.stderr
        cp = etcdctl(endpoint, "get", "/unit/key", "--print-value-only")
        assert cp.stdout.strip() == "from-systemd", cp.stderr
        cp = etcdctl(endpoint, "member", "list")
        assert socket.gethostname() in cp.stdout, cp.stdout
        if pw is not None:
            owners = {p.stat().st_uid for p in data.rglob("*")}
            assert owners == {pw.pw_uid}, f"files not owned by {pw.pw_name}: {owners}"

        # systemd's stop: SIGTERM (the unit sets no KillSignal), a clean exit in time.
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{kind} still running {STOP_TIMEOUT:.0f}s after SIGTERM")
        # systemd counts exit 0 and death by SIGTERM (etcd re-raises it) as clean.
        assert rc in (0, -signal.SIGTERM), f"{kind} exited {rc} on SIGTERM (not clean: " \
            "the unit would restart it)"
        if kind == "pgraftd":
            notify.settimeout(1)
            try:
                states.extend(notify.recv(4096).decode().split("\n"))
            except socket.timeout:
                pass
            assert "STOPPING=1" in states, states
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        notify.close()
