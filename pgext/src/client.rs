//! How a backend reaches the cluster: the etcd v3 gRPC client API (plus pgraft's Admin
//! service) over loopback to this server's own member (member mode) or to the configured
//! endpoints (client mode). A backend never opens the member's database.
//!
//! Each backend keeps one current-thread tokio runtime and one connection. Requests run on
//! the backend's own thread, in slices, so that a statement cancel or timeout interrupts
//! them; `pgraft.request_timeout` bounds each call.

use crate::settings::{self, Mode};
use etcd_proto::etcdserverpb::auth_client::AuthClient;
use etcd_proto::etcdserverpb::AuthenticateRequest;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Why a request failed, as the SQL caller will see it.
#[derive(Debug)]
pub enum Failure {
    /// The cluster answered with an error (etcd's message, e.g. `etcdserver: no leader`).
    Status(Status),
    /// No endpoint could be reached.
    Unreachable(String),
    /// No answer within `pgraft.request_timeout`.
    Timeout(u64),
    /// The settings do not allow the call.
    Config(String),
    /// The answer cannot be represented (e.g. a value that is not UTF-8 text).
    Data(String),
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    fn code(&self) -> PgSqlErrorCode {
        match self {
            Failure::Status(s) => match s.code() {
                Code::NotFound => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                Code::InvalidArgument | Code::OutOfRange => {
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
                }
                Code::AlreadyExists => PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                Code::FailedPrecondition => {
                    PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
                }
                Code::PermissionDenied | Code::Unauthenticated => {
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
                }
                Code::Unavailable | Code::DeadlineExceeded => {
                    PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE
                }
                _ => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            },
            Failure::Unreachable(_) | Failure::Timeout(_) => {
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE
            }
            Failure::Config(_) => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            Failure::Data(_) => PgSqlErrorCode::ERRCODE_UNTRANSLATABLE_CHARACTER,
        }
    }

    pub fn message(&self) -> String {
        match self {
            // pgraft's own server errors already say "pgraft: ".
            Failure::Status(s) => {
                let m = s.message();
                format!("pgraft: {}", m.strip_prefix("pgraft: ").unwrap_or(m))
            }
            Failure::Unreachable(m) | Failure::Config(m) | Failure::Data(m) => {
                format!("pgraft: {m}")
            }
            Failure::Timeout(ms) => {
                format!("pgraft: request timed out after {ms} ms (pgraft.request_timeout)")
            }
        }
    }

    /// Raises this failure as a PostgreSQL ERROR.
    pub fn raise(self) -> ! {
        ErrorReport::new(self.code(), self.message(), "pgraft").report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// Unwraps a result, raising an ERROR on failure.
pub fn or_raise<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|f| f.raise())
}

struct Conn {
    /// The endpoints this connection was made for (settings may differ per session).
    endpoints: Vec<String>,
    channel: Channel,
    /// The token of `pgraft.username` on this connection's cluster, once authenticated.
    token: Option<Token>,
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("pgraft: cannot build the client runtime");
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
}

/// A channel that sends the caller's etcd token (if any) with every request.
pub type AuthChannel = InterceptedService<Channel, Token>;

/// An etcd auth token, as request metadata (`token`, as etcd's Go client sends it); empty
/// when the settings name no user.
#[derive(Clone, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Interceptor for Token {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// What a connection needs from the settings, read on a PostgreSQL thread (never from a
/// runtime thread: settings are PostgreSQL memory).
#[derive(Clone, Debug)]
pub struct Access {
    pub tls: settings::Tls,
    pub credentials: Option<settings::Credentials>,
}

impl Access {
    pub fn from_settings() -> Result<Access> {
        Ok(Access {
            tls: settings::tls().map_err(Failure::Config)?,
            credentials: settings::credentials().map_err(Failure::Config)?,
        })
    }
}

/// Logs the configured user in on `ch` (etcd's Authenticate); an empty token without a user.
pub(crate) async fn authenticate(ch: &Channel, access: &Access) -> Result<Token> {
    let Some(creds) = &access.credentials else {
        return Ok(Token(None));
    };
    let (name, password) = creds.read().map_err(Failure::Config)?;
    let r = AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest { name, password })
        .await
        .map_err(Failure::Status)?
        .into_inner();
    let v = MetadataValue::try_from(r.token.as_str())
        .map_err(|_| Failure::Data("the cluster issued a token that is not text".into()))?;
    Ok(Token(Some(v)))
}

/// Whether a failure means the token must be made again (it expired, or auth changed), after
/// which the request, refused before it took effect, may be sent again.
fn token_refused(f: &Failure) -> bool {
    matches!(f, Failure::Status(s) if s.message() == "etcdserver: invalid auth token"
        || s.message() == "etcdserver: revision of auth store is old")
}

/// The endpoints the SQL functions talk to in the current settings.
pub fn endpoints() -> Result<Vec<String>> {
    match settings::mode().map_err(Failure::Config)? {
        Mode::Client(c) => Ok(c.endpoints),
        Mode::Member(_) => {
            if !crate::preloaded() {
                return Err(Failure::Config(
                    "member mode needs shared_preload_libraries = 'pgraft' (and a restart)".into(),
                ));
            }
            if !crate::shmem::serving() {
                return Err(Failure::Unreachable(
                    "this server's pgraft member is not serving yet (starting, or failed: see the server log)".into(),
                ));
            }
            Ok(vec![format!("unix://{}", settings::MEMBER_SOCKET)])
        }
        Mode::Unconfigured => Err(Failure::Config(
            "not configured: set pgraft.initial_cluster (member mode) or pgraft.endpoints (client mode) in postgresql.conf".into(),
        )),
    }
}

