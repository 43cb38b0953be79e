//! etcd's grpc-gateway routes: `POST /v3/<route>` (and `/v3beta/<route>`) with the request
//! message as the JSON body. Unary routes call the gRPC service methods; `/v3/watch` and
//! `/v3/lease/keepalive` read a stream of JSON requests from the body and answer a chunked stream
//! of `{"result":...}` lines, flushed one message per chunk.

use super::body::{self, Splitter, TooLarge};
use super::{decode_body, decode_error, error_response, http_status, method_not_allowed};
use crate::api::grpc::{self, auth, cluster, election, kv, lease, lock, maintenance};
use crate::metrics::{GrpcCall, GrpcMethod};
use crate::service::EtcdServer;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use etcd_proto::etcdserverpb::{
    auth_server::Auth, cluster_server::Cluster, kv_server::Kv, lease_server::Lease,
    maintenance_server::Maintenance, LeaseKeepAliveRequest, WatchRequest,
};
use etcd_proto::v3electionpb::election_server::Election;
use etcd_proto::v3lockpb::lock_server::Lock;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::{Code, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// Registers `route` under `/v3` and under the `/v3beta` prefix etcd rewrites to it.
fn add(r: axum::Router, route: &str, h: MethodRouter) -> axum::Router {
    let h = h.fallback(method_not_allowed);
    r.route(&format!("/v3{route}"), h.clone())
        .route(&format!("/v3beta{route}"), h)
}

/// One unary route per RPC: `unary!(router, max, service, Trait::method, "pkg.Service",
/// "Method", "/route", ...)`.
macro_rules! unary {
    ($r:ident, $max:expr, $svc:expr, $tr:ident :: $m:ident, $gs:literal, $gm:literal, $($path:literal),+) => {{
        let svc = $svc.clone();
        let max = $max;
        let h = post(move |headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
            let svc = svc.clone();
            async move {
                let body = match body {
                    Ok(b) => b,
                    Err(rejected) => return refuse_body(rejected),
                };
                unary(GrpcMethod::new($gs, $gm), max, &headers, &body, |req| async move {
                    $tr::$m(&*svc, req).await
                })
                .await
            }
        });
        $( $r = add($r, $path, h.clone()); )+
    }};
}

pub fn router(server: Arc<EtcdServer>, stopping: watch::Receiver<bool>) -> axum::Router {
    let max = grpc::max_recv(&server);
    let maint = Arc::new(maintenance::MaintenanceService(server.clone()));
    let mut r = unary_routes(&server, &stopping, &maint, max);

    {
        let election = Arc::new(election::ElectionService(server.clone(), stopping.clone()));
        r = add(
            r,
            "/election/observe",
            post(
                move |headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
                    let election = election.clone();
                    async move {
                        match body {
                            Ok(body) => observe(&election, &headers, &body).await,
                            Err(rejected) => refuse_body(rejected),
                        }
                    }
                },
            ),
        );
    }

    {
        let maint = maint.clone();
        r = add(
            r,
            "/maintenance/snapshot",
            post(
                move |headers: HeaderMap, body: Result<Bytes, BytesRejection>| {
                    let maint = maint.clone();
                    async move {
                        match body {
                            Ok(body) => snapshot(&maint, &headers, &body).await,
                            Err(rejected) => refuse_body(rejected),
                        }
                    }
                },
            ),
        );
    }
    {
        let (server, stopping) = (server.clone(), stopping.clone());
        r = add(
            r,
            "/watch",
            post(move |headers: HeaderMap, body: Body| {
                watch(server.clone(), stopping.clone(), headers, body, max)
            }),
        );
    }
    {
        let server = server.clone();
        r = add(
            r,
            "/lease/keepalive",
            post(move |headers: HeaderMap, body: Body| {
                keep_alive(server.clone(), stopping.clone(), headers, body, max)
            }),
        );
    }
    // A unary body is buffered up to the JSON of a max-size message; the gRPC size check
    // follows. The streams' bodies are bounded per message (see `json_objects`).
    r.layer(DefaultBodyLimit::max(body::max_json_bytes(max)))
}

