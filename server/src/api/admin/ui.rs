//! The dashboard: one page of plain HTML, CSS and JavaScript compiled into the binary
//! (`include_str!`, nothing fetched from elsewhere, no build step), served at `/` and `/ui/`.
//! It polls the admin API and `/metrics` about once a second and draws its charts itself.

use super::Server;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The page loads nothing from elsewhere, and may not be framed.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

pub(super) fn router() -> axum::Router<Server> {
    let index = || async { asset("text/html; charset=utf-8", INDEX) };
    axum::Router::new()
        .route("/", get(index))
        .route("/ui/", get(index))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