fn request_timeout() -> Duration {
    Duration::from_millis(settings::REQUEST_TIMEOUT.get().max(1) as u64)
}

/// Runs `fut` to completion on this backend's runtime, checking for query cancel between
/// slices, within `pgraft.request_timeout`.
fn block_on<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    let timeout = request_timeout();
    RUNTIME.with(|rt| {
        // Timers belong to a runtime: make them inside this one.
        let _entered = rt.enter();
        let mut fut = std::pin::pin!(tokio::time::timeout(timeout, fut));
        loop {
            let slice = rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(50), &mut fut).await
            });
            match slice {
                Ok(Ok(r)) => return r,
                Ok(Err(_)) => return Err(Failure::Timeout(timeout.as_millis() as u64)),
                Err(_) => {
                    check_for_interrupts!();
                }
            }
        }
    })
}

/// A channel to the first of `endpoints` that accepts a connection: `http://`, `https://`
/// (TLS with `pgraft.ca_file`, `pgraft.cert_file` and `pgraft.key_file`) or this server's own
/// member's `unix://` socket.
pub(crate) async fn connect(endpoints: &[String], access: &Access) -> Result<Channel> {
    let mut last = String::new();
    for url in endpoints {
        match connect_one(url, &access.tls).await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{url}: {}", e.message()),
        }
    }
    Err(Failure::Unreachable(format!(
        "cannot reach the cluster at {} ({last})",
        endpoints.join(",")
    )))
}

async fn connect_one(url: &str, tls: &settings::Tls) -> Result<Channel> {
    let unreachable = |e: tonic::transport::Error| {
        use std::error::Error as _;
        let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
        Failure::Unreachable(format!("{e}{cause}"))
    };
    if let Some(path) = url.strip_prefix("unix://") {
        let path = path.to_string();
        return Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                }
            }))
            .await
            .map_err(unreachable);
    }
    let ep = Endpoint::from_shared(url.to_string())
        .map_err(|e| Failure::Config(format!("bad endpoint {url}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if !url.starts_with("https://") {
        return ep.connect().await.map_err(unreachable);
    }
    let parsed = url::Url::parse(url).map_err(|e| Failure::Config(format!("{url}: {e}")))?;
    let host = parsed
        .host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let identity = tls.identity.as_ref().map(|(c, k)| {
        (
            std::path::Path::new(c.as_str()),
            std::path::Path::new(k.as_str()),
        )
    });
    let cfg = pgraft_server::tls::client_config(
        tls.ca_file.as_deref().map(std::path::Path::new),
        identity,
        rustls::DEFAULT_VERSIONS,
        &[b"h2"],
    )
    .map_err(Failure::Config)?;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Failure::Config(format!("{url}: {e}")))?;
    ep.connect_with_connector(tower::service_fn(move |_: http::Uri| {
        let (connector, name, host) = (connector.clone(), name.clone(), host.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    }))
    .await
    .map_err(unreachable)
}

/// A channel to the cluster with the caller's token, made (or remade after a failure) as
/// needed.
fn channel() -> Result<AuthChannel> {
    let endpoints = endpoints()?;
    let cached = CONN.with_borrow(|c| {
        c.as_ref()
            .filter(|c| c.endpoints == endpoints)
            .map(|c| (c.channel.clone(), c.token.clone()))
    });
    let access = Access::from_settings()?;
    let (ch, token) = match cached {
        Some(c) => c,
        None => {
            let ch = block_on(connect(&endpoints, &access))?;
            CONN.with_borrow_mut(|c| {
                *c = Some(Conn {
                    endpoints,
                    channel: ch.clone(),
                    token: None,
                })
            });
            (ch, None)
        }
    };
    let token = match token {
        Some(t) => t,
        None => {
            let t = block_on(authenticate(&ch, &access))?;
            CONN.with_borrow_mut(|c| {
                if let Some(c) = c.as_mut() {
                    c.token = Some(t.clone());
                }
            });
            t
        }
    };
    Ok(InterceptedService::new(ch, token))
}

/// A gRPC answer as this module's result.
async fn answer<T>(
    fut: impl Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    fut.await
        .map(tonic::Response::into_inner)
        .map_err(Failure::Status)
}

/// Runs one request built by `f` on a channel to `url` (another member, e.g. the leader); the
/// connection is not kept.
pub fn call_at<T, F, Fut>(url: &str, f: F) -> Result<T>
where
    F: FnOnce(AuthChannel) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    let access = Access::from_settings()?;
    block_on(async {
        let ch = connect(&[url.to_string()], &access).await?;
        let token = authenticate(&ch, &access).await?;
        answer(f(InterceptedService::new(ch, token))).await
    })
}

/// Runs one request built by `f` on the cluster channel. A request refused for its token (it
/// expired, or auth changed) is sent once more with a new one. A connection that broke is
/// forgotten, so the next call connects again (possibly to another endpoint); the request
/// itself is not repeated, since it may have taken effect.
pub fn call<T, F, Fut>(f: F) -> Result<T>
where
    F: Fn(AuthChannel) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    let mut r = block_on(answer(f(channel()?)));
    if r.as_ref().err().is_some_and(token_refused) {
        CONN.with_borrow_mut(|c| {
            if let Some(c) = c.as_mut() {
                c.token = None;
            }
        });
        r = block_on(answer(f(channel()?)));
    }
    if let Err(Failure::Status(s)) = &r {
        if s.code() == Code::Unavailable || s.code() == Code::Unknown {
            CONN.with_borrow_mut(|c| *c = None);
        }
    }
    if matches!(r, Err(Failure::Timeout(_)) | Err(Failure::Unreachable(_))) {
        CONN.with_borrow_mut(|c| *c = None);
    }
    r
}
