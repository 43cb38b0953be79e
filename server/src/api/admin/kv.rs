//! The key browser and editor: pages of keys under a prefix (at a revision, keys only or with
//! values), put, delete, and compaction, each one service call (so etcd's checks, auth
//! included, apply unchanged).
//!
//! Keys and values are bytes: they travel as UTF-8 text when they are valid UTF-8, else as
//! base64 (said by `*_encoding`), and every key parameter has a `_b64` twin for keys that are
//! not text. A page holds at most [`MAX_LIMIT`] keys and, with values, stops once
//! [`VALUE_BUDGET`] bytes of values are in it: the keys are listed first (keys only), then the
//! values read one by one at the page's revision, so no page materialises more than that.

use super::access::{authorize, Need};
use super::body::JsonBody;
use super::error::{ApiError, ErrorBody};
use super::{Api, Server};
use crate::service::prefix_end;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::Json;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use etcd_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Keys per page by default, and at most.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;
/// Bytes of values a page gathers before it stops (one value may take it past this).
const VALUE_BUDGET: usize = 1024 * 1024;

pub(super) fn routes(api: Api) -> Api {
    api.on(Method::GET, "/admin/v1/kv", browse)
        .on(Method::PUT, "/admin/v1/kv", put)
        .on(Method::DELETE, "/admin/v1/kv", delete)
        .on(Method::POST, "/admin/v1/compaction", compact)
}

/// How bytes are written in a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Utf8,
    Base64,
}

/// Bytes as text when they are UTF-8, else base64.
fn encode(b: &[u8]) -> (String, Encoding) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_string(), Encoding::Utf8),
        Err(_) => (B64.encode(b), Encoding::Base64),
    }
}

/// One of a text parameter and its base64 twin (neither: `None`).
fn bytes_param(
    name: &str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Option<Vec<u8>>, ApiError> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "give {name} or {name}_b64, not both"
        ))),
        (Some(t), None) => Ok(Some(t.into_bytes())),
        (None, Some(b)) => B64
            .decode(b.as_bytes())
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{name}_b64 is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A page of keys.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Browse {
    /// List the keys starting with this (text). Absent: every key.
    pub prefix: Option<String>,
    /// The prefix in base64, for one that is not text.
    pub prefix_b64: Option<String>,
    /// Start the page at this key (inclusive; within the prefix): a previous page's `next`.
    pub start: Option<String>,
    /// The start key in base64: a previous page's `next_b64`.
    pub start_b64: Option<String>,
    /// Keys per page (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Read at this revision (default: the latest).
    #[param(minimum = 0)]
    pub revision: Option<i64>,
    /// Keys and their metadata only, without values.
    pub keys_only: Option<bool>,
}

/// One key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KvEntry {
    pub key: String,
    pub key_encoding: Encoding,
    /// The value (absent with `keys_only`).
    pub value: Option<String>,
    pub value_encoding: Option<Encoding>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    /// The lease the key is attached to, hex ("" for none).
    pub lease: String,
}

/// A page of keys, in key order.
#[derive(Debug, Serialize, ToSchema)]
pub struct KvPage {
    /// The revision the page was read at: pass it as `revision` for the next pages to see
    /// one consistent state.
    pub revision: i64,
    /// Keys from the start of this page to the end of the prefix.
    pub count: i64,
    /// More keys follow: ask again with `start` = `next` (or `start_b64` = `next_b64`).
    pub more: bool,
    /// The next page's start key (absent when it is not text, or there is no next page).
    pub next: Option<String>,
    pub next_b64: Option<String>,
    pub kvs: Vec<KvEntry>,
}

#[utoipa::path(get, path = "/admin/v1/kv", tag = "kv", params(Browse),
    responses(
        (status = 200, description = "A page of keys", body = KvPage),
        (status = 400, description = "Bad parameters, or a compacted or future revision", body = ErrorBody),
        (status = 401, description = "Auth is on and no valid token was sent", body = ErrorBody),
        (status = 403, description = "The user may not read these keys", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody)))]
