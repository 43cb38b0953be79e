//! One accepted connection of the client or peer port: plain TCP, TLS over it, or a Unix
//! socket (`unix://` client URLs), and who is
//! on the other end (its address, and the common name of the certificate it proved when the
//! port asks for one). TLS handshakes run in tasks of their own, under a deadline and a cap on
//! how many run at once, so a client that stalls its handshake holds up no other connection.

use crate::tls::ServerTls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_stream::wrappers::ReceiverStream;

/// A TLS handshake not done within this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes running at once per listener; further connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;
/// Connections accepted (handshake done) and not yet taken by the server.
const ACCEPTED_QUEUE: usize = 64;

/// Who is on the other end of a connection; in every request's extensions (tonic puts a
/// connection's info there), for the auth check to read a client certificate's user.
#[derive(Clone, Debug, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The common name of the verified client certificate, when the port asked for one.
    pub common_name: Option<Arc<str>>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

/// A bound listener of the client or peer port.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self) -> io::Result<Conn> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Conn::plain(s)),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Conn {
                io: Io::Unix(s),
                unread: None,
                info: ConnInfo::default(),
            }),
        }
    }
}

pub struct Conn {
    io: Io,
    /// A byte read ahead (to tell the peer port's protocols apart), given back first.
    unread: Option<u8>,
    info: ConnInfo,
}

impl Conn {
    pub fn plain(tcp: TcpStream) -> Self {
        let _ = tcp.set_nodelay(true);
        let info = ConnInfo {
            remote: tcp.peer_addr().ok(),
            common_name: None,
        };
        Conn {
            io: Io::Plain(tcp),
            unread: None,
            info,
        }
    }

    /// Runs the server side of a TLS handshake on an accepted connection, within
    /// [`HANDSHAKE_TIMEOUT`]. A client certificate, when the port asks for one, must chain to
    /// the trusted CA (rustls checks it) and carry the allowed common name, if one is set.
    pub async fn accept_tls(tcp: TcpStream, tls: &ServerTls) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let remote = tcp.peer_addr().ok();
        let acceptor = tls.acceptor().map_err(io::Error::other)?;
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let common_name = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::tls::common_name(leaf));
        if !tls.admits(common_name.as_deref()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("client certificate CN {common_name:?} is not allowed"),
            ));
        }
        Ok(Conn {
            io: Io::Tls(Box::new(stream)),
            unread: None,
            info: ConnInfo {
                remote,
                common_name: common_name.map(Arc::from),
            },
        })
    }

    pub fn info(&self) -> &ConnInfo {
        &self.info
    }

    /// The first byte the other end sent, still to be read, within `timeout`.
    pub async fn peek_first(&mut self, timeout: Duration) -> io::Result<u8> {
        if let Some(b) = self.unread {
            return Ok(b);
        }
        let mut first = [0u8; 1];
        let read = async {
            match &mut self.io {
                Io::Plain(tcp) => tcp.peek(&mut first).await,
                Io::Tls(tls) => tls.read(&mut first).await,
                Io::Unix(unix) => unix.read(&mut first).await,
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(1)) => {}
            Ok(Ok(_)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        if !matches!(self.io, Io::Plain(_)) {
            self.unread = Some(first[0]);
        }
        Ok(first[0])
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.unread.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts `listener`'s connections, with a TLS handshake each when `tls` is given, as a
/// stream for the server. Accepting stops once the stream is dropped. A failed accept (out of
/// descriptors, mostly) waits a moment instead of spinning; a failed handshake is logged at
/// debug level and dropped, as Go's server does.
pub fn incoming(
    listener: impl Into<Listener>,
    tls: Option<Arc<ServerTls>>,
) -> ReceiverStream<io::Result<Conn>> {
    let listener = listener.into();
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = match &tls {
                Some(_) => tokio::select! {
                    p = handshakes.clone().acquire_owned() => p.ok(),
                    _ = tx.closed() => return,
                },
                None => None,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let conn = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match (&tls, conn.io) {
                (Some(tls), Io::Plain(tcp)) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        match Conn::accept_tls(tcp, &tls).await {
                            Ok(conn) => {
                                let _ = tx.send(Ok(conn)).await;
                            }
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        }
                    });
                }
                (_, io) => {
                    let conn = Conn { io, ..conn };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}
