//! Who may call the admin API. Reads are open, as `/health` is, until etcd auth is enabled;
//! then every call needs an etcd token (`Authorization: <token>` or `Bearer <token>`, the
//! gateway's header) and runs as that token's user, with the same permissions as on gRPC.
//! Writes always need a credential: the etcd token while auth is on, else the
//! `--admin-token`; with neither configured, writes are refused. Never open by default.

use super::error::ApiError;
use crate::auth::Caller;
use crate::service::EtcdServer;
use axum::http::{header, HeaderMap};

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading cluster state or keys (keys are then checked per user by the service).
    Read,
    /// Changing keys: the service checks the user's key permissions.
    Write,
    /// Changing the cluster, alarms, or taking a backup: root while auth is on.
    Admin,
}

/// The credential a request carries: the `Authorization` header without a `Bearer ` prefix.
fn credential(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not text"))?;
    let v = v.strip_prefix("Bearer ").unwrap_or(v).trim();
    Ok((!v.is_empty()).then_some(v))
}

/// Checks the request's credential for `need` and names the caller the service calls run as.
pub async fn authorize(
    s: &EtcdServer,
    headers: &HeaderMap,
    need: Need,
) -> Result<Caller, ApiError> {
    let given = credential(headers)?;
    if s.auth.is_enabled() {
        let Some(token) = given else {
            return Err(ApiError::unauthenticated(
                "etcd auth is enabled: send a token from /v3/auth/authenticate in the Authorization header",
            ));
        };
        let who = s.caller(Some(token)).await?;
        if need == Need::Admin {
            s.check_admin(&who)?;
        }
        return Ok(who);
    }
    if need == Need::Read {
        return Ok(Caller::Anonymous);
    }
    let Some(expected) = &s.cfg.admin_token else {
        return Err(ApiError::forbidden(
            "writes through the admin API are off: start pgraftd with --admin-token (or \
             PGRAFT_ADMIN_TOKEN), or enable etcd auth",
        ));
    };
    match given {
        Some(t) if expected.matches(t) => Ok(Caller::Anonymous),
        Some(_) => Err(ApiError::unauthenticated("wrong admin token")),
        None => Err(ApiError::unauthenticated(
            "this call changes the cluster: send the admin token as 'Authorization: Bearer <token>'",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_are_read_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(credential(&h).unwrap(), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("tok.1"));
        assert_eq!(credential(&h).unwrap(), Some("tok.1"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(credential(&h).unwrap(), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert!(credential(&h).is_err());
    }
}
