//! The domain error: what can go wrong in the service layer, with no HTTP in it.
//! `http::error` turns it into a response with one exhaustive `match`.

/// A failed service operation. Each variant up to `InvalidSignature` is the client's
/// doing; the others are the server's.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No product with this id.
    #[error("product {0} does not exist")]
    ProductNotFound(i64),
    /// No hold with this id.
    #[error("hold {0} does not exist")]
    HoldNotFound(i64),
    /// No order with this id.
    #[error("order {0} does not exist")]
    OrderNotFound(i64),
    /// Fewer units are free than the hold asks for.
    #[error(
        "only {available} unit(s) of product {product_id} are available, {requested} requested"
    )]
    InsufficientStock {
        /// The product asked for.
        product_id: i64,
        /// Units asked for.
        requested: i64,
        /// Units free when the request's turn came.
        available: i64,
    },
    /// The hold's time is up (or it was expired): it can never become an order.
    #[error("hold {0} has expired and can no longer become an order")]
    HoldExpired(i64),
    /// The hold was released by its buyer: it can never become an order.
    #[error("hold {0} was released and can no longer become an order")]
    HoldReleased(i64),
    /// The hold became an order: its units are the order's now.
    #[error("hold {0} has become an order; cancel the order instead")]
    HoldOrdered(i64),
    /// A payment is recorded for the hold: it cannot be released.
    #[error("hold {0} is paid for and cannot be released")]
    HoldPaid(i64),
    /// The order is paid: it cannot be cancelled.
    #[error("order {0} is paid and cannot be cancelled")]
    OrderPaid(i64),
    /// A reduction of stock larger than the units free now.
    #[error(
        "product {product_id} has units held or sold: at most {removable} unit(s) can be \
         removed now"
    )]
    StockCommitted {
        /// The product changed.
        product_id: i64,
        /// Units free now, the most that can be removed.
        removable: i64,
    },
    /// No refund with this idempotency key.
    #[error("no payment {0:?} must be refunded")]
    RefundNotFound(String),
    /// The product's sale has not started yet.
    #[error("the sale of product {product_id} starts at {starts_at}")]
    SaleNotStarted {
        /// The product asked for.
        product_id: i64,
        /// When its sale starts, RFC 3339.
        starts_at: String,
    },
    /// The product's sale is over.
    #[error("the sale of product {product_id} ended at {ended_at}")]
    SaleEnded {
        /// The product asked for.
        product_id: i64,
        /// When its sale ended, RFC 3339.
        ended_at: String,
    },
    /// The product limits what one customer may take, so a hold needs a customer token.
    #[error("product {0} is limited per customer: a hold needs a customer token")]
    CustomerTokenRequired(i64),
    /// The hold would take the customer past the product's limit per customer.
    #[error(
        "product {product_id} allows {limit} unit(s) per customer; you already have {has}, \
         so {requested} more would pass the limit"
    )]
    CustomerLimitReached {
        /// The product asked for.
        product_id: i64,
        /// Its `max_per_customer`.
        limit: i64,
        /// Units the customer holds or has ordered now.
        has: i64,
        /// Units asked for.
        requested: i64,
    },
    /// The Idempotency-Key was first used with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// A field is missing, has the wrong type or is out of range.
    #[error("{field}: {message}")]
    Validation {
        /// The offending field, as the client named it.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The admin token is missing or wrong, or no admin token is configured.
    #[error("missing or wrong admin token")]
    Unauthorized,
    /// A webhook's signature is missing, malformed, stale or wrong.
    #[error("{0}")]
    InvalidSignature(&'static str),
    /// The database could not serve the request in time; nothing of it was written.
    #[error("{0}")]
    Unavailable(&'static str),
    /// This process already serves as many live stock streams as it may.
    #[error("this server already streams to {0} subscribers; retry later or elsewhere")]
    TooManySubscribers(usize),
    /// The request's writes may or may not have been committed: its commit failed, or its
    /// transaction did not end in time. Never "unavailable", which promises that nothing
    /// was written.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// An unexpected failure met by another request of the same transaction, where it was
    /// logged in full; this is its description.
    #[error("{0}")]
    Internal(String),
    /// The database refused a statement, or could not be reached.
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

    /// Not enough stock: `requested` units of `product_id` asked for, `available` free.
    pub fn insufficient_stock(product_id: i64, requested: i64, available: i64) -> Self {
        Self::InsufficientStock {
            product_id,
            requested,
            available,
        }
    }

    /// `true` when the request may succeed if tried again later, nothing of it having
    /// been written: the answer is "retry later".
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::TooManySubscribers(_) => true,
            Self::Database(db) => database_unavailable(db),
            _ => false,
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
            Self::HoldReleased(_) => "hold_released",
            Self::HoldOrdered(_) => "hold_ordered",
            Self::HoldPaid(_) => "hold_paid",
            Self::OrderPaid(_) => "order_paid",
            Self::StockCommitted { .. } => "stock_committed",
            Self::RefundNotFound(_) => "refund_not_found",
            Self::SaleNotStarted { .. } => "sale_not_started",
            Self::SaleEnded { .. } => "sale_ended",
            Self::CustomerTokenRequired(_) => "customer_token_required",
            Self::CustomerLimitReached { .. } => "customer_limit_reached",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::Validation { .. } => "validation_error",
            Self::Unauthorized => "unauthorized",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::Unavailable(_) => "database_unavailable",
            Self::TooManySubscribers(_) => "too_many_subscribers",
            Self::Database(db) if database_unavailable(db) => "database_unavailable",
            Self::OutcomeUnknown(_) | Self::Internal(_) | Self::Database(_) => "internal_error",
        }
    }
}

