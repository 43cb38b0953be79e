//! pgraft's REST admin face (`/admin/v1`) and the dashboard that drives it (`/`, `/ui/`), on
//! the client port next to gRPC and the JSON gateway.
//!
//! Operators see and steer a cluster with `curl` or a browser, without an etcd client. Every
//! call converts JSON to the service layer's requests and back ([`EtcdServer`]'s member, KV,
//! alarm and snapshot methods), so the rules (quotas, reconfiguration checks, permissions) are
//! the gRPC face's, never a copy. Who may call what is [`access`]'s job; the OpenAPI document
//! is derived from the handlers' own types ([`openapi`]), and [`Api`] records every route it
//! serves so a test can hold the two together.

mod access;
mod body;
mod cluster;
mod error;
mod kv;
mod maintenance;
pub mod openapi;
mod ui;

use crate::service::EtcdServer;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use error::ApiError;

/// The state every admin handler gets.
type Server = Arc<EtcdServer>;

/// The prefix of every admin API route.
pub const PREFIX: &str = "/admin/v1";

/// Routes being registered, with the list of what they serve (method and path), so that the
/// OpenAPI test compares the document with what the router really answers.
struct Api {
    routes: BTreeMap<&'static str, MethodRouter<Server>>,
    served: Vec<(Method, &'static str)>,
}

impl Api {
    fn new() -> Api {
        Api {
            routes: BTreeMap::new(),
            served: Vec::new(),
        }
    }

    /// Serves `method path` with `handler`.
    fn on<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Api
    where
        H: Handler<T, Server>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone())
            .unwrap_or_else(|_| panic!("no method filter for {method}"));
        let mr = self
            .routes
            .remove(path)
            .unwrap_or_default()
            .on(filter, handler);
        self.routes.insert(path, mr);
        self.served.push((method, path));
        self
    }

    fn into_router(self) -> axum::Router<Server> {
        let mut r = axum::Router::new();
        for (path, mr) in self.routes {
            r = r.route(path, mr.fallback(error::method_not_allowed));
        }
        r
    }
}

/// Every `/admin/v1` route.
fn api() -> Api {
    let api = Api::new().on(Method::GET, "/admin/v1/openapi.json", openapi::openapi_json);
    let api = cluster::routes(api);
    let api = kv::routes(api);
    maintenance::routes(api)
}

/// The methods and paths the admin API serves (for the OpenAPI completeness test).
pub fn served_routes() -> Vec<(String, String)> {
    api()
        .served
        .into_iter()
        .map(|(m, p)| (m.as_str().to_lowercase(), p.to_string()))
        .collect()
}

/// The admin API and the dashboard. Bodies are bounded: a KV put's JSON (base64 included) of a
/// value up to `--max-request-bytes`, with room for the rest of the object.
pub fn router(server: Arc<EtcdServer>) -> axum::Router {
    let body_limit = server.cfg.max_request_bytes.saturating_mul(2) + 64 * 1024;
    api()
        .into_router()
        .merge(ui::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(server)
}
