//! A product on sale. `available` is the stock not held by any hold or order, except that
//! holds which are past `expires_at_ms` but not yet marked `expired` still count against it
//! until they are reclaimed (see the service layer).

use sea_orm::entity::prelude::*;

/// A row of `products`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "products")]
pub struct Model {
    /// The product's id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Its name, as shown.
    pub name: String,
    /// Price of one unit in cents.
    pub price_cents: i64,
    /// Units it has in all: available, held and ordered.
    pub total_stock: i64,
    /// Units no hold or order has taken.
    pub available: i64,
    /// When it was created.
    pub created_at_ms: i64,
    /// Before it, no hold is granted.
    pub sale_starts_at_ms: Option<i64>,
    /// From it on, no hold is granted.
    pub sale_ends_at_ms: Option<i64>,
    /// Most units one customer may hold and have ordered at once.
    pub max_per_customer: Option<i64>,
}

/// The holds of a product.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Its holds.
    #[sea_orm(has_many = "super::hold::Entity")]
    Hold,
}

impl Related<super::hold::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Hold.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
