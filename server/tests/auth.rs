//! etcd's auth over gRPC and the JSON gateway: every Auth RPC with etcd's answers and errors,
//! key permissions enforced on Range, Put, DeleteRange, Txn (compares and both branches),
//! Watch creation and LeaseRevoke, root-only admin calls, tokens (simple format, TTL, bad and
//! malformed ones), bad input that changes nothing, and an auth store that survives a restart.
//!
//! Members run with `--bcrypt-cost=4` (the lowest etcd accepts) to keep the tests quick.

mod common;

use common::{assert_status, TestNode, TIMEOUT};
use etcd_proto::authpb::{permission::Type, Permission, UserAddOptions};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_proto::etcdserverpb::kv_client::KvClient;
use etcd_proto::etcdserverpb::lease_client::LeaseClient;
use etcd_proto::etcdserverpb::watch_client::WatchClient;
use etcd_proto::etcdserverpb::watch_request::RequestUnion;
use etcd_proto::etcdserverpb::*;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const ARGS: &[&str] = &["--bcrypt-cost=4", "--auth-token-ttl=2"];

/// Adds the token to every call (what etcd's Go client does).
#[derive(Clone)]
struct Token(Option<String>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("token", MetadataValue::try_from(t.as_str()).unwrap());
        }
        Ok(req)
    }
}

type Chan = InterceptedService<Channel, Token>;

struct As {
    kv: KvClient<Chan>,
    auth: AuthClient<Chan>,
    lease: LeaseClient<Chan>,
    watch: WatchClient<Chan>,
    cluster: ClusterClient<Chan>,
}

fn as_token(n: &TestNode, token: Option<&str>) -> As {
    let t = Token(token.map(str::to_string));
    let ch = n.channel.clone();
    As {
        kv: KvClient::with_interceptor(ch.clone(), t.clone()),
        auth: AuthClient::with_interceptor(ch.clone(), t.clone()),
        lease: LeaseClient::with_interceptor(ch.clone(), t.clone()),
        watch: WatchClient::with_interceptor(ch.clone(), t.clone()),
        cluster: ClusterClient::with_interceptor(ch, t),
    }
}