/// The answer to a unary body that was not taken: 413 and the gateway's JSON error body when it
/// is over the limit, a 400 when it could not be read.
fn refuse_body(rejected: BytesRejection) -> Response {
    if rejected.status() == StatusCode::PAYLOAD_TOO_LARGE {
        body::too_large()
    } else {
        error_response(&Status::invalid_argument(rejected.body_text()))
    }
}

/// The unary RPCs of the etcd services (and of the lock and election services), each calling the gRPC service's own method.
#[rustfmt::skip]
fn unary_routes(
    server: &Arc<EtcdServer>,
    stopping: &watch::Receiver<bool>,
    maint: &Arc<maintenance::MaintenanceService>,
    max: usize,
) -> axum::Router {
    let kv = Arc::new(kv::KvService(server.clone()));
    let lease = Arc::new(lease::LeaseService(server.clone(), stopping.clone()));
    let cluster = Arc::new(cluster::ClusterService(server.clone()));
    let auth = Arc::new(auth::AuthService(server.clone()));
    let lock = Arc::new(lock::LockService(server.clone()));
    let election = Arc::new(election::ElectionService(server.clone(), stopping.clone()));
    let mut r = axum::Router::new();
    unary!(r, max, kv, Kv::range, "etcdserverpb.KV", "Range", "/kv/range");
    unary!(r, max, kv, Kv::put, "etcdserverpb.KV", "Put", "/kv/put");
    unary!(r, max, kv, Kv::delete_range, "etcdserverpb.KV", "DeleteRange", "/kv/deleterange");
    unary!(r, max, kv, Kv::txn, "etcdserverpb.KV", "Txn", "/kv/txn");
    unary!(r, max, kv, Kv::compact, "etcdserverpb.KV", "Compact", "/kv/compaction");

    unary!(r, max, lease, Lease::lease_grant, "etcdserverpb.Lease", "LeaseGrant", "/lease/grant");
    unary!(r, max, lease, Lease::lease_revoke, "etcdserverpb.Lease", "LeaseRevoke",
        "/lease/revoke", "/kv/lease/revoke");
    unary!(r, max, lease, Lease::lease_time_to_live, "etcdserverpb.Lease", "LeaseTimeToLive",
        "/lease/timetolive", "/kv/lease/timetolive");
    unary!(r, max, lease, Lease::lease_leases, "etcdserverpb.Lease", "LeaseLeases",
        "/lease/leases", "/kv/lease/leases");

    unary!(r, max, cluster, Cluster::member_add, "etcdserverpb.Cluster", "MemberAdd",
        "/cluster/member/add");
    unary!(r, max, cluster, Cluster::member_remove, "etcdserverpb.Cluster", "MemberRemove",
        "/cluster/member/remove");
    unary!(r, max, cluster, Cluster::member_update, "etcdserverpb.Cluster", "MemberUpdate",
        "/cluster/member/update");
    unary!(r, max, cluster, Cluster::member_list, "etcdserverpb.Cluster", "MemberList",
        "/cluster/member/list");
    unary!(r, max, cluster, Cluster::member_promote, "etcdserverpb.Cluster", "MemberPromote",
        "/cluster/member/promote");

    unary!(r, max, maint, Maintenance::alarm, "etcdserverpb.Maintenance", "Alarm",
        "/maintenance/alarm");
    unary!(r, max, maint, Maintenance::status, "etcdserverpb.Maintenance", "Status",
        "/maintenance/status");
    unary!(r, max, maint, Maintenance::defragment, "etcdserverpb.Maintenance", "Defragment",
        "/maintenance/defragment");
    unary!(r, max, maint, Maintenance::hash, "etcdserverpb.Maintenance", "Hash",
        "/maintenance/hash");
    unary!(r, max, maint, Maintenance::hash_kv, "etcdserverpb.Maintenance", "HashKV",
        "/maintenance/hashkv");
    unary!(r, max, maint, Maintenance::move_leader, "etcdserverpb.Maintenance", "MoveLeader",
        "/maintenance/transfer-leadership");
    unary!(r, max, maint, Maintenance::downgrade, "etcdserverpb.Maintenance", "Downgrade",
        "/maintenance/downgrade");

    unary!(r, max, auth, Auth::auth_enable, "etcdserverpb.Auth", "AuthEnable", "/auth/enable");
    unary!(r, max, auth, Auth::auth_disable, "etcdserverpb.Auth", "AuthDisable", "/auth/disable");
    unary!(r, max, auth, Auth::auth_status, "etcdserverpb.Auth", "AuthStatus", "/auth/status");
    unary!(r, max, auth, Auth::authenticate, "etcdserverpb.Auth", "Authenticate",
        "/auth/authenticate");
    unary!(r, max, auth, Auth::user_add, "etcdserverpb.Auth", "UserAdd", "/auth/user/add");
    unary!(r, max, auth, Auth::user_get, "etcdserverpb.Auth", "UserGet", "/auth/user/get");
    unary!(r, max, auth, Auth::user_list, "etcdserverpb.Auth", "UserList", "/auth/user/list");
    unary!(r, max, auth, Auth::user_delete, "etcdserverpb.Auth", "UserDelete",
        "/auth/user/delete");
    unary!(r, max, auth, Auth::user_change_password, "etcdserverpb.Auth", "UserChangePassword",
        "/auth/user/changepw");
    unary!(r, max, auth, Auth::user_grant_role, "etcdserverpb.Auth", "UserGrantRole",
        "/auth/user/grant");
    unary!(r, max, auth, Auth::user_revoke_role, "etcdserverpb.Auth", "UserRevokeRole",
        "/auth/user/revoke");
    unary!(r, max, auth, Auth::role_add, "etcdserverpb.Auth", "RoleAdd", "/auth/role/add");
    unary!(r, max, auth, Auth::role_get, "etcdserverpb.Auth", "RoleGet", "/auth/role/get");
    unary!(r, max, auth, Auth::role_list, "etcdserverpb.Auth", "RoleList", "/auth/role/list");
    unary!(r, max, auth, Auth::role_delete, "etcdserverpb.Auth", "RoleDelete",
        "/auth/role/delete");
    unary!(r, max, auth, Auth::role_grant_permission, "etcdserverpb.Auth", "RoleGrantPermission",
        "/auth/role/grant");
    unary!(r, max, auth, Auth::role_revoke_permission, "etcdserverpb.Auth",
        "RoleRevokePermission", "/auth/role/revoke");

    unary!(r, max, lock, Lock::lock, "v3lockpb.Lock", "Lock", "/lock/lock");
    unary!(r, max, lock, Lock::unlock, "v3lockpb.Lock", "Unlock", "/lock/unlock");
    unary!(r, max, election, Election::campaign, "v3electionpb.Election", "Campaign",
        "/election/campaign");
    unary!(r, max, election, Election::proclaim, "v3electionpb.Election", "Proclaim",
        "/election/proclaim");
    unary!(r, max, election, Election::leader, "v3electionpb.Election", "Leader",
        "/election/leader");
    unary!(r, max, election, Election::resign, "v3electionpb.Election", "Resign",
        "/election/resign");
    r
}

