//! The plain HTTP endpoints of etcd 3.5's client port: `/version`, `/health`, `/livez` and
//! `/readyz` (with their per-check sub-paths) and `/metrics`.

use super::text;
use crate::config::{ETCD_CLUSTER_VERSION, ETCD_VERSION};
use crate::error::Error;
use crate::metrics;
use crate::service::EtcdServer;
use axum::extract::{Query, RawQuery};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use etcd_proto::etcdserverpb::{AlarmType, RangeRequest};
use std::collections::HashMap;
use std::sync::Arc;

pub fn router(server: Arc<EtcdServer>) -> axum::Router {
    let mut r = axum::Router::new()
        .route("/version", get(version).fallback(get_only))
        .route(
            "/metrics",
            get({
                let s = server.clone();
                move || async move { metrics_text(&s) }
            })
            .fallback(get_only),
        )
        .route(
            "/health",
            get({
                let s = server.clone();
                move |q: Query<HashMap<String, String>>| async move { health(&s, &q).await }
            })
            .fallback(get_only),
        );
    for (kind, checks) in [("livez", LIVEZ), ("readyz", READYZ)] {
        let s = server.clone();
        r = r.route(
            &format!("/{kind}"),
            get(move |q: RawQuery| {
                let s = s.clone();
                async move {
                    let q = q.0.unwrap_or_default();
                    let excluded = query_values(&q, "exclude");
                    let run: Vec<Check> = checks
                        .iter()
                        .copied()
                        .filter(|c| !excluded.iter().any(|e| e == c.name()))
                        .collect();
                    run_checks(&s, &run, has_key(&q, "verbose")).await
                }
            })
            .fallback(get_only),
        );
        for check in checks {
            let s = server.clone();
            r = r.route(
                &format!("/{kind}/{}", check.name()),
                get(move |q: RawQuery| {
                    let s = s.clone();
                    async move {
                        let verbose = has_key(&q.0.unwrap_or_default(), "verbose");
                        run_checks(&s, &[*check], verbose).await
                    }
                })
                .fallback(get_only),
            );
        }
    }
    r
}

/// etcd's `allowMethod(w, r, "GET")`: 405 with `Allow: GET`.
async fn get_only() -> Response {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET"));
    resp
}

/// `GET /version`. Patroni parses both as dotted integers to pick its API prefix.
async fn version() -> Response {
    let body = serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_CLUSTER_VERSION,
    });
    // Key order as etcd writes it.
    let body = format!(
        "{{\"etcdserver\":{},\"etcdcluster\":{}}}",
        body["etcdserver"], body["etcdcluster"]
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn metrics_text(s: &EtcdServer) -> Response {
    let st = &s.raft.status;
    let g = metrics::ServerGauges {
        has_leader: st.leader() != 0,
        is_leader: st.is_leader(),
        // Read after the applied index, and never below it: what is applied is committed.
        applied_index: st.applied_index(),
        committed_index: st.commit_index().max(st.applied_index()),
        db_size: s.backend.disk_space(),
        db_size_in_use: s.backend.backend_size(),
        keys: i64::try_from(s.store.live_keys()).unwrap_or(i64::MAX),
        current_rev: s.store.current_rev(),
        compact_rev: s.store.compact_rev(),
        server_version: ETCD_VERSION,
    };
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&g),
    )
        .into_response()
}

/// The read etcd's health checks make: one key, keys only, limit 1.
async fn read_check(s: &EtcdServer, serializable: bool) -> Result<(), Error> {
    // As etcd's health checks, run as the member itself (`WithRoot`).
    s.range(
        &crate::auth::Caller::Internal,
        RangeRequest {
            key: b"health".to_vec(),
            keys_only: true,
            limit: 1,
            serializable,
            ..Default::default()
        },
    )
    .await
    .map(|_| ())
}

/// `GET /health` (etcd 3.5): no raised alarm (but the one named by `?exclude=`), a leader
/// unless `?serializable=true`, then a read, linearizable unless `?serializable=true`.
async fn health(s: &EtcdServer, q: &HashMap<String, String>) -> Response {
    let serializable = q.get("serializable").map(String::as_str) == Some("true");
    let excluded = q.get("exclude").map(String::as_str);
    let alarm = s
        .alarms
        .get(AlarmType::None)
        .into_iter()
        .filter_map(|a| AlarmType::try_from(a.alarm).ok())
        .find(|a| Some(a.as_str_name()) != excluded);
    let reason = if let Some(a) = alarm {
        Some(format!("ALARM {}", a.as_str_name()))
    } else if !serializable && s.raft.status.leader() == 0 {
        Some("RAFT NO LEADER".to_string())
    } else {
        read_check(s, serializable)
            .await
            .err()
            .map(|e| format!("RANGE ERROR:{e}"))
    };
    health_response(reason)
}

