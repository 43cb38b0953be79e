"""An independent gateway client against pgraftd: etcd3gw (OpenStack's Python client for etcd's
grpc-gateway, the JSON API Patroni also speaks) doing put, get, delete, leases, watches and
locks. Every test also runs against real etcd, which checks the test itself."""

from __future__ import annotations

import queue
import re
import time

import pytest

from conftest import reference_only

etcd3gw = pytest.importorskip("etcd3gw", reason="pip install -r compat-tests/requirements.txt")
from etcd3gw import watch as gw_watch  # noqa: E402

KINDS = ["etcd"] if reference_only() else ["etcd", "pgraftd"]
WAIT = 10.0  # seconds: the most any single expected event may take


@pytest.fixture(params=KINDS)
def client(request, server_factory):
    server = server_factory(request.param)
    c = etcd3gw.Etcd3Client(host="127.0.0.1", port=server.client_port, timeout=WAIT)
    c.server = server
    return c


class EventQueue:
    """An etcd3gw Watcher whose events land in a queue read with a bound."""

    def __init__(self, client, key, **kw):
        self.q: queue.Queue = queue.Queue()
        self.w = gw_watch.Watcher(client, key, self.q.put, **kw)

    def next(self):
        try:
            return self.q.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"no watch event within {WAIT}s") from None

    def silent(self, seconds: float):
        try:
            ev = self.q.get(timeout=seconds)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected watch event {ev}")

    def stop(self):
        self.w.stop()


def watch_canceled_count(client) -> float:
    text = client.session.get(client.base_url + "/metrics", timeout=WAIT).text
    m = re.search(r'^grpc_server_handled_total\{grpc_code="Canceled",grpc_method="Watch",'
                  r'grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_discovers_the_v3_api(client):
    assert client.api_path == "/v3/"
    status = client.status()
    assert int(status["header"]["revision"]) == 1
    members = client.members()
    assert [m["clientURLs"] for m in members] == [[client.server.client_url]]


def test_put_get_delete(client):
    assert client.put("foo", "bar") is True
    assert client.get("foo") == [b"bar"]
    value, meta = client.get("foo", metadata=True)[0]
    assert value == b"bar"
    assert meta["key"] == b"foo"
    assert meta["create_revision"] == meta["mod_revision"] == "2" and meta["version"] == "1"
    assert client.get("missing") == []

    for i in range(3):
        client.put(f"dir/{i}", f"v{i}")
    client.put("dir0", "outside")
    got = client.get_prefix("dir/")
    assert [(v, m["key"]) for v, m in got] == [(b"v0", b"dir/0"), (b"v1", b"dir/1"),
                                               (b"v2", b"dir/2")]
    assert [v for v, _ in client.get_prefix("dir/", sort_order="descend")] == [b"v2", b"v1", b"v0"]
    assert len(client.get_all()) == 5

    # create: a transaction on create_revision 0.
    assert client.create("new", "1") is True
    assert client.create("new", "2") is False
    assert client.get("new") == [b"1"]
    # replace: a transaction on the value.
    assert client.replace("new", "1", "3") is True
    assert client.replace("new", "1", "4") is False
    assert client.get("new") == [b"3"]

    assert client.delete("foo") is True
    assert client.delete("foo") is False
    assert client.get("foo") == []
    assert client.delete_prefix("dir/") is True
    assert client.get_prefix("dir/") == []
    assert client.get("dir0") == [b"outside"]


def test_lease(client):
    lease = client.lease(ttl=30)
    assert lease.id > 0
    assert client.put("leased", "x", lease=lease) is True
    assert 28 <= lease.ttl() <= 30
    assert lease.keys() == [b"leased"]
    assert lease.refresh() == 30
    _, meta = client.get("leased", metadata=True)[0]
    assert int(meta["lease"]) == lease.id
    assert lease.revoke() is True
    assert client.get("leased") == []
    # A gone lease: keepalive answers without TTL, which etcd3gw reads as -1.
    assert lease.refresh() == -1
    assert lease.ttl() == -1
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception) as e:
        client.put("leased", "y", lease=lease)
    assert e.value.detail_text == (
        '{"error":"etcdserver: requested lease not found",'
        '"message":"etcdserver: requested lease not found","code":5}')
    assert str(e.value) == "Not Found"


def test_lease_expiry_deletes_the_key(client):
    lease = client.lease(ttl=2)
    client.put("short", "x", lease=lease)
    w = EventQueue(client, "short")
    try:
        ev = w.next()
        assert ev["type"] == "DELETE" and ev["kv"]["key"] == b"short", ev
    finally:
        w.stop()
    assert client.get("short") == []


def test_watch(client):
    canceled_before = watch_canceled_count(client)
    w = EventQueue(client, "wk")
    p = EventQueue(client, "wp/", range_end="wp0")
    try:
        client.put("wk", "1")
        client.put("wp/a", "2")
        client.put("other", "3")
        client.delete("wk")
        ev = w.next()
        assert "type" not in ev and ev["kv"]["key"] == b"wk" and ev["kv"]["value"] == b"1", ev
        ev = w.next()
        assert ev["type"] == "DELETE" and ev["kv"]["key"] == b"wk" and "value" not in ev["kv"], ev
        ev = p.next()
        assert ev["kv"]["key"] == b"wp/a" and ev["kv"]["value"] == b"2", ev
        p.silent(0.5)
    finally:
        w.stop()
        p.stop()
    # The server let go of both streams once etcd3gw closed their sockets.
    deadline = time.monotonic() + WAIT
    while watch_canceled_count(client) < canceled_before + 2:
        assert time.monotonic() < deadline, "closed watch streams were not ended"
        time.sleep(0.1)

    # From a past revision, with the iterator API.
    rev = int(client.status()["header"]["revision"])
    client.put("hist", "a")
    client.put("hist", "b")
    events, cancel = client.watch("hist", start_revision=rev + 1)
    try:
        assert [e["kv"]["value"] for e in (next(events), next(events))] == [b"a", b"b"]
    finally:
        cancel()
    ev = client.watch_once("hist", timeout=WAIT, start_revision=rev + 2)
    assert ev["kv"]["value"] == b"b"
    with pytest.raises(etcd3gw.exceptions.WatchTimedOut):
        client.watch_once("quiet", timeout=0.5)


def test_lock(client):
    first = client.lock("resource", ttl=30)
    second = client.lock("resource", ttl=30)
    assert first.acquire() is True
    assert first.is_acquired() is True
    assert second.acquire() is False
    assert second.is_acquired() is False
    assert first.refresh() == 30
    assert second.release() is False
    assert first.release() is True
    assert second.acquire() is True
    assert second.release() is True
    with client.lock("ctx", ttl=30) as lock:
        assert lock.is_acquired()
        assert client.lock("ctx", ttl=30).acquire() is False
    assert client.lock("ctx", ttl=30).acquire() is True
