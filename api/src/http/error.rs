//! Every error the HTTP API sends: `{code, message}` with the matching status.
//! `From<Error>` below is the whole mapping from domain errors to HTTP.

use poem::{Response, http::StatusCode};
use poem_openapi::{ApiResponse, Object, payload::Json};
use serde::Serialize;

use service::Error;

/// The body of every error response.
#[derive(Clone, Debug, Object, Serialize)]
#[oai(example)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `insufficient_stock`.
    pub code: String,
    /// A sentence for humans; it may change between versions.
    pub message: String,
}

impl poem_openapi::types::Example for ErrorBody {
    fn example() -> Self {
        Self {
            code: "insufficient_stock".into(),
            message: "only 0 unit(s) of product 1 are available, 2 requested".into(),
        }
    }
}

/// An error response.
#[derive(Clone, Debug, ApiResponse)]
pub enum ApiError {
    /// Malformed JSON (`invalid_json`) or a parameter that does not parse (`invalid_parameter`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong credentials (`unauthorized`, `invalid_signature`, `invalid_token`,
    /// `customer_token_required`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The resource does not exist (`product_not_found`, `hold_not_found`, `order_not_found`,
    /// `refund_not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The request conflicts with the current state (`insufficient_stock`, `hold_expired`,
    /// `hold_released`, `hold_ordered`, `hold_paid`, `order_paid`, `stock_committed`,
    /// `sale_not_started`, `sale_ended`, `customer_limit_reached`, `idempotency_key_reused`).
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is over 64 KiB (`payload_too_large`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// A field is missing, has the wrong type or is out of range (`validation_error`).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// An unexpected failure (`internal_error`).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The database cannot be reached (`database_unavailable`), or the process serves as
    /// many live stock streams as it may (`too_many_subscribers`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

/// A `{code, message}` body.
fn body(code: &str, message: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        code: code.to_owned(),
        message: message.into(),
    })
}

impl ApiError {
    /// 400 `invalid_json`: the body is not JSON.
    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::BadRequest(body("invalid_json", message))
    }

    /// 413 `payload_too_large`: the body is over [`MAX_BODY_BYTES`](super::body::MAX_BODY_BYTES).
    pub fn payload_too_large() -> Self {
        Self::PayloadTooLarge(body(
            "payload_too_large",
            format!("request body exceeds {} bytes", super::body::MAX_BODY_BYTES),
        ))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let b = body(e.code(), e.to_string());
        match e {
            Error::ProductNotFound(_)
            | Error::HoldNotFound(_)
            | Error::OrderNotFound(_)
            | Error::RefundNotFound(_) => Self::NotFound(b),
            Error::InsufficientStock { .. }
            | Error::HoldExpired(_)
            | Error::HoldReleased(_)
            | Error::HoldOrdered(_)
            | Error::HoldPaid(_)
            | Error::OrderPaid(_)
            | Error::StockCommitted { .. }
            | Error::SaleNotStarted { .. }
            | Error::SaleEnded { .. }
            | Error::CustomerLimitReached { .. }
            | Error::IdempotencyKeyReused => Self::Conflict(b),
            Error::Validation { .. } => Self::Unprocessable(b),
            Error::Unauthorized | Error::InvalidSignature(_) | Error::CustomerTokenRequired(_) => {
                Self::Unauthorized(b)
            }
            Error::TooManySubscribers(_) => {
                tracing::warn!("live stock stream refused: LIVE_MAX_SUBSCRIBERS reached");
                Self::Unavailable(b)
            }
            Error::Unavailable(why) => {
                tracing::warn!(reason = why, "request refused: database unavailable");
                Self::Unavailable(body("database_unavailable", format!("{why}; retry later")))
            }
            Error::OutcomeUnknown(why) | Error::Internal(why) => {
                tracing::error!(error = %why, "internal error");
                Self::Internal(body("internal_error", "internal error"))
            }
            Error::Database(db) => {
                if service::error::database_unavailable(&db) {
                    tracing::warn!(error = %db, details = ?db, "database unavailable");
                    Self::Unavailable(body(
                        "database_unavailable",
                        "the database is unavailable; retry later",
                    ))
                } else {
                    tracing::error!(error = %db, details = ?db, "database error");
                    Self::Internal(body("internal_error", "internal error"))
                }
            }
        }
    }
}