/// The gRPC request a gateway call makes: grpc-gateway forwards `Authorization` and
/// `Grpc-Metadata-*` headers as metadata.
fn grpc_request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for (name, value) in headers {
        let key = if name == header::AUTHORIZATION {
            Some("authorization")
        } else {
            name.as_str().strip_prefix("grpc-metadata-")
        };
        let Some(key) = key else { continue };
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) {
            req.metadata_mut().append(k, v);
        }
    }
    req
}

/// A successful gateway answer (etcd's carries the gRPC content type as metadata).
fn ok_response(status: StatusCode, body: Body) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

async fn unary<Req, Resp, F, Fut>(
    m: GrpcMethod,
    max_recv: usize,
    headers: &HeaderMap,
    body: &[u8],
    call: F,
) -> Response
where
    Req: DeserializeOwned + Default + prost::Message,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let req: Req = match decode_body(body) {
        Ok(r) => r,
        Err(msg) => return error_response(&Status::invalid_argument(msg)),
    };
    let mut grpc_call = GrpcCall::start(m);
    let len = req.encoded_len();
    let result = if len > max_recv {
        // What the gRPC server says to the gateway's call in etcd.
        Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {max_recv})"
        )))
    } else {
        call(grpc_request(headers, req)).await
    };
    let result = result
        .and_then(|r| serde_json::to_vec(r.get_ref()).map_err(|e| Status::internal(e.to_string())));
    match result {
        Ok(body) => {
            grpc_call.done(Code::Ok);
            ok_response(StatusCode::OK, Body::from(body))
        }
        Err(s) => {
            grpc_call.done(s.code());
            error_response(&s)
        }
    }
}

