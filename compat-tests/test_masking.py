"""Unit tests of the masking rules (no servers): what is masked, and what is NOT."""

from masking import Masker


def m(text, masker=None):
    return (masker or Masker(2379, 2380)).mask(text)


def test_json_ids_and_raft_masked_revisions_kept():
    out, ttls = m('{"header":{"cluster_id":11,"member_id":22,"revision":7,"raft_term":2},'
                  '"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":7,"version":3,'
                  '"value":"YmFy","lease":99}],"count":1}')
    assert out == ('{"header":{"cluster_id":"<CLUSTER_1>","member_id":"<MEMBER_1>","revision":7,'
                   '"raft_term":"<RAFT>"},"kvs":[{"key":"Zm9v","create_revision":2,'
                   '"mod_revision":7,"version":3,"value":"YmFy","lease":"<LEASE_1>"}],"count":1}')
    assert ttls == []


def test_lease_placeholders_stable_across_hex_and_decimal():
    k = Masker(1, 2)
    a, _ = k.mask("lease 694d7e8c2b0b2c0a granted with TTL(60s)")
    b, _ = k.mask("lease 0000000000000001 granted with TTL(60s)")
    c, _ = k.mask('{"ID":%d,"TTL":60}' % 0x694d7e8c2b0b2c0a)
    assert a == "lease <LEASE_1> granted with TTL(60s)"
    assert b == "lease <LEASE_2> granted with TTL(60s)"
    assert c == '{"ID":"<LEASE_1>","TTL":60}'


def test_member_ids_in_members_and_tables():
    k = Masker(2379, 2380)
    out, _ = k.mask('{"header":{"member_id":255},"members":[{"ID":255,"name":"n",'
                    '"peerURLs":["http://127.0.0.1:2380"],"clientURLs":["http://127.0.0.1:2379"]}]}')
    assert out == ('{"header":{"member_id":"<MEMBER_1>"},"members":[{"ID":"<MEMBER_1>","name":"n",'
                   '"peerURLs":["<PEER_URL>"],"clientURLs":["<CLIENT_URL>"]}]}')
    table = ("+----+------+\n| ID | NAME |\n+----+------+\n|  ff |  n |\n+----+------+\n")
    out, _ = k.mask(table)
    assert out == "+\n| ID | NAME |\n+\n| <MEMBER_1> | n |\n+\n"


def test_remaining_ttl_tolerance_values_and_expired_kept():
    out, ttls = m("lease 00000000000000aa granted with TTL(300s), remaining(299s)")
    assert out == "lease <LEASE_1> granted with TTL(300s), remaining(<TTL~>)" and ttls == [299]
    out, ttls = m('{"id":5,"ttl":-1,"granted-ttl":0,"keys":null}')
    assert out == '{"id":"<LEASE_1>","ttl":-1,"granted-ttl":0,"keys":null}' and ttls == []


def test_errors_and_values_not_masked():
    err = ('{"level":"warn","ts":"2026-01-01T00:00:00.000Z","caller":"x.go:62","msg":"m",'
           '"target":"endpoint://client-8c4a1847-9b47-4973-b0e3-3b901c575a0d/127.0.0.1:2379",'
           '"attempt":0,"error":"rpc error: code = OutOfRange desc = etcdserver: mvcc: '
           'required revision is a future revision"}\n'
           'Error: etcdserver: mvcc: required revision is a future revision\n')
    out, _ = m(err)
    assert '"ts":"<TS>"' in out and "client-<UUID>/<CLIENT_ADDR>" in out
    assert "code = OutOfRange desc = etcdserver: mvcc: required revision is a future revision" in out
    assert out.endswith("Error: etcdserver: mvcc: required revision is a future revision\n")
    # plain values, counts and revisions pass through untouched
    assert m("2\nfoo\nbar\ncompacted revision 47\n")[0] == "2\nfoo\nbar\ncompacted revision 47\n"
