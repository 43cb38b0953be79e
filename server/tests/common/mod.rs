//! Test harness: a real pgraft member on 127.0.0.1 with a port the OS picked, its data in a
//! temporary directory, reached through the generated etcd gRPC clients.

#![allow(dead_code)]

use clap::Parser;
use etcd_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, maintenance_client::MaintenanceClient,
    request_op::Request, watch_client::WatchClient, watch_request::RequestUnion,
    DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use pgraft_server::{Config, Node};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// The longest any single stream read or RPC may take in a test before it counts as hung.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub struct TestNode {
    pub node: Option<Node>,
    pub dir: tempfile::TempDir,
    pub channel: Channel,
    pub extra_args: Vec<String>,
}

pub fn config(dir: &Path, extra: &[String]) -> Config {
    let mut args = vec![
        "pgraftd".to_string(),
        "--name=t1".into(),
        format!("--data-dir={}", dir.join("data").display()),
        "--listen-client-urls=http://127.0.0.1:0".into(),
        "--advertise-client-urls=http://127.0.0.1:0".into(),
        "--listen-peer-urls=http://127.0.0.1:0".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=t1=http://127.0.0.1:2380".into(),
    ];
    args.extend(extra.iter().cloned());
    Config::parse_from(args)
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (node, channel) = boot(dir.path(), &extra).await;
        TestNode {
            node: Some(node),
            dir,
            channel,
            extra_args: extra,
        }
    }

    /// Stops the member cleanly and starts it again on the same data directory.
    pub async fn restart(&mut self) {
        self.node.take().unwrap().stop().await;
        let (node, channel) = boot(self.dir.path(), &self.extra_args).await;
        self.node = Some(node);
        self.channel = channel;
    }

    // Clients accept responses of any size, as the etcd Go client does (its default
    // MaxCallRecvMsgSize is math.MaxInt32): a watcher catching up can get a large batch.
    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(i32::MAX as usize)
    }
    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }
    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(i32::MAX as usize)
    }
    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }

    pub async fn put(&self, k: &str, v: &str) -> i64 {
        self.kv()
            .put(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
    }

    pub async fn get(&self, k: &str) -> Option<etcd_proto::mvccpb::KeyValue> {
        self.kv()
            .range(RangeRequest {
                key: k.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .kvs
            .pop()
    }
}

impl TestNode {
    /// The current store revision (the header of a Range).
    pub async fn rev(&self) -> i64 {
        self.kv()
            .range(RangeRequest {
                key: b"\0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
    }

    /// Grants a lease (`id` 0: server-assigned) and returns its ID.
    pub async fn grant(&self, ttl: i64, id: i64) -> i64 {
        self.lease()
            .lease_grant(LeaseGrantRequest { ttl, id })
            .await
            .unwrap()
            .into_inner()
            .id
    }

    /// The keys attached to lease `id` (TimeToLive with `keys`).
    pub async fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.lease()
            .lease_time_to_live(etcd_proto::etcdserverpb::LeaseTimeToLiveRequest { id, keys: true })
            .await
            .unwrap()
            .into_inner()
            .keys
    }

    /// Puts `k` attached to `lease`; returns the header revision.
    pub async fn put_lease(&self, k: &str, v: &str, lease: i64) -> i64 {
        self.kv()
            .put(PutRequest {
                key: k.into(),
                value: v.into(),
                lease,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .revision
    }

    /// Opens a Watch stream.
    pub async fn watch_stream(&self) -> WatchConn {
        let (tx, rx) = mpsc::channel(64);
        let resp = tokio::time::timeout(
            TIMEOUT,
            self.watch()
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .expect("watch RPC timed out")
        .expect("watch RPC");
        WatchConn {
            tx: Some(tx),
            rx: resp.into_inner(),
        }
    }
}

pub fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}

pub fn range_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: k.into(),
            ..Default::default()
        })),
    }
}