/// `{"result":<msg>}\n`: one stream message, sent as one chunk.
fn result_line<T: Serialize>(msg: &T) -> Bytes {
    let mut out = b"{\"result\":".to_vec();
    if serde_json::to_writer(&mut out, msg).is_err() {
        // Generated messages always serialize; keep the stream well-formed regardless.
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"}\n");
    out.into()
}

/// grpc-gateway v1's stream error object:
/// `{"error":{"grpc_code":N,"http_code":H,"message":"...","http_status":"..."}}`.
fn error_line(s: &Status) -> Bytes {
    let http = http_status(s.code());
    let msg = serde_json::Value::from(s.message());
    let text = serde_json::Value::from(http.canonical_reason().unwrap_or(""));
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{},\"message\":{msg},\"http_status\":{text}}}}}",
        s.code() as i32,
        http.as_u16()
    )
    .into()
}

/// Writes a response stream as grpc-gateway's `ForwardResponseStream` does: the status and
/// headers go out with the first message (an error before any message sets the HTTP status),
/// then one chunk per message; an error ends the stream with an error object. The call is
/// counted as handled when the stream ends, or as `Canceled` if the client goes away first.
async fn forward<T: Serialize + Send + 'static>(
    mut msgs: BoxStream<Result<T, Status>>,
    mut call: Option<GrpcCall>,
) -> Response {
    let first = match msgs.next().await {
        Some(Ok(m)) => result_line(&m),
        Some(Err(s)) => {
            if let Some(c) = call.as_mut() {
                c.done(s.code());
            }
            let line = error_line(&s);
            let body =
                Body::from_stream(futures::stream::once(
                    async move { Ok::<_, Infallible>(line) },
                ));
            return ok_response(http_status(s.code()), body);
        }
        None => {
            if let Some(c) = call.as_mut() {
                c.done(Code::Ok);
            }
            return ok_response(
                StatusCode::OK,
                Body::from_stream(futures::stream::empty::<Result<Bytes, Infallible>>()),
            );
        }
    };
    let rest = futures::stream::unfold(
        (msgs, call, false),
        |(mut msgs, mut call, ended)| async move {
            if ended {
                return None;
            }
            match msgs.next().await {
                Some(Ok(m)) => Some((result_line(&m), (msgs, call, false))),
                Some(Err(s)) => {
                    if let Some(c) = call.as_mut() {
                        c.done(s.code());
                    }
                    Some((error_line(&s), (msgs, call, true)))
                }
                None => {
                    if let Some(c) = call.as_mut() {
                        c.done(Code::Ok);
                    }
                    None
                }
            }
        },
    );
    let body = futures::stream::once(async move { first })
        .chain(rest)
        .map(Ok::<_, Infallible>);
    ok_response(StatusCode::OK, Body::from_stream(body))
}

/// Why reading a streaming body stopped early.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    /// A value (or the whitespace before it) passed the size bound.
    TooLarge,
    /// A malformed value or a broken body, with the decoder's message.
    Bad(String),
}

