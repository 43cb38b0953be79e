"""The two faces the clients use, behind one interface: `Gateway` speaks etcd's JSON gateway
over plain HTTP/1.1 (http.client), `Etcdctl` runs etcdctl (gRPC) once per operation. Each call
returns the parsed answer or raises `ClientError`; `definite` on the error says the request
surely changed nothing (an error answer from the server to a read, or a refused connection)."""

from __future__ import annotations

import base64
import http.client
import json
import re
import subprocess

from harness import ETCDCTL_BIN, etcdctl_env

TIMEOUT = 3.0


class ClientError(Exception):
    def __init__(self, msg: str, definite: bool = False):
        super().__init__(msg)
        self.definite = definite


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str | None) -> str | None:
    return None if s is None else base64.b64decode(s).decode()


def _kv(kvs) -> tuple:
    """(value, mod_revision) of the first kv of a range answer, (None, 0) if none."""
    if not kvs:
        return None, 0
    kv = kvs[0]
    return unb64(kv.get("value", "")), int(kv.get("mod_revision", 0))


class Gateway:
    face = "http"

    def __init__(self, endpoint: str, timeout: float = TIMEOUT):
        self.endpoint = endpoint
        self.timeout = timeout

    def call(self, path: str, body: dict) -> dict:
        host, port = self.endpoint.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
        try:
            try:
                conn.connect()
            except ConnectionRefusedError as e:
                raise ClientError(f"connect: {e}", definite=True)
            except OSError as e:
                raise ClientError(f"connect: {e}")
            try:
                conn.request("POST", path, json.dumps(body),
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise ClientError(f"{path}: {e!r}")
        finally:
            conn.close()
        try:
            d = json.loads(data.decode().strip().splitlines()[0]) if data.strip() else {}
        except (ValueError, IndexError) as e:
            raise ClientError(f"{path}: bad answer {data[:200]!r}: {e}")
        if resp.status != 200 or "error" in d:
            raise ClientError(f"{path}: HTTP {resp.status} {d}")
        return d.get("result", d)

    def put(self, key, value, lease=0):
        d = self.call("/v3/kv/put", {"key": b64(key), "value": b64(value), "lease": str(lease)})
        return {"revision": int(d["header"]["revision"])}

    def get(self, key, serializable=False):
        d = self.call("/v3/kv/range", {"key": b64(key), "serializable": serializable})
        v, mr = _kv(d.get("kvs"))
        return {"revision": int(d["header"]["revision"]), "value": v, "mod_revision": mr}

    def delete(self, key):
        d = self.call("/v3/kv/deleterange", {"key": b64(key)})
        return {"revision": int(d["header"]["revision"]), "deleted": int(d.get("deleted", 0))}

    def cas(self, key, by_rev, expect, value):
        cmp = {"key": b64(key), "result": "EQUAL"}
        if by_rev:
            cmp.update(target="MOD", mod_revision=str(expect))
        else:
            cmp.update(target="VALUE", value=b64(expect))
        d = self.call("/v3/kv/txn", {
            "compare": [cmp], "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
            "failure": [{"request_range": {"key": b64(key)}}]})
        out = {"revision": int(d["header"]["revision"]), "succeeded": bool(d.get("succeeded"))}
        if not out["succeeded"]:
            rr = (d.get("responses") or [{}])[0].get("response_range") or {}
            out["value"], out["mod_revision"] = _kv(rr.get("kvs"))
        return out

    def grant(self, ttl):
        d = self.call("/v3/lease/grant", {"TTL": str(ttl)})
        return {"lease": int(d["ID"]), "ttl": int(d["TTL"])}

    def keepalive(self, lease):
        d = self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return {"ttl": int(d.get("TTL", 0))}


class Etcdctl:
    face = "grpc"

    def __init__(self, endpoint: str, timeout: float = TIMEOUT):
        self.endpoint = endpoint
        self.timeout = timeout

    def run(self, *args, input=None, json_out=True):
        argv = [ETCDCTL_BIN, f"--endpoints={self.endpoint}", "--dial-timeout=1s",
                f"--command-timeout={self.timeout:g}s", *args]
        if json_out:
            argv += ["-w", "json"]
        try:
            cp = subprocess.run(argv, input=input, capture_output=True, text=True,
                                env=etcdctl_env(), timeout=self.timeout + 5)
        except subprocess.TimeoutExpired:
            raise ClientError("etcdctl timed out")
        if cp.returncode != 0:
            err = (cp.stderr.strip().splitlines() or [""])[-1]
            raise ClientError(f"etcdctl exit {cp.returncode}: {err}",
                              definite="connection refused" in err and "dial" in err)
        if not json_out:
            return cp.stdout
        try:
            return json.loads(cp.stdout)
        except ValueError as e:
            raise ClientError(f"etcdctl: bad JSON {cp.stdout[:200]!r}: {e}")

    def put(self, key, value, lease=0):
        extra = [f"--lease={lease:x}"] if lease else []
        d = self.run("put", key, value, *extra)
        return {"revision": int(d["header"]["revision"])}

    def get(self, key, serializable=False):
        d = self.run("get", key, *(["--consistency=s"] if serializable else []))
        v, mr = _kv(d.get("kvs"))
        return {"revision": int(d["header"]["revision"]), "value": v, "mod_revision": mr}

    def delete(self, key):
        d = self.run("del", key)
        return {"revision": int(d["header"]["revision"]), "deleted": int(d.get("deleted", 0))}

    def cas(self, key, by_rev, expect, value):
        cmp = f'mod("{key}") = "{expect}"' if by_rev else f'value("{key}") = "{expect}"'
        d = self.run("txn", input=f"{cmp}\n\nput {key} {value}\n\nget {key}\n\n")
        out = {"revision": int(d["header"]["revision"]), "succeeded": bool(d.get("succeeded"))}
        if not out["succeeded"]:
            rr = ((d.get("responses") or [{}])[0].get("Response") or {}).get("ResponseRange")
            out["value"], out["mod_revision"] = _kv((rr or {}).get("kvs"))
        return out

    def grant(self, ttl):
        d = self.run("lease", "grant", str(ttl))
        return {"lease": int(d["ID"]), "ttl": int(d["TTL"])}

    def keepalive(self, lease):
        out = self.run("lease", "keep-alive", "--once", f"{lease:x}", json_out=False)
        m = re.search(r"TTL\((-?\d+)\)", out)
        if not m:
            raise ClientError(f"keep-alive: unexpected answer {out!r}")
        return {"ttl": int(m.group(1))}
