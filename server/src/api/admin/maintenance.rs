//! Alarms (list, disarm) and the backup download: `GET /admin/v1/snapshot` streams etcd's
//! snapshot file (what `etcdctl snapshot save` writes) from the service's bounded backup
//! stream, chunk by chunk, never holding the whole file.

use super::access::{authorize, Need};
use super::cluster::{hex_id, parse_id};
use super::error::{ApiError, ErrorBody};
use super::{Api, Server};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Json;
use etcd_proto::etcdserverpb::alarm_request::AlarmAction;
use etcd_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub(super) fn routes(api: Api) -> Api {
    api.on(Method::GET, "/admin/v1/alarms", list_alarms)
        .on(Method::DELETE, "/admin/v1/alarms", disarm)
        .on(Method::GET, "/admin/v1/snapshot", snapshot)
}

/// One raised alarm.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alarm {
    /// The member it is raised for, hex.
    pub member_id: String,
    /// "NOSPACE" or "CORRUPT".
    pub alarm: String,
}

/// The raised alarms.
#[derive(Debug, Serialize, ToSchema)]
pub struct Alarms {
    pub alarms: Vec<Alarm>,
}

fn views(alarms: &[AlarmMember]) -> Vec<Alarm> {
    alarms
        .iter()
        .map(|a| Alarm {
            member_id: hex_id(a.member_id),
            alarm: AlarmType::try_from(a.alarm)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| a.alarm.to_string()),
        })
        .collect()
}

#[utoipa::path(get, path = "/admin/v1/alarms", tag = "maintenance",
    responses(
        (status = 200, description = "The alarms raised in the cluster", body = Alarms),
        (status = 401, description = "Auth is on and no valid token was sent", body = ErrorBody)))]
pub(super) async fn list_alarms(
    State(s): State<Server>,
    headers: HeaderMap,
) -> Result<Json<Alarms>, ApiError> {
    authorize(&s, &headers, Need::Read).await?;
    Ok(Json(Alarms {
        alarms: views(&raised_alarms(&s).await?),
    }))
}

/// The alarms raised in the cluster now.
async fn raised_alarms(s: &Server) -> Result<Vec<AlarmMember>, ApiError> {
    Ok(s.alarm(AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    })
    .await?
    .alarms)
}

/// Which alarms to disarm: all by default, or those of one member and/or one kind.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Disarm {
    /// Only this member's alarms (hex).
    #[param(pattern = "^[0-9a-fA-F]{1,16}$")]
    pub member_id: Option<String>,
    /// Only this kind: "NOSPACE" or "CORRUPT".
    pub alarm: Option<String>,
}

#[utoipa::path(delete, path = "/admin/v1/alarms", tag = "maintenance", params(Disarm),
    security(("token" = [])),
    responses(
        (status = 200, description = "The alarms still raised after disarming", body = Alarms),
        (status = 400, description = "Bad member ID or alarm name", body = ErrorBody),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted (root only while auth is on)", body = ErrorBody),
        (status = 503, description = "No leader", body = ErrorBody)))]
pub(super) async fn disarm(
    State(s): State<Server>,
    headers: HeaderMap,
    q: Result<Query<Disarm>, QueryRejection>,
) -> Result<Json<Alarms>, ApiError> {
    authorize(&s, &headers, Need::Admin).await?;
    let Query(q) = q?;
    let member = q.member_id.as_deref().map(parse_id).transpose()?;
    let kind = match q.alarm.as_deref() {
        None => None,
        Some(name) => match AlarmType::from_str_name(&name.to_ascii_uppercase()) {
            Some(t) if t != AlarmType::None => Some(t as i32),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "alarm {name:?} is not NOSPACE or CORRUPT"
                )))
            }
        },
    };
    let raised = raised_alarms(&s).await?;
    // As `etcdctl alarm disarm`: one DEACTIVATE per raised alarm, through the log.
    for a in raised
        .iter()
        .filter(|a| member.is_none_or(|m| m == a.member_id))
        .filter(|a| kind.is_none_or(|k| k == a.alarm))
    {
        s.alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: a.member_id,
            alarm: a.alarm,
        })
        .await?;
    }
    Ok(Json(Alarms {
        alarms: views(&raised_alarms(&s).await?),
    }))
}

#[utoipa::path(get, path = "/admin/v1/snapshot", tag = "maintenance",
    security(("token" = [])),
    responses(
        (status = 200, description = "etcd's snapshot file (as `etcdctl snapshot save` writes it), streamed; restore it with `etcdctl snapshot restore`",
            content_type = "application/octet-stream", body = String),
        (status = 401, description = "No or a wrong credential", body = ErrorBody),
        (status = 403, description = "Not permitted (root only while auth is on)", body = ErrorBody),
        (status = 503, description = "This member cannot take a snapshot now", body = ErrorBody)))]
pub(super) async fn snapshot(State(s): State<Server>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers, Need::Admin).await {
        return e.into_response();
    }
    let stream = match s.snapshot() {
        Ok(st) => st,
        Err(e) => return ApiError::from(e).into_response(),
    };
    // An error mid-stream ends the body early (the status is already sent): the client sees
    // a truncated transfer, and the file's closing SHA-256 does not match.
    let body = Body::from_stream(stream.map(|r| {
        r.map(|m| Bytes::from(m.blob))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"pgraft-{}.snapshot.db\"",
        hex_id(s.member_id())
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}