/// The JSON objects of a streaming request body, decoded as they arrive (concatenated or
/// whitespace-separated, as Go's `json.Decoder` reads them), each decoded once when complete;
/// only the unfinished one is held, up to `max` bytes. The stream ends after its first error.
fn json_objects<T: DeserializeOwned + Send + 'static>(
    body: Body,
    max: usize,
) -> BoxStream<Result<T, BodyError>> {
    struct State {
        data: axum::body::BodyDataStream,
        split: Splitter,
        done: bool,
    }
    let decode = |v: Vec<u8>| serde_json::from_slice::<T>(&v).map_err(|e| decode_error(&e));
    let st = State {
        data: body.into_data_stream(),
        split: Splitter::new(max),
        done: false,
    };
    futures::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.split.next_value() {
                Ok(Some(v)) => {
                    let r = decode(v).map_err(BodyError::Bad);
                    st.done = r.is_err();
                    return Some((r, st));
                }
                Ok(None) => {}
                Err(TooLarge) => {
                    st.done = true;
                    return Some((Err(BodyError::TooLarge), st));
                }
            }
            match st.data.next().await {
                Some(Ok(chunk)) => st.split.feed(chunk),
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(BodyError::Bad(e.to_string())), st));
                }
                None => {
                    st.done = true;
                    let last = st.split.finish()?;
                    return Some((decode(last).map_err(BodyError::Bad), st));
                }
            }
        }
    })
    .boxed()
}

/// The requests of a bidirectional stream: the first one must decode (else the call fails as
/// etcd's gateway fails it: `Unknown`, HTTP 500; or 413 when it is too large); after it, a
/// malformed one just ends the input. A later one too large ends the input too, and the
/// returned future then resolves with the status that ends the response stream: the client
/// is refused rather than left waiting on a stream that no longer reads it.
async fn stream_requests<T: DeserializeOwned + Send + 'static>(
    body: Body,
    max: usize,
) -> Result<(BoxStream<T>, impl Future<Output = Status> + Send + 'static), Response> {
    let mut objects = json_objects::<T>(body, max);
    let (refuse, refused) = tokio::sync::oneshot::channel::<Status>();
    let refused = async move {
        match refused.await {
            Ok(s) => s,
            // The input ended otherwise: nothing to refuse.
            Err(_) => std::future::pending().await,
        }
    };
    let first = match objects.next().await {
        Some(Ok(first)) => first,
        Some(Err(BodyError::TooLarge)) => return Err(body::too_large()),
        Some(Err(BodyError::Bad(msg))) => return Err(error_response(&Status::unknown(msg))),
        None => return Ok((futures::stream::empty().boxed(), refused)),
    };
    let mut refuse = Some(refuse);
    let rest = objects
        .take_while(move |r| {
            if let (Err(BodyError::TooLarge), Some(tx)) = (r, refuse.take()) {
                let _ = tx.send(Status::resource_exhausted(body::TOO_LARGE));
            }
            futures::future::ready(r.is_ok())
        })
        .filter_map(|r| futures::future::ready(r.ok()));
    let requests = futures::stream::once(async move { first })
        .chain(rest)
        .boxed();
    Ok((requests, refused))
}

/// `POST /v3/watch`: the watch stays open after the body ends, until the client disconnects.
async fn watch(
    server: Arc<EtcdServer>,
    stopping: watch::Receiver<bool>,
    headers: HeaderMap,
    body: Body,
    max_recv: usize,
) -> Response {
    let call = GrpcCall::start(GrpcMethod::new("etcdserverpb.Watch", "Watch"));
    if let Err(s) = grpc::require_leader(&server, &grpc_request(&headers, ())) {
        return forward(futures::stream::iter([Err::<(), _>(s)]).boxed(), Some(call)).await;
    }
    let max = body::max_json_bytes(max_recv);
    let (requests, refused) = match stream_requests::<WatchRequest>(body, max).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let token = match grpc::token(&grpc_request(&headers, ())) {
        Ok(t) => t,
        Err(s) => return forward(futures::stream::iter([Err::<(), _>(s)]).boxed(), None).await,
    };
    let rx = grpc::watch::open(&server, token, requests);
    let responses = grpc::until_stopped(rx.map(Ok), stopping);
    forward(
        grpc::until(Box::pin(responses), refused).boxed(),
        Some(call),
    )
    .await
}