pub(super) async fn browse(
    State(s): State<Server>,
    headers: HeaderMap,
    q: Result<Query<Browse>, QueryRejection>,
) -> Result<Json<KvPage>, ApiError> {
    let who = authorize(&s, &headers, Need::Read).await?;
    let Query(q) = q?;
    let prefix = bytes_param("prefix", q.prefix, q.prefix_b64)?.unwrap_or_default();
    let start = bytes_param("start", q.start, q.start_b64)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let revision = q.revision.unwrap_or(0);
    if revision < 0 {
        return Err(ApiError::bad_request("revision must not be negative"));
    }
    let key = match start {
        Some(k) if !k.starts_with(&prefix) => {
            return Err(ApiError::bad_request("start must be within the prefix"))
        }
        Some(k) if !k.is_empty() => k,
        _ if prefix.is_empty() => vec![0],
        _ => prefix.clone(),
    };
    let keys = s
        .range(
            &who,
            RangeRequest {
                key,
                range_end: prefix_end(&prefix),
                limit: i64::from(limit),
                revision,
                keys_only: true,
                ..Default::default()
            },
        )
        .await?;
    // The revision read: the one asked for, else the latest (a header names the store's
    // current revision whatever was asked).
    let rev = if revision > 0 {
        revision
    } else {
        keys.header.as_ref().map_or(0, |h| h.revision)
    };
    let mut more = keys.more;
    let mut kvs = Vec::with_capacity(keys.kvs.len());
    let mut next_key = keys.kvs.last().map(|kv| {
        let mut k = kv.key.clone();
        k.push(0);
        k
    });
    let keys_only = q.keys_only.unwrap_or(false);
    let mut value_bytes = 0usize;
    for kv in keys.kvs {
        let value = if keys_only {
            None
        } else {
            if value_bytes >= VALUE_BUDGET {
                more = true;
                next_key = Some(kv.key.clone());
                break;
            }
            // The same revision as the listing, read locally (the listing already waited for
            // a linearizable read point when it needed one).
            let one = s
                .range(
                    &who,
                    RangeRequest {
                        key: kv.key.clone(),
                        revision: rev,
                        serializable: true,
                        ..Default::default()
                    },
                )
                .await?;
            let v = one
                .kvs
                .into_iter()
                .next()
                .map(|kv| kv.value)
                .unwrap_or_default();
            value_bytes += v.len();
            Some(encode(&v))
        };
        let (key, key_encoding) = encode(&kv.key);
        kvs.push(KvEntry {
            key,
            key_encoding,
            value_encoding: value.as_ref().map(|v| v.1),
            value: value.map(|v| v.0),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: if kv.lease == 0 {
                String::new()
            } else {
                format!("{:x}", kv.lease)
            },
        });
    }
    let next_key = next_key.filter(|_| more);
    Ok(Json(KvPage {
        revision: rev,
        count: keys.count,
        more,
        next: next_key
            .as_ref()
            .and_then(|k| String::from_utf8(k.clone()).ok()),
        next_b64: next_key.as_ref().map(|k| B64.encode(k)),
        kvs,
    }))
}

/// A key to write. Give `key` or `key_b64`, and `value` or `value_b64`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutKv {
    pub key: Option<String>,
    pub key_b64: Option<String>,
    pub value: Option<String>,
    pub value_b64: Option<String>,
    /// Attach the key to this lease (hex).
    pub lease: Option<String>,
}

/// A write's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct Written {
    /// The store's revision after the write.
    pub revision: i64,
}

#[utoipa::path(put, path = "/admin/v1/kv", tag = "kv", request_body = PutKv,
    security(("token" = [])),
    responses(
        (status = 200, description = "Written", body = Written),
        (status = 400, description = "Bad body, empty key, or a lease that does not exist", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 404, description = "No such lease", body = ErrorBody),
        (status = 413, description = "Too large", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody),
        (status = 507, description = "The space quota is exhausted", body = ErrorBody)))]
