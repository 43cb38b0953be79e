//! TLS on the client and peer ports, with certificates made here (rcgen): gRPC and the JSON
//! gateway on one https port, plain and wrong-CA clients refused, client certificates required
//! and their common name taken as the user, certificates reloaded when their files change, and
//! a three-member cluster whose peers talk mutual TLS, refusing a peer without a certificate.

mod common;

use clap::Parser;
use common::{free_port, TIMEOUT};
use etcd_proto::authpb::{permission::Type as PermType, Permission};
use etcd_proto::etcdserverpb::{
    auth_client::AuthClient, kv_client::KvClient, AuthEnableRequest, AuthRoleAddRequest,
    AuthRoleGrantPermissionRequest, AuthUserAddRequest, AuthUserGrantRoleRequest, PutRequest,
    RangeRequest,
};
use etcd_proto::pgraftpb::{raft_peer_client::RaftPeerClient, MembersRequest};
use pgraft_server::{Config, Node};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};

/// A test CA that signs certificates for 127.0.0.1 and localhost.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A certificate (PEM) and its key (PEM) with common name `cn`, for servers and clients.
    fn issue(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a certificate for `cn` and this CA's own into `dir`: (cert, key, ca) paths.
    fn write(&self, dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = self.issue(cn);
        let paths = (
            dir.join("cert.pem"),
            dir.join("key.pem"),
            dir.join("ca.pem"),
        );
        std::fs::write(&paths.0, cert).unwrap();
        std::fs::write(&paths.1, key).unwrap();
        std::fs::write(&paths.2, &self.pem).unwrap();
        paths
    }
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client TLS configuration trusting `ca`, presenting `identity` (cert, key PEM) if given.
fn client_tls(
    ca: &str,
    identity: Option<&(String, String)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// A gRPC channel over TLS to `addr`.
async fn grpc(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let cfg = cfg.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls_connect(addr, cfg).await?))
            }
        }))
        .await
}

fn member_config(dir: &Path, args: &[String]) -> Config {
    let mut argv = vec![
        "pgraftd".to_string(),
        format!("--data-dir={}", dir.join("data").display()),
    ];
    argv.extend(args.iter().cloned());
    Config::parse_from(argv)
}

