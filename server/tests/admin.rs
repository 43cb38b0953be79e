//! pgraft's own `pgraftpb.Admin` service on the client port: a member's raft view, and
//! MemberAdd under a chosen ID (what the PostgreSQL extension's status and membership
//! functions use).

mod common;

use common::TestNode;
use etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use etcd_proto::etcdserverpb::{MemberListRequest, MemberRemoveRequest};
use etcd_proto::pgraftpb::admin_client::AdminClient;
use etcd_proto::pgraftpb::{MemberAddWithIdRequest, RaftStatusRequest};
use tonic::Code;

fn add(id: u64, url: &str, learner: bool) -> MemberAddWithIdRequest {
    MemberAddWithIdRequest {
        id,
        peer_ur_ls: vec![url.into()],
        is_learner: learner,
    }
}

#[tokio::test]
async fn raft_status_reports_the_leader_and_its_log() {
    let n = TestNode::start().await;
    let mut admin = AdminClient::new(n.channel.clone());
    let before = admin
        .raft_status(RaftStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.role, "leader");
    assert_eq!(before.leader, before.id);
    assert!(before.term >= 1);
    assert!(
        before.elections >= 1,
        "a single member campaigns once: {before:?}"
    );
    assert!(before.progress.is_empty(), "no followers: {before:?}");
    for i in 0..5 {
        n.put(&format!("k{i}"), "v").await;
    }
    let after = admin
        .raft_status(RaftStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        after.commit_index >= before.commit_index + 5,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.applied_index, after.commit_index);
    assert_eq!(after.last_index, after.commit_index);
    assert!(after.first_index >= 1 && after.first_index <= after.last_index);
    assert_eq!(after.snapshot_index, after.first_index - 1);
    let header = after.header.unwrap();
    assert_eq!(header.member_id, after.id);
    assert_ne!(header.cluster_id, 0);
}

#[tokio::test]
async fn member_add_with_id_uses_the_callers_id() {
    let n = TestNode::start().await;
    let mut admin = AdminClient::new(n.channel.clone());
    let mut cluster = ClusterClient::new(n.channel.clone());

    let e = admin
        .member_add_with_id(add(0, "http://127.0.0.1:1", true))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "pgraft: member ID must not be 0")
    );

    let r = admin
        .member_add_with_id(add(0x4242, "http://127.0.0.1:1", true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.member.as_ref().unwrap().id, 0x4242);
    assert!(r.member.unwrap().is_learner);
    let listed = cluster
        .member_list(MemberListRequest { linearizable: true })
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .members
        .iter()
        .any(|m| m.id == 0x4242 && m.is_learner));

    // The leader now reports the learner's progress.
    let st = admin
        .raft_status(RaftStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.progress.len(), 1, "{st:?}");
    assert_eq!(st.progress[0].id, 0x4242);
    assert!(st.progress[0].is_learner);

    // etcd's checks, in etcd's order.
    let e = admin
        .member_add_with_id(add(0x4242, "http://127.0.0.1:2", true))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: member ID already exist");
    let e = admin
        .member_add_with_id(add(0x77, "http://127.0.0.1:1", false))
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: Peer URLs already exists");
    let e = admin
        .member_add_with_id(add(0x78, "http://127.0.0.1:3", true))
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        "etcdserver: too many learner members in cluster"
    );

    // A removed ID is never reused.
    cluster
        .member_remove(MemberRemoveRequest { id: 0x4242 })
        .await
        .unwrap();
    let e = admin
        .member_add_with_id(add(0x4242, "http://127.0.0.1:1", true))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "pgraft: member ID 4242 was removed from this cluster and cannot be reused"
    );
}