/// `POST /v3/lease/keepalive`: one answer per request object; the stream ends with the body.
async fn keep_alive(
    server: Arc<EtcdServer>,
    stopping: watch::Receiver<bool>,
    _headers: HeaderMap,
    body: Body,
    max_recv: usize,
) -> Response {
    let call = GrpcCall::start(GrpcMethod::new("etcdserverpb.Lease", "LeaseKeepAlive"));
    let max = body::max_json_bytes(max_recv);
    let (requests, refused) = match stream_requests::<LeaseKeepAliveRequest>(body, max).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let answers = requests
        .then(move |r| {
            let server = server.clone();
            async move { lease::keep_alive_once(&server, r.id).await }
        })
        .boxed();
    let answers = grpc::until_stopped(answers, stopping);
    forward(grpc::until(Box::pin(answers), refused).boxed(), Some(call)).await
}

/// `POST /v3/maintenance/snapshot`: a server stream, forwarded message by message.
async fn snapshot(
    svc: &maintenance::MaintenanceService,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let req = match decode_body(body) {
        Ok(r) => r,
        Err(msg) => return error_response(&Status::invalid_argument(msg)),
    };
    let call = GrpcCall::start(GrpcMethod::new("etcdserverpb.Maintenance", "Snapshot"));
    match Maintenance::snapshot(svc, grpc_request(headers, req)).await {
        Ok(stream) => forward(stream.into_inner(), Some(call)).await,
        Err(s) => forward(futures::stream::iter([Err::<(), _>(s)]).boxed(), Some(call)).await,
    }
}

/// `POST /v3/election/observe`: a server stream, forwarded message by message until the
/// client goes away.
async fn observe(svc: &election::ElectionService, headers: &HeaderMap, body: &[u8]) -> Response {
    let req = match decode_body(body) {
        Ok(r) => r,
        Err(msg) => return error_response(&Status::invalid_argument(msg)),
    };
    let call = GrpcCall::start(GrpcMethod::new("v3electionpb.Election", "Observe"));
    match Election::observe(svc, grpc_request(headers, req)).await {
        Ok(stream) => forward(stream.into_inner(), Some(call)).await,
        Err(s) => forward(futures::stream::iter([Err::<(), _>(s)]).boxed(), Some(call)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::LeaseKeepAliveRequest as K;

    fn body_of(chunks: &[&'static str]) -> Body {
        let chunks: Vec<Result<Bytes, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    fn ids(chunks: &[&'static str]) -> Vec<Result<i64, String>> {
        futures::executor::block_on(
            json_objects::<K>(body_of(chunks), 1 << 20)
                .map(|r| {
                    r.map(|k| k.id).map_err(|e| match e {
                        BodyError::Bad(m) => m,
                        BodyError::TooLarge => "too large".into(),
                    })
                })
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn body_objects_are_split_across_chunks() {
        assert_eq!(ids(&[r#"{"ID":"1"}{"ID":2}"#]), vec![Ok(1), Ok(2)]);
        assert_eq!(
            ids(&[r#"{"ID""#, r#":"7"} "#, "\n", r#" {"ID":8}"#]),
            vec![Ok(7), Ok(8)]
        );
        assert_eq!(ids(&["", "  "]), vec![]);
        assert_eq!(
            ids(&[r#"{"ID":"1"} {"ID":"#]),
            vec![Ok(1), Err("unexpected EOF".into())]
        );
        let r = ids(&[r#"{"ID":"1"} ]{"ID":"2"}"#]);
        assert_eq!(r.len(), 2);
        assert!(r[1].is_err());
    }

    #[test]
    fn stream_error_object() {
        let line = error_line(&Status::unavailable("etcdserver: no leader"));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        );
    }

    #[test]
    fn metadata_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("tok.1"));
        h.insert("grpc-metadata-hasleader", HeaderValue::from_static("true"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let req = grpc_request(&h, ());
        let md = req.metadata();
        assert_eq!(md.get("authorization").unwrap(), "tok.1");
        assert_eq!(md.get("hasleader").unwrap(), "true");
        assert!(md.get("content-type").is_none());
    }
}