/// One member serving clients on https://127.0.0.1 with `extra` flags.
async fn start_tls_member(dir: &Path, files: &(PathBuf, PathBuf, PathBuf), extra: &[&str]) -> Node {
    let mut args = vec![
        "--name=t1".to_string(),
        "--listen-client-urls=https://127.0.0.1:0".into(),
        "--advertise-client-urls=https://127.0.0.1:2379".into(),
        "--listen-peer-urls=http://127.0.0.1:0".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=t1=http://127.0.0.1:2380".into(),
        format!("--cert-file={}", files.0.display()),
        format!("--key-file={}", files.1.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Node::start(member_config(dir, &args)).await.unwrap()
}

async fn put(kv: &mut KvClient<Channel>, k: &str) -> Result<i64, tonic::Status> {
    kv.put(PutRequest {
        key: k.into(),
        value: b"v".to_vec(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().header.unwrap().revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_port_serves_grpc_and_the_gateway_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let files = ca.write(&dir.path().join("tls"), "server");
    let node = start_tls_member(dir.path(), &files, &[]).await;
    let addr = node.client_addrs[0];

    // gRPC over TLS (ALPN h2).
    let ch = grpc(addr, client_tls(&ca.pem, None, &[b"h2"]))
        .await
        .unwrap();
    let mut kv = KvClient::new(ch);
    assert!(put(&mut kv, "k").await.unwrap() > 1);

    // The JSON gateway on the same port (ALPN http/1.1).
    let mut s = tls_connect(addr, client_tls(&ca.pem, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let body = r#"{"key":"aw=="}"#;
    let req = format!(
        "POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .ok();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""value":"dg==""#), "{resp}");

    // Plain HTTP/2 on the TLS port is refused.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT)
        .connect()
        .await;
    if let Ok(ch) = plain {
        assert!(put(&mut KvClient::new(ch), "plain").await.is_err());
    }

    // A client that trusts another CA refuses the member's certificate.
    let other = Ca::new("other ca");
    let e = tls_connect(addr, client_tls(&other.pem, None, &[b"h2"])).await;
    assert!(e.is_err(), "a certificate from an unknown CA was accepted");

    // And the member still serves.
    assert!(put(&mut kv, "k").await.is_ok());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_name_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let files = ca.write(&dir.path().join("tls"), "server");
    let trusted = format!("--trusted-ca-file={}", files.2.display());
    let node = start_tls_member(dir.path(), &files, &["--client-cert-auth", &trusted]).await;
    let addr = node.client_addrs[0];

    // No certificate, or one from another CA: no connection.
    let none = client_tls(&ca.pem, None, &[b"h2"]);
    let refused = match grpc(addr, none).await {
        Err(_) => true,
        Ok(ch) => put(&mut KvClient::new(ch), "x").await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");
    let stranger = Ca::new("other ca").issue("root");
    let refused = match grpc(addr, client_tls(&ca.pem, Some(&stranger), &[b"h2"])).await {
        Err(_) => true,
        Ok(ch) => put(&mut KvClient::new(ch), "x").await.is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // root's certificate sets auth up (no token: its CN is the user once auth is on).
    let root = grpc(addr, client_tls(&ca.pem, Some(&ca.issue("root")), &[b"h2"]))
        .await
        .unwrap();
    let mut auth = AuthClient::new(root.clone());
    for (user, role) in [("root", "root"), ("alice", "a-only")] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: "pw".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        if role != "root" {
            auth.role_add(AuthRoleAddRequest { name: role.into() })
                .await
                .unwrap();
        }
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .unwrap();
    }
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "a-only".into(),
        perm: Some(Permission {
            perm_type: PermType::Readwrite as i32,
            key: b"a".to_vec(),
            range_end: vec![],
        }),
    })
    .await
    .unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();

    // alice's certificate: her permissions, with no token.
    let alice = grpc(
        addr,
        client_tls(&ca.pem, Some(&ca.issue("alice")), &[b"h2"]),
    )
    .await
    .unwrap();
    let mut kv = KvClient::new(alice);
    assert!(put(&mut kv, "a").await.is_ok());
    let e = put(&mut kv, "b").await.unwrap_err();
    assert_eq!(e.message(), "etcdserver: permission denied", "{e:?}");
    let e = kv
        .range(RangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.message(), "etcdserver: permission denied", "{e:?}");

    // A certificate naming no user is refused as etcd refuses an unknown user.
    let mut kv = KvClient::new(
        grpc(
            addr,
            client_tls(&ca.pem, Some(&ca.issue("mallory")), &[b"h2"]),
        )
        .await
        .unwrap(),
    );
    assert!(put(&mut kv, "a").await.is_err());

    // root's certificate may do everything.
    assert!(put(&mut KvClient::new(root), "b").await.is_ok());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test ca");
    let files = ca.write(&dir.path().join("tls"), "first");
    let node = start_tls_member(dir.path(), &files, &[]).await;
    let addr = node.client_addrs[0];
    let presented = || async {
        let s = tls_connect(addr, client_tls(&ca.pem, None, &[b"h2"]))
            .await
            .unwrap();
        let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        pgraft_server::tls::common_name(&leaf)
    };
    assert_eq!(presented().await.as_deref(), Some("first"));

    // Rotated in place (new files renamed over the old, as cert-manager and certbot do).
    let (cert, key) = ca.issue("second");
    let tmp = dir.path().join("tls/new");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("cert.pem"), cert).unwrap();
    std::fs::write(tmp.join("key.pem"), key).unwrap();
    std::fs::rename(tmp.join("key.pem"), &files.1).unwrap();
    std::fs::rename(tmp.join("cert.pem"), &files.0).unwrap();
    assert_eq!(presented().await.as_deref(), Some("second"));

    // A broken file keeps the last good certificate rather than failing every handshake.
    std::fs::write(&files.0, "not a certificate").unwrap();
    assert_eq!(presented().await.as_deref(), Some("second"));
    node.stop().await;
}

/// Three members with https peer URLs and `--peer-client-cert-auth`: they elect a leader and
/// replicate over mutual TLS; a connection to a peer port without a certificate from the peer
/// CA gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_replicates_over_peer_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("peer ca");
    let names = ["a", "b", "c"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let cluster = names
        .iter()
        .zip(&ports)
        .map(|(n, p)| format!("{n}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let starts = names.iter().zip(&ports).map(|(name, port)| {
        let d = dir.path().join(name);
        let (cert, key, ca_file) = ca.write(&d.join("tls"), &format!("member-{name}"));
        let args = vec![
            format!("--name={name}"),
            "--listen-client-urls=http://127.0.0.1:0".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            format!("--listen-peer-urls=https://127.0.0.1:{port}"),
            format!("--initial-advertise-peer-urls=https://127.0.0.1:{port}"),
            format!("--initial-cluster={cluster}"),
            format!("--peer-cert-file={}", cert.display()),
            format!("--peer-key-file={}", key.display()),
            format!("--peer-trusted-ca-file={}", ca_file.display()),
            "--peer-client-cert-auth".into(),
        ];
        async move { Node::start(member_config(&d, &args)).await.unwrap() }
    });
    let nodes = futures::future::join_all(starts).await;
    // Every member serves once it has published itself through the log: a leader was
    // elected and entries committed over the TLS links.
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(20), n.ready())
            .await
            .expect("member ready over peer TLS");
    }
    let client = |n: &Node| {
        let url = format!("http://{}", n.client_addrs[0]);
        async move { KvClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap()) }
    };
    let rev = put(&mut client(&nodes[0]).await, "k").await.unwrap();
    for n in &nodes {
        let r = client(n)
            .await
            .range(RangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.kvs.len(), 1);
        assert!(r.header.unwrap().revision >= rev);
    }

    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    // Plain TCP on the TLS peer port: no raft stream, no gRPC.
    let plain = RaftPeerClient::connect(format!("http://{peer}")).await;
    if let Ok(mut c) = plain {
        assert!(c.members(MembersRequest {}).await.is_err());
    }
    // TLS without a client certificate, or with one from another CA: refused.
    for identity in [None, Some(Ca::new("rogue").issue("member-a"))] {
        let cfg = client_tls(&ca.pem, identity.as_ref(), &[b"h2"]);
        let refused = match grpc(peer, cfg).await {
            Err(_) => true,
            Ok(ch) => RaftPeerClient::new(ch)
                .members(MembersRequest {})
                .await
                .is_err(),
        };
        assert!(
            refused,
            "peer port served a client without a peer certificate"
        );
    }
    // A holder of a peer certificate is served (the joining member's question).
    let cfg = client_tls(&ca.pem, Some(&ca.issue("member-x")), &[b"h2"]);
    let members = RaftPeerClient::new(grpc(peer, cfg).await.unwrap())
        .members(MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 3);

    for n in nodes {
        n.stop().await;
    }
}
