//! The admin API's one error shape, `{"error": <message>, "code": <kind>}`, with the HTTP
//! status that says what went wrong: 400 bad input, 401 no or a wrong credential, 403 not
//! permitted, 404 unknown member or key, 409 a conflict with the cluster's state (removing the
//! last voter, adding a member twice), 503 no leader or an unavailable member.
//!
//! Service errors are classified by the gRPC code etcd gives them, so a rule's refusal reads
//! the same on every face.

use crate::error::Error;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// What went wrong, for a program: `invalid_argument`, `unauthenticated`,
    /// `permission_denied`, `not_found`, `conflict`, `unavailable`, `too_large`, ...
    pub code: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// The HTTP status and code word for a gRPC code.
fn classify(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::OutOfRange => (StatusCode::BAD_REQUEST, "out_of_range"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => {
            (StatusCode::CONFLICT, "conflict")
        }
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        Code::DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        Code::ResourceExhausted => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "unimplemented"),
        Code::Cancelled => (StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let (status, code) = match e {
            // Transient: try again (etcd gives it no gRPC code of its own).
            Error::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Error::LeaderTransferTimeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::RequestTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::NoLeader => (StatusCode::SERVICE_UNAVAILABLE, "no_leader"),
            ref other => classify(other.code()),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        let (status, code) = classify(s.code());
        ApiError::new(status, code, s.message())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code.to_string(),
        };
        (self.status, Json(body)).into_response()
    }
}

/// A known path asked with a method it does not serve.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this path",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_errors_get_their_status() {
        let cases = [
            (Error::MemberNotFound, StatusCode::NOT_FOUND),
            (Error::NotEnoughStartedMembers, StatusCode::CONFLICT),
            (Error::MemberExist, StatusCode::CONFLICT),
            (Error::EmptyKey, StatusCode::BAD_REQUEST),
            (Error::FutureRev, StatusCode::BAD_REQUEST),
            (Error::NoLeader, StatusCode::SERVICE_UNAVAILABLE),
            (Error::PermissionDenied, StatusCode::FORBIDDEN),
            (Error::InvalidAuthToken, StatusCode::UNAUTHORIZED),
            (
                Error::Internal("x".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            let what = e.to_string();
            assert_eq!(ApiError::from(e).status, status, "{what}");
        }
    }
}
