//! The HTTP/1.1 side of the client port: etcd's JSON gateway (`/v3/...`, grpc-gateway v1 as in
//! etcd 3.5), the plain endpoints (`/version`, `/health`, `/livez`, `/readyz`, `/metrics`), and
//! pgraft's admin API and dashboard (`/admin/v1`, `/`, see [`crate::api::admin`]).
//!
//! The gateway is the gRPC face transcoded, as in etcd (where the gateway is a gRPC client of the
//! same member): each unary route decodes its JSON body into the request message and calls the
//! gRPC service's own method, so both faces run the same code into [`EtcdServer`]; the streams
//! reuse the gRPC face's watch stream and keepalive step.

mod body;
mod endpoints;
mod gateway;

use crate::service::EtcdServer;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use tonic::{Code, Status};

/// The gateway routes and the plain endpoints (no fallback: see [`fallback`]).
/// `stopping` turns true when the member stops: open streams then end.
pub fn router(
    server: Arc<EtcdServer>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    gateway::router(server.clone(), stopping)
        .merge(endpoints::router(server.clone()))
        .merge(crate::api::admin::router(server))
        .layer(axum::middleware::from_fn(cors))
}

/// The plain endpoints alone (`/metrics`, `/health`, `/livez`, `/readyz`, `/version`), for
/// `--listen-metrics-urls`.
pub fn metrics_router(server: Arc<EtcdServer>) -> axum::Router {
    endpoints::router(server).fallback(fallback)
}

/// Answers every request no route took: gRPC calls to an unknown service get gRPC's
/// `Unimplemented`; HTTP requests get the 404 texts of etcd's muxes.
pub async fn fallback(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else if req.uri().path().starts_with("/v3/") || req.uri().path().starts_with("/v3beta/") {
        // grpc-gateway's mux.
        text(StatusCode::NOT_FOUND, "Not Found")
    } else {
        // Go's http.ServeMux.
        text(StatusCode::NOT_FOUND, "404 page not found")
    };
    add_cors(resp.headers_mut());
    resp
}

/// etcd's CORS handling with the default `--cors=*`: the headers on every HTTP answer, and
/// `OPTIONS` answered 200 before routing.
async fn cors(req: Request, next: Next) -> Response {
    let mut resp = if req.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(req).await
    };
    add_cors(resp.headers_mut());
    resp
}

fn add_cors(h: &mut HeaderMap) {
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: StatusCode, msg: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{msg}\n"),
    )
        .into_response()
}

/// Go's `http.Error(w, "Method Not Allowed", 405)`.
async fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
}

/// grpc-gateway v1.16's `HTTPStatusFromCode` (etcd 3.5).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A JSON answer.
fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A unary error as the gateway writes it: `{"error":msg,"message":msg,"code":N}`.
fn error_response(s: &Status) -> Response {
    // Written by hand to keep etcd's key order.
    let msg = serde_json::Value::from(s.message());
    let body = format!(
        "{{\"error\":{msg},\"message\":{msg},\"code\":{}}}",
        s.code() as i32
    );
    json(http_status(s.code()), body.into_bytes())
}

/// Decodes a unary request body: an empty body is the empty message, the first JSON value is
/// the message and anything after it is ignored (Go's `json.Decoder`), unknown fields are
/// ignored. The error is the decoder's message.
fn decode_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match values.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(decode_error(&e)),
        None => Ok(T::default()),
    }
}

/// The decoder's complaint; a truncated body reads as Go's `unexpected EOF`, as etcd says.
fn decode_error(e: &serde_json::Error) -> String {
    if e.is_eof() {
        "unexpected EOF".to_string()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_proto::etcdserverpb::RangeRequest;

    #[test]
    fn bodies_decode_like_the_go_gateway() {
        let r: RangeRequest = decode_body(b"").unwrap();
        assert_eq!(r, RangeRequest::default());
        let r: RangeRequest = decode_body(b" \n").unwrap();
        assert_eq!(r, RangeRequest::default());
        let r: RangeRequest = decode_body(br#"{"key":"Zm9v","bogus":1} trailing"#).unwrap();
        assert_eq!(r.key, b"foo");
        let r: RangeRequest = decode_body(br#"{"rangeEnd":"AA==","limit":"3"}"#).unwrap();
        assert_eq!((r.range_end.as_slice(), r.limit), (&b"\0"[..], 3));
        assert_eq!(
            decode_body::<RangeRequest>(br#"{"key":"#).unwrap_err(),
            "unexpected EOF"
        );
        assert!(decode_body::<RangeRequest>(br#"{"key":5}"#).is_err());
    }

    #[test]
    fn statuses_follow_grpc_gateway_1_16() {
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
        assert_eq!(
            http_status(Code::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(http_status(Code::Cancelled), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn error_body_shape() {
        let resp = error_response(&Status::new(Code::NotFound, "a \"quoted\" msg"));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let body =
            futures::executor::block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"error":"a \"quoted\" msg","message":"a \"quoted\" msg","code":5}"#
        );
    }
}
