//! How this member reaches its peers: TCP to the host and port of a peer URL, with TLS over it
//! for `https://` URLs (`--peer-cert-file` and its twins), for the raft message streams and for
//! gRPC (snapshots, requests forwarded to the leader, joining). One place, so every outbound
//! peer connection checks the peer's certificate the same way.

use crate::tls::ClientTls;
use rustls::pki_types::ServerName;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// Connecting to a peer (TCP and TLS handshake) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A stream whose sent bytes stay unacknowledged this long is broken (TCP_USER_TIMEOUT): a
/// black-holed link is found and reconnected.
const UNACKED_TIMEOUT: Duration = Duration::from_secs(5);
/// gRPC keepalive on peer channels.
const KEEPALIVE: Duration = Duration::from_secs(5);

#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<ClientTls>>,
}

/// A peer URL's host (brackets of an IPv6 address removed), port and whether it is https.
fn target(url: &str) -> io::Result<(String, u16, bool)> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{url}: {e}")))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    Ok((host.to_string(), port, https))
}

impl Dialer {
    pub fn new(tls: Option<Arc<ClientTls>>) -> Self {
        Dialer { tls }
    }

    async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        s.set_nodelay(true)?;
        #[cfg(target_os = "linux")]
        if let Err(e) = socket2::SockRef::from(&s).set_tcp_user_timeout(Some(UNACKED_TIMEOUT)) {
            tracing::warn!(error = %e, "cannot set TCP_USER_TIMEOUT on a peer connection");
        }
        Ok(s)
    }

    async fn handshake(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tls = self.tls.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "an https:// peer URL needs --peer-cert-file and --peer-key-file",
            )
        })?;
        let connector = tls.connector().map_err(io::Error::other)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
        tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }

    /// Opens a raft message stream to a peer URL, its `preamble` sent: the socket, and the
    /// TLS session over it for an https URL (the transport writes through it without waiting).
    pub async fn raft_stream(
        &self,
        url: &str,
        preamble: &[u8],
    ) -> io::Result<(TcpStream, Option<rustls::ClientConnection>)> {
        let (host, port, https) = target(url)?;
        let mut tcp = Self::tcp(&host, port).await?;
        if !https {
            tcp.write_all(preamble).await?;
            return Ok((tcp, None));
        }
        let mut tls = self.handshake(&host, tcp).await?;
        tls.write_all(preamble).await?;
        tls.flush().await?;
        let (tcp, mut session) = tls.into_inner();
        // The transport bounds what it hands the session itself.
        session.set_buffer_limit(None);
        Ok((tcp, Some(session)))
    }

    /// A gRPC channel to a peer URL that connects when first used (and again after a failure).
    pub fn channel(&self, url: &str) -> Result<Channel, String> {
        let (host, port, https) = target(url).map_err(|e| e.to_string())?;
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("{url}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE);
        if !https {
            return Ok(endpoint.connect_lazy());
        }
        let dialer = self.clone();
        let connect = tower::service_fn(move |_: http::Uri| {
            let (dialer, host) = (dialer.clone(), host.clone());
            async move {
                let tcp = Self::tcp(&host, port).await?;
                let tls = dialer.handshake(&host, tcp).await?;
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connect))
    }
}