/// `true` when the error says the database could not serve the statement now (it could
/// not be reached, went away, is shutting down or starting, or a lock or connection was
/// not had in time), rather than that it refused it: the request may succeed later, so
/// it is a 503. The transaction it ran in is rolled back either way.
pub fn database_unavailable(e: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match e {
        DbErr::ConnectionAcquire(_) => true,
        DbErr::Conn(RuntimeErr::SqlxError(inner))
        | DbErr::Exec(RuntimeErr::SqlxError(inner))
        | DbErr::Query(RuntimeErr::SqlxError(inner)) => match inner.as_ref() {
            Sqlx::Io(_)
            | Sqlx::PoolTimedOut
            | Sqlx::PoolClosed
            | Sqlx::WorkerCrashed
            | Sqlx::Protocol(_) => true,
            Sqlx::Database(db) => db.code().is_some_and(|code| {
                match db.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>() {
                    Some(_) => transient_sqlstate(&code),
                    None => code.parse().is_ok_and(transient_sqlite_code),
                }
            }),
            _ => false,
        },
        DbErr::Conn(_) => true,
        _ => false,
    }
}

/// `true` for the PostgreSQL SQLSTATEs that mean "not now" rather than "never": classes
/// 08 (connection exception), 53 (insufficient resources) and 57P (shutting down,
/// starting up, terminated by an administrator), 55P03 (a lock not had within
/// `lock_timeout`) and 57014 (statement cancelled).
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code == "55P03"
        || code == "57014"
}

/// `true` for SQLite's BUSY and LOCKED (primary codes 5 and 6, with any extended code).
fn transient_sqlite_code(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

/// Result of a service operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::{transient_sqlite_code, transient_sqlstate};

    #[test]
    fn codes_that_mean_not_now_are_transient() {
        for code in [
            "57P01", "57P02", "57P03", "08006", "08001", "53300", "55P03", "57014",
        ] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in [5, 6, 261, 517, 773] {
            assert!(transient_sqlite_code(code), "SQLite {code}");
        }
    }

    #[test]
    fn codes_that_mean_never_are_not_transient() {
        for code in ["23505", "23503", "22003", "42P01", "40P01"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        for code in [1, 19, 2067, 1555] {
            assert!(!transient_sqlite_code(code), "SQLite {code}");
        }
    }
}