/// `/health`'s answer: 200 `{"health":"true","reason":""}`, or 503 with the reason (written
/// with Go's `http.Error`, as etcd does).
fn health_response(reason: Option<String>) -> Response {
    let body = format!(
        "{{\"health\":\"{}\",\"reason\":{}}}",
        if reason.is_none() { "true" } else { "false" },
        serde_json::Value::from(reason.clone().unwrap_or_default())
    );
    match reason {
        None => {
            metrics::HEALTH_SUCCESS.inc();
            // etcd writes no content type here; Go sniffs it as text.
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Some(_) => {
            metrics::HEALTH_FAILURES.inc();
            text(StatusCode::SERVICE_UNAVAILABLE, &body)
        }
    }
}

/// The checks of `/livez` and `/readyz` (etcd 3.5.11+).
#[derive(Debug, Clone, Copy)]
enum Check {
    DataCorruption,
    SerializableRead,
    LinearizableRead,
    NonLearner,
}

const LIVEZ: &[Check] = &[Check::SerializableRead];
const READYZ: &[Check] = &[
    Check::DataCorruption,
    Check::SerializableRead,
    Check::LinearizableRead,
    Check::NonLearner,
];

impl Check {
    fn name(self) -> &'static str {
        match self {
            Check::DataCorruption => "data_corruption",
            Check::SerializableRead => "serializable_read",
            Check::LinearizableRead => "linearizable_read",
            Check::NonLearner => "non_learner",
        }
    }

    async fn run(self, s: &EtcdServer) -> Result<(), String> {
        match self {
            Check::DataCorruption => {
                if s.alarms.get(AlarmType::Corrupt).is_empty() {
                    Ok(())
                } else {
                    Err("the cluster has a CORRUPT alarm".to_string())
                }
            }
            // pgraft has no learners (yet).
            Check::NonLearner => Ok(()),
            Check::SerializableRead => read_check(s, true).await.map_err(|e| e.to_string()),
            Check::LinearizableRead => read_check(s, false).await.map_err(|e| e.to_string()),
        }
    }
}

/// Runs `checks`: `ok` (preceded by one line per check with `?verbose`), or 503 listing every
/// check when one failed.
async fn run_checks(s: &EtcdServer, checks: &[Check], verbose: bool) -> Response {
    let mut out = String::new();
    let mut healthy = true;
    for c in checks {
        match c.run(s).await {
            Ok(()) => out.push_str(&format!("[+]{} ok\n", c.name())),
            Err(e) => {
                healthy = false;
                out.push_str(&format!("[-]{} failed: {e}\n", c.name()));
            }
        }
    }
    if !healthy {
        return text(StatusCode::SERVICE_UNAVAILABLE, &out);
    }
    let body = if verbose { out + "ok\n" } else { "ok\n".into() };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// Every value of `key` in a raw query string (`exclude=a&exclude=b`).
fn query_values(q: &str, key: &str) -> Vec<String> {
    url::form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn has_key(q: &str, key: &str) -> bool {
    url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(r: Response) -> (StatusCode, String, String) {
        let status = r.status();
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body =
            futures::executor::block_on(axum::body::to_bytes(r.into_body(), 1 << 16)).unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn health_answers() {
        assert_eq!(
            parts(health_response(None)),
            (
                StatusCode::OK,
                "text/plain; charset=utf-8".into(),
                r#"{"health":"true","reason":""}"#.into()
            )
        );
        assert_eq!(
            parts(health_response(Some("RAFT NO LEADER".into()))),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8".into(),
                "{\"health\":\"false\",\"reason\":\"RAFT NO LEADER\"}\n".into()
            )
        );
    }

    #[test]
    fn query_lists() {
        assert_eq!(
            query_values("verbose&exclude=a&exclude=b%5F", "exclude"),
            vec!["a".to_string(), "b_".to_string()]
        );
        assert!(has_key("verbose&exclude=a", "verbose"));
        assert!(!has_key("exclude=verbose", "verbose"));
    }
}