pub fn delete_op(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: k.into(),
            range_end: end.into(),
            ..Default::default()
        })),
    }
}

/// One client Watch stream: requests go in through `tx`, responses are read with a bound.
pub struct WatchConn {
    pub tx: Option<mpsc::Sender<WatchRequest>>,
    pub rx: tonic::Streaming<WatchResponse>,
}

impl WatchConn {
    pub async fn send(&self, r: RequestUnion) {
        self.tx
            .as_ref()
            .expect("request side closed")
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .expect("watch request stream closed");
    }

    /// Sends a create request and returns the `created` response.
    pub async fn create(&mut self, c: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(c)).await;
        let r = self.next().await;
        assert!(r.created, "expected a created response, got {r:?}");
        r
    }

    /// Creates a watch on `key` (single key, from now) and returns its ID.
    pub async fn watch_key(&mut self, key: &str) -> i64 {
        self.create(WatchCreateRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .watch_id
    }

    /// The next response; panics if none arrives within [`TIMEOUT`].
    pub async fn next(&mut self) -> WatchResponse {
        match tokio::time::timeout(TIMEOUT, self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => panic!("watch stream ended"),
            Ok(Err(e)) => panic!("watch stream failed: {e:?}"),
            Err(_) => panic!("no watch response within {TIMEOUT:?}"),
        }
    }

    /// Asserts that nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(r) = tokio::time::timeout(d, self.rx.message()).await {
            panic!("expected no watch response, got {r:?}");
        }
    }
}

async fn boot(dir: &Path, extra: &[String]) -> (Node, Channel) {
    let node = Node::start(config(dir, extra)).await.expect("node starts");
    let addr = node.client_addrs[0];
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    // Wait until the single member has elected itself.
    for _ in 0..200 {
        if node.server.raft.status.leader() != 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_ne!(node.server.raft.status.leader(), 0, "no leader after 2 s");
    (node, channel)
}

/// Asserts a gRPC error with etcd's exact code and message.
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    msg: &str,
) {
    let e = r.expect_err("expected an error");
    assert_eq!((e.code(), e.message()), (code, msg), "{e:?}");
}

/// A port free now, for URLs that must be known before a member starts.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The command lines of `n` members of a new cluster on free loopback peer ports, each with its
/// data in its own directory under `dir` and `extra` flags (a member restarts with its own).
pub fn cluster_args(dir: &Path, n: usize, extra: &[&str]) -> Vec<Vec<String>> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let mut args = vec![
                "pgraftd".to_string(),
                format!("--name=m{i}"),
                format!("--data-dir={}", dir.join(format!("m{i}")).display()),
                "--listen-client-urls=http://127.0.0.1:0".into(),
                "--advertise-client-urls=http://127.0.0.1:0".into(),
                format!("--listen-peer-urls=http://127.0.0.1:{port}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{port}"),
                format!("--initial-cluster={cluster}"),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            args
        })
        .collect()
}

/// `n` members started together as a new cluster (see [`cluster_args`]); returns once every one
/// serves (it has published itself through the log: a leader was elected).
pub async fn start_cluster(dir: &Path, n: usize, extra: &[&str]) -> Vec<Node> {
    start_members(&cluster_args(dir, n, extra)).await
}

/// Members started together from their command lines; returns once every one serves.
pub async fn start_members(args: &[Vec<String>]) -> Vec<Node> {
    let starts = args.iter().cloned().map(|args| async move {
        Node::start(Config::parse_from(args))
            .await
            .expect("member starts")
    });
    let nodes = futures::future::join_all(starts).await;
    for node in &nodes {
        tokio::time::timeout(Duration::from_secs(30), node.ready())
            .await
            .expect("member serves within 30 s");
    }
    nodes
}

/// A gRPC channel to a member's client port.
pub async fn channel(node: &Node) -> Channel {
    Channel::from_shared(format!("http://{}", node.client_addrs[0]))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}