pub(super) async fn put(
    State(s): State<Server>,
    headers: HeaderMap,
    body: Result<JsonBody<PutKv>, ApiError>,
) -> Result<Json<Written>, ApiError> {
    let who = authorize(&s, &headers, Need::Write).await?;
    let JsonBody(p) = body?;
    let key = bytes_param("key", p.key, p.key_b64)?
        .ok_or_else(|| ApiError::bad_request("give key or key_b64"))?;
    let value = bytes_param("value", p.value, p.value_b64)?
        .ok_or_else(|| ApiError::bad_request("give value or value_b64"))?;
    let lease = match p.lease.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(l) => i64::from_str_radix(l, 16)
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| ApiError::bad_request(format!("lease {l:?} is not a hex lease ID")))?,
    };
    let r = s
        .put(
            &who,
            PutRequest {
                key,
                value,
                lease,
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(Written {
        revision: r.header.map_or(0, |h| h.revision),
    }))
}

/// The keys to delete: `key` (or `key_b64`), and with `with_prefix` every key starting with it.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteKv {
    pub key: Option<String>,
    pub key_b64: Option<String>,
    /// Delete every key that starts with the key.
    pub with_prefix: Option<bool>,
}

/// A delete's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// Keys deleted.
    pub deleted: i64,
    pub revision: i64,
}

#[utoipa::path(delete, path = "/admin/v1/kv", tag = "kv", params(DeleteKv),
    security(("token" = [])),
    responses(
        (status = 200, description = "Deleted (0 when no key matched)", body = Deleted),
        (status = 400, description = "No key given", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody)))]
pub(super) async fn delete(
    State(s): State<Server>,
    headers: HeaderMap,
    q: Result<Query<DeleteKv>, QueryRejection>,
) -> Result<Json<Deleted>, ApiError> {
    let who = authorize(&s, &headers, Need::Write).await?;
    let Query(q) = q?;
    let key = bytes_param("key", q.key, q.key_b64)?
        .ok_or_else(|| ApiError::bad_request("give key or key_b64"))?;
    let range_end = if q.with_prefix.unwrap_or(false) && !key.is_empty() {
        prefix_end(&key)
    } else {
        Vec::new()
    };
    let r = s
        .delete_range(
            &who,
            DeleteRangeRequest {
                key,
                range_end,
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(Deleted {
        deleted: r.deleted,
        revision: r.header.map_or(0, |h| h.revision),
    }))
}

/// Drop the history before a revision.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Compact {
    /// Compact the history up to this revision (not beyond the current one).
    #[schema(minimum = 1)]
    pub revision: i64,
    /// Answer only once the space is reclaimed on this member.
    #[serde(default)]
    pub physical: bool,
}

/// A compaction's result.
#[derive(Debug, Serialize, ToSchema)]
pub struct Compacted {
    /// The store's revision when the compaction applied.
    pub revision: i64,
}

#[utoipa::path(post, path = "/admin/v1/compaction", tag = "kv", request_body = Compact,
    security(("token" = [])),
    responses(
        (status = 200, description = "Compacted", body = Compacted),
        (status = 400, description = "Bad body, or a revision already compacted or in the future", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted (root only while auth is on)", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody)))]
pub(super) async fn compact(
    State(s): State<Server>,
    headers: HeaderMap,
    body: Result<JsonBody<Compact>, ApiError>,
) -> Result<Json<Compacted>, ApiError> {
    let who = authorize(&s, &headers, Need::Admin).await?;
    let JsonBody(c) = body?;
    if c.revision <= 0 {
        return Err(ApiError::bad_request("revision must be positive"));
    }
    let r = s
        .compact(
            &who,
            CompactionRequest {
                revision: c.revision,
                physical: c.physical,
            },
        )
        .await?;
    Ok(Json(Compacted {
        revision: r.header.map_or(0, |h| h.revision),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_etcds() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), b"\0");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn bytes_travel_as_text_or_base64() {
        assert_eq!(encode(b"caf\xc3\xa9"), ("café".to_string(), Encoding::Utf8));
        assert_eq!(encode(b"\xff\x00"), ("/wA=".to_string(), Encoding::Base64));
        assert_eq!(
            bytes_param("k", None, Some("/wA=".into())).unwrap(),
            Some(vec![0xff, 0])
        );
        assert!(bytes_param("k", Some("a".into()), Some("YQ==".into())).is_err());
        assert!(bytes_param("k", None, Some("!!".into())).is_err());
    }
}
