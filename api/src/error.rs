//! The domain error: what can go wrong in the service layer, with no HTTP in it.
//! `http::error` turns it into a response with one exhaustive `match`.

/// A failed service operation. Each variant but `Database` is the client's doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("product {0} does not exist")]
    ProductNotFound(i64),
    #[error("hold {0} does not exist")]
    HoldNotFound(i64),
    #[error("order {0} does not exist")]
    OrderNotFound(i64),
    #[error(
        "only {available} unit(s) of product {product_id} are available, {requested} requested"
    )]
    InsufficientStock {
        product_id: i64,
        requested: i64,
        available: i64,
    },
    #[error("hold {0} has expired and can no longer become an order")]
    HoldExpired(i64),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// A field is missing, has the wrong type or is out of range.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("missing or wrong admin token")]
    Unauthorized,
    #[error("{0}")]
    InvalidSignature(&'static str),
    #[error("database error")]
    Database(#[from] sea_orm::DbErr),
}

impl Error {
    /// A validation error on `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable machine-readable code sent to clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::ProductNotFound(_) => "product_not_found",
            Self::HoldNotFound(_) => "hold_not_found",
            Self::OrderNotFound(_) => "order_not_found",
            Self::InsufficientStock { .. } => "insufficient_stock",
            Self::HoldExpired(_) => "hold_expired",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Validation { .. } => "validation_error",
            Self::Unauthorized => "unauthorized",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::Database(_) => "internal_error",
        }
    }
}

/// `true` when the error says the database could not be reached (rather than that it
/// refused the statement): the request may succeed later, so it is a 503.
pub(crate) fn database_unreachable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(inner))
        | DbErr::Exec(RuntimeErr::SqlxError(inner))
        | DbErr::Query(RuntimeErr::SqlxError(inner)) => matches!(
            inner.as_ref(),
            Sqlx::Io(_)
                | Sqlx::PoolTimedOut
                | Sqlx::PoolClosed
                | Sqlx::WorkerCrashed
                | Sqlx::Protocol(_)
        ),
        DbErr::Conn(_) => true,
        _ => false,
    }
}

/// Result of a service operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