/// Declares the error responses of one operation: exactly the statuses it can answer,
/// each documented with its codes. Converting an [`ApiError`] it does not list is a bug;
/// it is logged and answered 500.
macro_rules! operation_errors {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $status:literal, $doc:literal;)* }) => {
        $(#[$meta])*
        #[derive(Debug, poem_openapi::ApiResponse)]
        pub enum $name {
            $(
                #[doc = $doc]
                #[oai(status = $status)]
                $variant(poem_openapi::payload::Json<$crate::http::error::ErrorBody>),
            )*
            /// An unexpected failure (`internal_error`).
            #[oai(status = 500)]
            Internal(poem_openapi::payload::Json<$crate::http::error::ErrorBody>),
            /// The database cannot be reached (`database_unavailable`); retry later.
            #[oai(status = 503)]
            Unavailable(poem_openapi::payload::Json<$crate::http::error::ErrorBody>),
        }

        impl From<$crate::http::error::ApiError> for $name {
            fn from(e: $crate::http::error::ApiError) -> Self {
                use $crate::http::error::ApiError;
                match e {
                    $(ApiError::$variant(b) => Self::$variant(b),)*
                    ApiError::Internal(b) => Self::Internal(b),
                    ApiError::Unavailable(b) => Self::Unavailable(b),
                    #[allow(unreachable_patterns)]
                    other => {
                        tracing::error!(error = ?other, "an error this operation does not document");
                        Self::Internal(poem_openapi::payload::Json($crate::http::error::ErrorBody {
                            code: "internal_error".into(),
                            message: "internal error".into(),
                        }))
                    }
                }
            }
        }

        impl From<::service::Error> for $name {
            fn from(e: ::service::Error) -> Self {
                $crate::http::error::ApiError::from(e).into()
            }
        }
    };
}
pub(crate) use operation_errors;

/// An [`ApiError`] raised by an extractor, before a handler runs.
#[derive(Debug, thiserror::Error)]
#[error("request rejected: {0:?}")]
pub struct Rejection(pub ApiError);

impl poem::error::ResponseError for Rejection {
    fn status(&self) -> StatusCode {
        self.0.clone().into_response().status()
    }

    fn as_response(&self) -> Response {
        poem::IntoResponse::into_response(self.0.clone())
    }
}

/// A JSON error response outside the typed API (unknown routes, extractor failures).
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let json = serde_json::to_string(&ErrorBody {
        code: code.to_owned(),
        message: message.into(),
    })
    .expect("serialisable");
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(json)
}

/// Turns any error that reached the top into a `{code, message}` response.
pub async fn catch_all(err: poem::Error) -> Response {
    // Our own errors already carry their `{code, message}` response.
    if err.is::<Rejection>() || err.is_from_response() {
        return err.into_response();
    }
    let message = err.to_string();
    if let Some((status, code, fixed)) = framework_rejection(&err) {
        return error_response(status, code, fixed.map_or(message, str::to_owned));
    }
    let status = err.status();
    if status.is_server_error() {
        tracing::error!(error = %message, "unhandled error");
        return error_response(status, "internal_error", "internal error");
    }
    let code = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_");
    error_response(status, &code, message)
}

/// The status and code of a request poem or poem-openapi refused before a handler ran,
/// with a fixed message where the error's own would not help; `None` for other errors.
fn framework_rejection(
    err: &poem::Error,
) -> Option<(StatusCode, &'static str, Option<&'static str>)> {
    use poem::error::{MethodNotAllowedError, NotFoundError};
    use poem_openapi::error::{
        AuthorizationError, ContentTypeError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    };
    Some(if err.is::<ParsePathError>() {
        let fixed = "the id in the path must be an integer";
        (StatusCode::BAD_REQUEST, "invalid_parameter", Some(fixed))
    } else if err.is::<ParseParamError>() {
        // A header such as Idempotency-Key out of its bounds: a field that fails validation.
        (StatusCode::UNPROCESSABLE_ENTITY, "validation_error", None)
    } else if err.is::<ParseRequestPayloadError>() {
        (StatusCode::BAD_REQUEST, "invalid_json", None)
    } else if err.is::<ContentTypeError>() {
        let code = "unsupported_media_type";
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, code, None)
    } else if err.is::<AuthorizationError>() {
        let fixed = "missing or wrong admin token";
        (StatusCode::UNAUTHORIZED, "unauthorized", Some(fixed))
    } else if err.is::<NotFoundError>() {
        (StatusCode::NOT_FOUND, "not_found", Some("no such route"))
    } else if err.is::<MethodNotAllowedError>() {
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None)
    } else {
        return None;
    })
}

use poem::IntoResponse as _;
