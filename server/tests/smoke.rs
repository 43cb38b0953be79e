//! The first thing a client does: write, read back, survive a restart.

mod common;
use common::TestNode;

#[tokio::test]
async fn put_get_restart() {
    let mut n = TestNode::start().await;
    assert_eq!(n.put("foo", "bar").await, 2);
    assert_eq!(n.put("foo", "baz").await, 3);
    let kv = n.get("foo").await.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    n.restart().await;
    let kv = n.get("foo").await.unwrap();
    assert_eq!(kv.value, b"baz");
    assert_eq!(n.put("foo", "qux").await, 4);
}

/// A `unix://` client URL (etcd's): gRPC over a Unix socket, beside the TCP listener; a stale
/// socket file left by a stop is replaced at the next start.
#[tokio::test]
async fn unix_socket_client_url() {
    use etcd_proto::etcdserverpb::{kv_client::KvClient, PutRequest};
    let sock = tempfile::tempdir().unwrap();
    let path = sock.path().join("client.sock");
    let url = format!(
        "--listen-client-urls=http://127.0.0.1:0,unix://{}",
        path.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        <pgraft_server::Config as clap::Parser>::parse_from([
            "pgraftd".to_string(),
            format!("--data-dir={}", dir.path().display()),
            url.clone(),
            "--listen-peer-urls=http://127.0.0.1:0".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=default=http://127.0.0.1:2380".into(),
        ])
    };
    for round in 0..2 {
        let node = pgraft_server::Node::start(cfg()).await.unwrap();
        let p = path.clone();
        let ch = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(p).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let r = KvClient::new(ch)
            .put(PutRequest {
                key: b"over-unix".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.header.unwrap().revision, round + 2);
        // The socket file stays behind after a stop; the next start replaces it.
        node.stop().await;
    }
}
