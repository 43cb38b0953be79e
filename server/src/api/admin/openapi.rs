//! The OpenAPI 3 document of `/admin/v1`, derived by utoipa from the handlers' annotations and
//! the request and response types themselves (no copy kept by hand). Served at
//! `/admin/v1/openapi.json`; a test checks that it lists exactly the routes the router serves.

use super::{cluster, error, kv, maintenance};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pgraft admin API",
        description = "See and steer a pgraft cluster. Reads are open until etcd auth is \
                       enabled; writes need `Authorization: Bearer <admin token>` \
                       (`--admin-token`) or, with etcd auth on, an etcd token. Errors are \
                       `{\"error\": ..., \"code\": ...}`. Member IDs are hex strings."
    ),
    paths(
        openapi_json,
        cluster::overview,
        cluster::list_members,
        cluster::add_member,
        cluster::remove_member,
        cluster::promote_member,
        cluster::transfer_leader,
        cluster::leader_history,
        kv::browse,
        kv::put,
        kv::delete,
        kv::compact,
        maintenance::list_alarms,
        maintenance::disarm,
        maintenance::snapshot,
    ),
    components(schemas(error::ErrorBody)),
    modifiers(&TokenScheme),
    tags(
        (name = "cluster", description = "Members, roles, leadership"),
        (name = "kv", description = "Keys: browse, put, delete, compaction"),
        (name = "maintenance", description = "Alarms and backups"),
        (name = "meta", description = "This document"),
    )
)]
pub struct ApiDoc;

/// The `token` security scheme the write routes name: a bearer token (the admin token, or an
/// etcd token while auth is on).
struct TokenScheme;

impl Modify for TokenScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as JSON.
pub fn json() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or_default()
}

#[utoipa::path(get, path = "/admin/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This OpenAPI 3 document", body = Object)))]
pub(super) async fn openapi_json() -> Json<serde_json::Value> {
    Json(json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Every route the router serves under /admin/v1 is in the document, and the document
    /// names no route the router does not serve.
    #[test]
    fn the_document_lists_exactly_the_served_routes() {
        let doc = json();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> = super::super::served_routes()
            .into_iter()
            .filter(|(_, p)| p.starts_with(super::super::PREFIX))
            .collect();
        assert!(!served.is_empty());
        assert_eq!(
            served.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not documented"
        );
        assert_eq!(
            documented.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented but not served"
        );
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }
}
