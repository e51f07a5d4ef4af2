//! SeaORM entities of flashsale: one module per table, nothing else.
//!
//! Every instant is stored as whole Unix milliseconds in a `BIGINT` column whose name
//! ends in `_ms`: comparisons such as `expires_at_ms <= now` then behave identically on
//! SQLite (which has no timestamp type) and PostgreSQL.

pub mod hold;
pub mod order;
pub mod payment;
pub mod product;