async fn login(n: &TestNode, name: &str, password: &str) -> Result<String, tonic::Status> {
    AuthClient::new(n.channel.clone())
        .authenticate(AuthenticateRequest {
            name: name.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn as_user(n: &TestNode, name: &str, password: &str) -> As {
    let token = login(n, name, password).await.unwrap();
    as_token(n, Some(&token))
}

fn perm(t: Type, key: &str, end: &str) -> Option<Permission> {
    Some(Permission {
        perm_type: t as i32,
        key: key.into(),
        range_end: end.into(),
    })
}

fn range(key: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn put(key: &str, v: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: v.into(),
        ..Default::default()
    }
}

/// root (root role), alice (role `reader`: READ on prefix `a/`; role `writer`: READWRITE on
/// `w/1`, WRITE on [`w/2`, `w/5`)), auth enabled. Returns root's clients.
async fn setup(n: &TestNode) -> As {
    let mut a = AuthClient::new(n.channel.clone());
    for (name, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        a.user_add(AuthUserAddRequest {
            name: name.into(),
            password: pw.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for role in ["root", "reader", "writer"] {
        a.role_add(AuthRoleAddRequest { name: role.into() })
            .await
            .unwrap();
    }
    for (role, p) in [
        ("reader", perm(Type::Read, "a/", "a0")),
        ("writer", perm(Type::Readwrite, "w/1", "")),
        ("writer", perm(Type::Write, "w/2", "w/5")),
    ] {
        a.role_grant_permission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: p,
        })
        .await
        .unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "reader"), ("alice", "writer")] {
        a.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    n.put("a/1", "one").await;
    n.put("c", "see").await;
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
    as_user(n, "root", "rootpw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_needs_root_with_the_root_role() {
    let n = TestNode::start_with(ARGS).await;
    let mut a = AuthClient::new(n.channel.clone());
    let st = a
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.enabled);
    assert_eq!(st.auth_revision, 1, "a new store is at auth revision 1");
    assert_status(
        a.auth_enable(AuthEnableRequest {}).await,
        Code::FailedPrecondition,
        "etcdserver: root user does not exist",
    );
    a.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: "pw".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_status(
        a.auth_enable(AuthEnableRequest {}).await,
        Code::FailedPrecondition,
        "etcdserver: root user does not have root role",
    );
    // The root role need not exist to be granted (etcdctl relies on the order below).
    a.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    assert_status(
        login(&n, "root", "pw").await,
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    );
    a.auth_enable(AuthEnableRequest {}).await.unwrap();
    let token = login(&n, "root", "pw").await.unwrap();
    let (prefix, index) = token.split_once('.').unwrap();
    assert_eq!(prefix.len(), 16);
    assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()), "{token}");
    assert!(index.parse::<u64>().is_ok(), "{token}");
    let mut root = as_token(&n, Some(&token));
    let st = root
        .auth
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.enabled);
    // Enabling changes no revision (etcd's rule); two changes did.
    assert_eq!(st.auth_revision, 3);
    // Without a token, admin calls are refused.
    assert_status(
        a.auth_status(AuthStatusRequest {}).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    // Once enabled, root and its role cannot go.
    assert_status(
        root.auth
            .user_delete(AuthUserDeleteRequest {
                name: "root".into(),
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    assert_status(
        root.auth
            .user_revoke_role(AuthUserRevokeRoleRequest {
                name: "root".into(),
                role: "root".into(),
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: invalid auth management",
    );
    root.auth.auth_disable(AuthDisableRequest {}).await.unwrap();
    let st = a
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.enabled);
    assert_eq!(st.auth_revision, 4, "disabling moves the revision");
    // Tokens die with auth.
    assert_status(
        root.kv.range(range("x", "")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_role_rpcs_answer_as_etcd() {
    let n = TestNode::start_with(ARGS).await;
    let mut root = setup(&n).await;
    let a = &mut root.auth;
    let users = a
        .user_list(AuthUserListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.users, vec!["alice", "root"]);
    let roles = a
        .role_list(AuthRoleListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roles.roles, vec!["reader", "root", "writer"]);
    let alice = a
        .user_get(AuthUserGetRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.roles, vec!["reader", "writer"]);
    let w = a
        .role_get(AuthRoleGetRequest {
            role: "writer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        w.perm,
        vec![
            perm(Type::Readwrite, "w/1", "").unwrap(),
            perm(Type::Write, "w/2", "w/5").unwrap()
        ]
    );
    let rev = a
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .auth_revision;

    // Every refusal: etcd's error, and the auth revision does not move.
    let cases: Vec<(Result<(), tonic::Status>, Code, &str)> = vec![
        (
            a.user_add(AuthUserAddRequest {
                name: "alice".into(),
                password: "x".into(),
                ..Default::default()
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: user name already exists",
        ),
        (
            a.user_add(AuthUserAddRequest::default()).await.map(drop),
            Code::InvalidArgument,
            "etcdserver: user name is empty",
        ),
        (
            a.user_add(AuthUserAddRequest {
                name: "long".into(),
                password: "p".repeat(73),
                ..Default::default()
            })
            .await
            .map(drop),
            Code::Unknown,
            "bcrypt: password length exceeds 72 bytes",
        ),
        (
            a.user_get(AuthUserGetRequest {
                name: "nobody".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            a.user_delete(AuthUserDeleteRequest {
                name: "nobody".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            a.user_change_password(AuthUserChangePasswordRequest {
                name: "nobody".into(),
                password: "x".into(),
                ..Default::default()
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ),
        (
            a.user_grant_role(AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "nosuch".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            a.user_revoke_role(AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "root".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: role is not granted to the user",
        ),
        (
            a.role_add(AuthRoleAddRequest { name: "".into() })
                .await
                .map(drop),
            Code::InvalidArgument,
            "etcdserver: role name is empty",
        ),
        (
            a.role_add(AuthRoleAddRequest {
                name: "reader".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: role name already exists",
        ),
        (
            a.role_get(AuthRoleGetRequest {
                role: "nosuch".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            a.role_delete(AuthRoleDeleteRequest {
                role: "root".into(),
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            a.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "reader".into(),
                perm: None,
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            "etcdserver: permission not given",
        ),
        (
            a.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "reader".into(),
                perm: perm(Type::Read, "z", "a"),
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            a.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "reader".into(),
                perm: perm(Type::Read, "", ""),
            })
            .await
            .map(drop),
            Code::InvalidArgument,
            "etcdserver: invalid auth management",
        ),
        (
            a.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: "nosuch".into(),
                perm: perm(Type::Read, "k", ""),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ),
        (
            a.role_revoke_permission(AuthRoleRevokePermissionRequest {
                role: "writer".into(),
                key: "w/2".into(),
                range_end: "w/4".into(),
            })
            .await
            .map(drop),
            Code::FailedPrecondition,
            "etcdserver: permission is not granted to the role",
        ),
    ];
    for (res, code, msg) in cases {
        assert_status(res, code, msg);
    }
    let after = a
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .auth_revision;
    assert_eq!(after, rev, "refused changes change nothing");
    let users = a
        .user_list(AuthUserListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.users, vec!["alice", "root"]);

    // Granting a role twice is a no-op; the same permission again updates its type.
    a.user_grant_role(AuthUserGrantRoleRequest {
        user: "alice".into(),
        role: "reader".into(),
    })
    .await
    .unwrap();
    a.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "writer".into(),
        perm: perm(Type::Read, "w/1", ""),
    })
    .await
    .unwrap();
    let w = a
        .role_get(AuthRoleGetRequest {
            role: "writer".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.perm[0], perm(Type::Read, "w/1", "").unwrap());
    assert_eq!(w.perm.len(), 2);

    // A no-password user cannot log in with any password.
    a.user_add(AuthUserAddRequest {
        name: "svc".into(),
        password: "ignored".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_status(
        login(&n, "svc", "ignored").await,
        Code::Unknown,
        "auth: authentication failed, password was given for no password user",
    );
    // A deleted role leaves its users.
    a.role_delete(AuthRoleDeleteRequest {
        role: "writer".into(),
    })
    .await
    .unwrap();
    let alice = a
        .user_get(AuthUserGetRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alice.roles, vec!["reader"]);

    // A user reads itself and its roles, nothing else.
    let mut al = as_user(&n, "alice", "alicepw").await;
    assert!(al
        .auth
        .user_get(AuthUserGetRequest {
            name: "alice".into()
        })
        .await
        .is_ok());
    assert!(al
        .auth
        .role_get(AuthRoleGetRequest {
            role: "reader".into()
        })
        .await
        .is_ok());
    for r in [
        al.auth
            .user_get(AuthUserGetRequest {
                name: "root".into(),
            })
            .await
            .map(drop),
        al.auth
            .role_get(AuthRoleGetRequest {
                role: "root".into(),
            })
            .await
            .map(drop),
        al.auth.user_list(AuthUserListRequest {}).await.map(drop),
        al.auth.role_list(AuthRoleListRequest {}).await.map(drop),
        al.auth.auth_disable(AuthDisableRequest {}).await.map(drop),
        al.auth
            .role_add(AuthRoleAddRequest { name: "x".into() })
            .await
            .map(drop),
        al.cluster
            .member_remove(MemberRemoveRequest { id: 1 })
            .await
            .map(drop),
        {
            // pgraft's own member add on the client port is a membership change too.
            let mut admin = etcd_proto::pgraftpb::admin_client::AdminClient::with_interceptor(
                n.channel.clone(),
                Token(Some(login(&n, "alice", "alicepw").await.unwrap())),
            );
            admin
                .member_add_with_id(etcd_proto::pgraftpb::MemberAddWithIdRequest {
                    id: 77,
                    peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                    is_learner: true,
                })
                .await
                .map(drop)
        },
    ] {
        assert_status(r, Code::PermissionDenied, "etcdserver: permission denied");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_permissions_are_enforced_on_every_kv_operation() {
    let n = TestNode::start_with(ARGS).await;
    let mut root = setup(&n).await;
    let mut al = as_user(&n, "alice", "alicepw").await;
    let denied = |r: Result<(), tonic::Status>| {
        assert_status(r, Code::PermissionDenied, "etcdserver: permission denied")
    };
    let anon = as_token(&n, None);
    let mut anon_kv = anon.kv.clone();
    assert_status(
        anon_kv.range(range("a/1", "")).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    assert_status(
        anon_kv.put(put("w/1", "x")).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );

    // Range: READ on the key or the whole range.
    assert_eq!(
        al.kv
            .range(range("a/1", ""))
            .await
            .unwrap()
            .into_inner()
            .count,
        1
    );
    assert!(al.kv.range(range("a/", "a0")).await.is_ok());
    denied(al.kv.range(range("a/", "b")).await.map(drop));
    denied(al.kv.range(range("c", "")).await.map(drop));
    denied(al.kv.range(range("\0", "\0")).await.map(drop));
    // Put: WRITE; with prev_kv READ too.
    denied(al.kv.put(put("a/1", "x")).await.map(drop));
    al.kv.put(put("w/3", "x")).await.unwrap();
    al.kv
        .put(PutRequest {
            prev_kv: true,
            ..put("w/1", "x")
        })
        .await
        .unwrap();
    denied(
        al.kv
            .put(PutRequest {
                prev_kv: true,
                ..put("w/3", "y")
            })
            .await
            .map(drop),
    );
    // DeleteRange: WRITE on the range; with prev_kv READ too.
    al.kv
        .delete_range(DeleteRangeRequest {
            key: "w/2".into(),
            range_end: "w/4".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    denied(
        al.kv
            .delete_range(DeleteRangeRequest {
                key: "w/2".into(),
                range_end: "w/4".into(),
                prev_kv: true,
            })
            .await
            .map(drop),
    );
    denied(
        al.kv
            .delete_range(DeleteRangeRequest {
                key: "w/".into(),
                range_end: "w0".into(),
                ..Default::default()
            })
            .await
            .map(drop),
    );
    // Txn: every compare READ, every op of both branches, nested.
    let op = |r| RequestOp { request: Some(r) };
    use etcd_proto::etcdserverpb::request_op::Request as R;
    let cmp = |key: &str| Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Version as i32,
        key: key.into(),
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    };
    let ok_txn = TxnRequest {
        compare: vec![cmp("a/1")],
        success: vec![op(R::RequestPut(put("w/1", "t")))],
        failure: vec![op(R::RequestRange(range("a/1", "")))],
    };
    al.kv.txn(ok_txn.clone()).await.unwrap();
    for bad in [
        TxnRequest {
            compare: vec![cmp("c")],
            ..ok_txn.clone()
        },
        TxnRequest {
            failure: vec![op(R::RequestPut(put("c", "x")))],
            ..ok_txn.clone()
        },
        TxnRequest {
            success: vec![op(R::RequestTxn(TxnRequest {
                success: vec![op(R::RequestRange(range("c", "")))],
                ..Default::default()
            }))],
            ..ok_txn.clone()
        },
        TxnRequest {
            failure: vec![op(R::RequestDeleteRange(DeleteRangeRequest {
                key: "w/3".into(),
                prev_kv: true,
                ..Default::default()
            }))],
            ..ok_txn.clone()
        },
    ] {
        denied(al.kv.txn(bad).await.map(drop));
    }
    // Nothing alice was refused wrote anything.
    let c = root.kv.range(range("c", "")).await.unwrap().into_inner();
    assert_eq!(c.kvs[0].value, b"see");
    let a1 = root.kv.range(range("a/1", "")).await.unwrap().into_inner();
    assert_eq!(a1.kvs[0].value, b"one");

    // LeaseRevoke: WRITE on every attached key; a put may not attach a lease with keys the
    // user cannot write.
    let lease = root
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    al.kv
        .put(PutRequest {
            lease,
            ..put("w/1", "leased")
        })
        .await
        .unwrap();
    root.kv
        .put(PutRequest {
            lease,
            ..put("c", "leased")
        })
        .await
        .unwrap();
    denied(
        al.lease
            .lease_revoke(LeaseRevokeRequest { id: lease })
            .await
            .map(drop),
    );
    denied(
        al.kv
            .put(PutRequest {
                lease,
                ..put("w/3", "x")
            })
            .await
            .map(drop),
    );
    root.lease
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .unwrap();

    // A revoked permission takes effect at once, with the same token.
    root.auth
        .role_revoke_permission(AuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: "a/".into(),
            range_end: "a0".into(),
        })
        .await
        .unwrap();
    denied(al.kv.range(range("a/1", "")).await.map(drop));
    // A deleted user's tokens die with it.
    root.auth
        .user_delete(AuthUserDeleteRequest {
            name: "alice".into(),
        })
        .await
        .unwrap();
    assert_status(
        al.kv.put(put("w/1", "x")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_need_read_on_their_range() {
    let n = TestNode::start_with(ARGS).await;
    let _root = setup(&n).await;
    let mut al = as_user(&n, "alice", "alicepw").await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut out = al
        .watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let create = |key: &str, end: &str| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    };
    for (req, ok) in [
        (create("c", ""), false),
        (create("a/", "a0"), true),
        (create("a/", "\0"), false),
    ] {
        tx.send(req).await.unwrap();
        let r = tokio::time::timeout(TIMEOUT, out.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(r.created);
        if ok {
            assert!(!r.canceled, "{r:?}");
            assert_eq!(r.watch_id, 0);
        } else {
            assert!(r.canceled, "{r:?}");
            assert_eq!(r.watch_id, -1);
            assert_eq!(
                r.cancel_reason,
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            );
        }
    }
    // Without a token: etcd's formatted `user name is empty`.
    let mut anon = as_token(&n, None);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut out = anon
        .watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(create("a/1", "")).await.unwrap();
    let r = tokio::time::timeout(TIMEOUT, out.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(r.canceled);
    assert_eq!(
        r.cancel_reason,
        "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_passwords_get_etcds_errors() {
    let n = TestNode::start_with(ARGS).await;
    let _root = setup(&n).await;
    assert_status(
        login(&n, "alice", "wrong").await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_status(
        login(&n, "nobody", "x").await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_status(
        login(&n, "alice", &"x".repeat(100_000)).await,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    let long = "y".repeat(4000);
    for bad in [
        "",
        "garbage",
        "abc.def",
        "aaaaaaaaaaaaaaaa.99999999999",
        "aaaaaaaaaaaaaaaa.18446744073709551615",
        "a.b.c",
        long.as_str(),
    ] {
        let mut c = as_token(&n, Some(bad));
        assert_status(
            c.kv.range(range("a/1", "")).await,
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        );
    }
    // A token not valid as text at all (binary metadata is not a token).
    let mut req = tonic::Request::new(range("a/1", ""));
    req.metadata_mut().insert_bin(
        "token-bin",
        tonic::metadata::MetadataValue::from_bytes(&[0xff, 0]),
    );
    req.metadata_mut()
        .insert("authorization", MetadataValue::from_static("not-a-token"));
    assert_status(
        n.kv().range(req).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    // Tokens expire after --auth-token-ttl without use; use keeps them alive.
    let mut al = as_user(&n, "alice", "alicepw").await;
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
        al.kv.range(range("a/1", "")).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    assert_status(
        al.kv.range(range("a/1", "")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    // The gateway's Authorization header carries tokens, and etcd 3.5's `Bearer ` prefix.
    let token = login(&n, "alice", "alicepw").await.unwrap();
    let mut req = tonic::Request::new(range("a/1", ""));
    req.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(n.kv().range(req).await.unwrap().into_inner().count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_store_survives_a_restart() {
    let mut n = TestNode::start_with(ARGS).await;
    let _root = setup(&n).await;
    let old = login(&n, "alice", "alicepw").await.unwrap();
    n.restart().await;
    // Tokens live in memory (as etcd's simple tokens); users, roles and the flag do not.
    let mut stale = as_token(&n, Some(&old));
    assert_status(
        stale.kv.range(range("a/1", "")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
    let mut al = as_user(&n, "alice", "alicepw").await;
    assert_eq!(
        al.kv
            .range(range("a/1", ""))
            .await
            .unwrap()
            .into_inner()
            .count,
        1
    );
    assert_status(
        al.kv.range(range("c", "")).await,
        Code::PermissionDenied,
        "etcdserver: permission denied",
    );
    let mut root = as_user(&n, "root", "rootpw").await;
    let st = root
        .auth
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.enabled);
    assert!(st.auth_revision > 1);
}

/// The JSON gateway as Patroni uses it with `username`/`password`: `/v3/auth/authenticate`,
/// then the token in `Authorization` on reads, writes, leases and watches; errors as etcd's
/// gateway JSON with its HTTP statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_takes_tokens_in_authorization() {
    use base64::Engine as _;
    use serde_json::{json, Value};
    let n = TestNode::start_with(ARGS).await;
    let _root = setup(&n).await;
    let addr = n.node.as_ref().unwrap().client_addrs[0];
    let http = reqwest::Client::builder().timeout(TIMEOUT).build().unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let call = |path: &str, body: Value, token: Option<&str>| {
        let mut req = http
            .post(format!("http://{addr}{path}"))
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    let err = |msg: &str, code: i32| json!({"error": msg, "message": msg, "code": code});

    let (st, body) = call(
        "/v3/auth/authenticate",
        json!({"name": "alice", "password": "alicepw"}),
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let t = Some(token.as_str());
    let (st, body) = call("/v3/kv/range", json!({"key": b64("a/1")}), t).await;
    assert_eq!((st, &body["count"]), (200, &json!("1")), "{body}");
    let (st, _) = call(
        "/v3/kv/put",
        json!({"key": b64("w/1"), "value": b64("v")}),
        t,
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = call("/v3/lease/grant", json!({"TTL": "30"}), t).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call("/v3/kv/range", json!({"key": b64("c")}), t).await;
    assert_eq!((st, body), (403, err("etcdserver: permission denied", 7)));
    let (st, body) = call("/v3/kv/range", json!({"key": b64("a/1")}), None).await;
    assert_eq!((st, body), (400, err("etcdserver: user name is empty", 3)));
    let (st, body) = call("/v3/kv/range", json!({"key": b64("a/1")}), Some("bogus.1")).await;
    assert_eq!((st, body), (401, err("etcdserver: invalid auth token", 16)));
    let (st, body) = call(
        "/v3/auth/authenticate",
        json!({"name": "alice", "password": "nope"}),
        None,
    )
    .await;
    assert_eq!(
        (st, body),
        (
            400,
            err(
                "etcdserver: authentication failed, invalid user ID or password",
                3
            )
        )
    );
    let (st, body) = call("/v3/auth/user/list", json!({}), t).await;
    assert_eq!((st, body), (403, err("etcdserver: permission denied", 7)));
    // A watch on the gateway is checked with the request's token.
    let resp = http
        .post(format!("http://{addr}/v3/watch"))
        .header("authorization", &token)
        .body(json!({"create_request": {"key": b64("c")}}).to_string())
        .send()
        .await
        .unwrap();
    let mut resp = resp;
    let chunk = tokio::time::timeout(TIMEOUT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let line: Value = serde_json::from_slice(&chunk).unwrap();
    assert_eq!(line["result"]["canceled"], json!(true), "{line}");
    assert_eq!(
        line["result"]["cancel_reason"],
        json!("rpc error: code = PermissionDenied desc = etcdserver: permission denied")
    );
}

/// A member that catches up through a raft snapshot gets the auth store with it: users, roles,
/// permissions, the enabled flag and the auth revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raft_snapshot_carries_the_auth_store() {
    use clap::Parser;
    use pgraft_server::auth::{Caller, Need};
    use pgraft_server::{Config, Node};
    use std::time::{Duration, Instant};
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let config = |dir: &std::path::Path, name: &str, peer: &str, cluster: &str, state: &str| {
        Config::parse_from([
            "pgraftd".to_string(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.display()),
            "--listen-client-urls=http://127.0.0.1:0".into(),
            "--advertise-client-urls=http://127.0.0.1:0".into(),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--snapshot-count=50".into(),
            "--bcrypt-cost=4".into(),
        ])
    };
    let dir = tempfile::tempdir().unwrap();
    let (ua, ub) = (
        format!("http://127.0.0.1:{}", free_port()),
        format!("http://127.0.0.1:{}", free_port()),
    );
    let a = Node::start(config(
        &dir.path().join("a"),
        "a",
        &ua,
        &format!("a={ua}"),
        "new",
    ))
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", a.client_addrs[0]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let tn = TestNode {
        node: None,
        dir: tempfile::tempdir().unwrap(),
        channel,
        extra_args: vec![],
    };
    let mut root = setup(&tn).await;
    // Enough entries after the auth changes that the log before them is compacted away.
    for i in 0..120 {
        root.kv.put(put(&format!("k/{i}"), "v")).await.unwrap();
    }
    let before = pgraft_server::snapshot::stats().installed;
    a.server
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![ub.clone()],
            is_learner: true,
        })
        .await
        .unwrap();
    let b = Node::start(config(
        &dir.path().join("b"),
        "b",
        &ub,
        &format!("a={ua},b={ub}"),
        "existing",
    ))
    .await
    .unwrap();
    let want = a.server.auth.revision();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(b.server.auth.is_enabled() && b.server.auth.revision() == want) {
        assert!(
            Instant::now() < deadline,
            "the new member has no auth store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pgraft_server::snapshot::stats().installed > before,
        "no snapshot installed"
    );
    let alice = Caller::User {
        name: "alice".into(),
        revision: want,
    };
    let auth = &b.server.auth;
    assert_eq!(auth.check(&alice, Need::Read, b"a/1", b""), Ok(()));
    assert_eq!(auth.check(&alice, Need::Write, b"w/3", b""), Ok(()));
    assert!(auth.check(&alice, Need::Read, b"c", b"").is_err());
    assert_eq!(
        auth.user_get(&Caller::Internal, "alice").unwrap(),
        vec!["reader", "writer"]
    );
    assert!(auth.password_hash("root").is_ok());
    b.stop().await;
    a.stop().await;
}

/// `--auth-token jwt,...` (etcd's option syntax): signed tokens carrying the user and the auth
/// revision, with RSA and EC keys (test keys in `tests/keys`). A token issued before an auth
/// change is stale (`revision of auth store is old`); a forged or garbled one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_with_rsa_and_ec_keys() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    for (alg, name) in [("RS256", "rsa"), ("ES256", "ec")] {
        let flag = format!(
            "--auth-token=jwt,pub-key={keys}/{name}.pub,priv-key={keys}/{name}.key,sign-method={alg},ttl=1h"
        );
        let n = TestNode::start_with(&["--bcrypt-cost=4", &flag]).await;
        let mut root = setup(&n).await;
        let token = login(&n, "alice", "alicepw").await.unwrap();
        assert_eq!(token.split('.').count(), 3, "{alg}: {token}");
        let mut al = as_token(&n, Some(&token));
        assert_eq!(
            al.kv
                .range(range("a/1", ""))
                .await
                .unwrap()
                .into_inner()
                .count,
            1
        );
        assert_status(
            al.kv.range(range("c", "")).await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
        // Any other signature, or a garbled token, is no token.
        let (head, _) = token.rsplit_once('.').unwrap();
        for bad in [
            format!("{head}.AAAA"),
            "x.y.z".to_string(),
            token.replace('.', ""),
        ] {
            assert_status(
                as_token(&n, Some(&bad)).kv.range(range("a/1", "")).await,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            );
        }
        // An auth change makes issued tokens stale; a new login works.
        root.auth
            .role_add(AuthRoleAddRequest { name: "x".into() })
            .await
            .unwrap();
        // Admin checks look at the user, not the revision (etcd's `IsAdminPermitted`).
        assert!(root.auth.user_list(AuthUserListRequest {}).await.is_ok());
        assert_status(
            al.kv.range(range("a/1", "")).await,
            Code::InvalidArgument,
            "etcdserver: revision of auth store is old",
        );
        let mut al = as_user(&n, "alice", "alicepw").await;
        assert!(al.kv.range(range("a/1", "")).await.is_ok());
    }
}

/// Lock and Election act on keys as their caller (as etcd's, whose servers run the
/// concurrency recipes with the client's credentials): a user needs READWRITE on the lock's
/// or election's keys, READ to ask who leads; errors are the client-side ones etcd answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_act_as_the_caller() {
    use etcd_proto::v3electionpb::election_client::ElectionClient;
    use etcd_proto::v3electionpb::{CampaignRequest, LeaderRequest, ResignRequest};
    use etcd_proto::v3lockpb::lock_client::LockClient;
    use etcd_proto::v3lockpb::{LockRequest, UnlockRequest};
    let n = TestNode::start_with(ARGS).await;
    let mut root = setup(&n).await;
    root.auth
        .role_add(AuthRoleAddRequest {
            name: "locks".into(),
        })
        .await
        .unwrap();
    root.auth
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "locks".into(),
            perm: perm(Type::Readwrite, "l/", "l0"),
        })
        .await
        .unwrap();
    root.auth
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "locks".into(),
        })
        .await
        .unwrap();
    let lease = root
        .lease
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let alice = Token(Some(login(&n, "alice", "alicepw").await.unwrap()));
    let lock = |name: &str| LockRequest {
        name: name.as_bytes().to_vec(),
        lease,
    };
    let mut locks = LockClient::with_interceptor(n.channel.clone(), alice.clone());
    let mut elections = ElectionClient::with_interceptor(n.channel.clone(), alice);

    // Only READ on a/: no lock there, but the question who leads a/e may be asked.
    assert_status(
        locks.lock(lock("a/lock")).await,
        Code::Unknown,
        "etcdserver: permission denied",
    );
    assert_status(
        elections
            .leader(LeaderRequest {
                name: b"a/e".to_vec(),
            })
            .await,
        Code::Unknown,
        "election: no leader",
    );
    // Nothing was left behind by the refused lock.
    let left = root.kv.range(range("a/lock", "a/lock0")).await.unwrap();
    assert_eq!(left.into_inner().count, 0);

    // READWRITE on l/: locks, campaigns, resigns and unlocks as alice.
    let locked = locks.lock(lock("l/x")).await.unwrap().into_inner();
    assert!(locked.key.starts_with(b"l/x/"));
    locks
        .unlock(UnlockRequest {
            key: locked.key.clone(),
        })
        .await
        .unwrap();
    let won = elections
        .campaign(CampaignRequest {
            name: b"l/e".to_vec(),
            lease,
            value: b"alice".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let leads = elections
        .leader(LeaderRequest {
            name: b"l/e".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leads.kv.unwrap().value, b"alice");
    elections
        .resign(ResignRequest { leader: won.leader })
        .await
        .unwrap();

    // No user at all: etcd's `user name is empty`.
    assert_status(
        LockClient::new(n.channel.clone()).lock(lock("l/y")).await,
        Code::Unknown,
        "etcdserver: user name is empty",
    );
}

/// The maintenance calls etcd's `authMaintenanceServer` guards need root while auth is on:
/// a user may not copy the whole state (users and hashes included), hash or defragment it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_hash_and_defragment_are_roots_while_auth_is_on() {
    use etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_proto::etcdserverpb::{
        DefragmentRequest, HashKvRequest, HashRequest, SnapshotRequest,
    };
    let n = TestNode::start_with(ARGS).await;
    setup(&n).await;
    let alice = Token(Some(login(&n, "alice", "alicepw").await.unwrap()));
    let root = Token(Some(login(&n, "root", "rootpw").await.unwrap()));
    let mut m = MaintenanceClient::with_interceptor(n.channel.clone(), alice);
    let denied = |r: Result<(), tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert_eq!(e.message(), "etcdserver: permission denied");
    };
    denied(m.snapshot(SnapshotRequest {}).await.map(|_| ()));
    denied(m.hash(HashRequest {}).await.map(|_| ()));
    denied(m.hash_kv(HashKvRequest { revision: 0 }).await.map(|_| ()));
    denied(m.defragment(DefragmentRequest {}).await.map(|_| ()));
    // Root may.
    let mut m = MaintenanceClient::with_interceptor(n.channel.clone(), root);
    m.hash_kv(HashKvRequest { revision: 0 }).await.unwrap();
    m.snapshot(SnapshotRequest {}).await.unwrap();
}
