//! A reservation of `qty` units of one product until `expires_at_ms`.

use sea_orm::entity::prelude::*;

/// Lifecycle of a hold. An `active` hold past its expiry and without a recorded payment is
/// expired in every respect; the stored status catches up when it is reclaimed or swept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum HoldStatus {
    /// Reserves its units until `expires_at_ms`.
    #[sea_orm(string_value = "active")]
    Active,
    /// Its units belong to its order now.
    #[sea_orm(string_value = "ordered")]
    Ordered,
    /// Its time ran out unpaid; its units went back to the product.
    #[sea_orm(string_value = "expired")]
    Expired,
    /// Its buyer let it go; its units went back to the product.
    #[sea_orm(string_value = "released")]
    Released,
}

/// A row of `holds`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "holds")]
pub struct Model {
    /// The hold's id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The product it reserves units of.
    pub product_id: i64,
    /// Units reserved.
    pub qty: i64,
    /// Where it is in its lifecycle.
    pub status: HoldStatus,
    /// When it stops reserving, unless ordered or paid first.
    pub expires_at_ms: i64,
    /// Set when a `paid` payment was recorded before the order existed: the hold no longer expires.
    pub paid_at_ms: Option<i64>,
    /// The client's `Idempotency-Key`, unique per customer (anonymous holds sharing one scope).
    #[sea_orm(column_name = "scoped_idempotency_key")]
    pub idempotency_key: Option<String>,
    /// Hash of the request that created the hold, to detect a key reused with another body.
    pub request_hash: Option<String>,
    /// When it was made.
    pub created_at_ms: i64,
    /// The customer it belongs to (a token's `sub`); `None` for an anonymous hold.
    pub customer_id: Option<String>,
    /// The product's `max_per_customer` it was granted under, for the audit: a limit the
    /// operator lowers later does not make an earlier grant a breach.
    pub customer_limit: Option<i64>,
}

/// The product a hold belongs to.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The hold's product.
    #[sea_orm(
        belongs_to = "super::product::Entity",
        from = "Column::ProductId",
        to = "super::product::Column::Id"
    )]
    Product,
}

impl Related<super::product::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Product.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
