//! How a backend reaches the cluster: the etcd v3 gRPC client API (plus pgraft's Admin
//! service) over loopback to this server's own member (member mode) or to the configured
//! endpoints (client mode). A backend never opens the member's database.
//!
//! Each backend keeps one current-thread tokio runtime and one connection. Requests run on
//! the backend's own thread, in slices, so that a statement cancel or timeout interrupts
//! them; `pgraft.request_timeout` bounds each call.

use crate::settings::{self, Mode};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;
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
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("pgraft: cannot build the client runtime");
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
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
            match crate::shmem::client_port() {
                0 => Err(Failure::Unreachable(
                    "this server's pgraft member is not serving yet (starting, or failed: see the server log)".into(),
                )),
                port => Ok(vec![format!("http://127.0.0.1:{port}")]),
            }
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

/// A channel to the first of `endpoints` that accepts a connection.
pub(crate) async fn connect(endpoints: &[String]) -> Result<Channel> {
    let mut last = String::new();
    for url in endpoints {
        let ep = Endpoint::from_shared(url.clone())
            .map_err(|e| Failure::Config(format!("bad endpoint {url}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        match ep.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    Err(Failure::Unreachable(format!(
        "cannot reach the cluster at {} ({last})",
        endpoints.join(",")
    )))
}

/// A channel to the cluster, made (or remade after a failure) as needed.
pub fn channel() -> Result<Channel> {
    let endpoints = endpoints()?;
    let cached = CONN.with_borrow(|c| {
        c.as_ref()
            .filter(|c| c.endpoints == endpoints)
            .map(|c| c.channel.clone())
    });
    if let Some(ch) = cached {
        return Ok(ch);
    }
    let ch = block_on(connect(&endpoints))?;
    CONN.with_borrow_mut(|c| {
        *c = Some(Conn {
            endpoints,
            channel: ch.clone(),
        })
    });
    Ok(ch)
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
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    block_on(async { answer(f(connect(&[url.to_string()]).await?)).await })
}

/// Runs one request built by `f` on the cluster channel. A connection that broke is
/// forgotten, so the next call connects again (possibly to another endpoint); the request
/// itself is not repeated, since it may have taken effect.
pub fn call<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
{
    let ch = channel()?;
    let r = block_on(answer(f(ch)));
    if let Err(Failure::Status(s)) = &r {
        if s.code() == Code::Unavailable || s.code() == Code::Unknown {
            CONN.with_borrow_mut(|c| *c = None);
        }
    }
    if matches!(r, Err(Failure::Timeout(_))) {
        CONN.with_borrow_mut(|c| *c = None);
    }
    r
}
