//! An order made from exactly one hold.

use sea_orm::entity::prelude::*;

/// Lifecycle of an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum OrderStatus {
    /// Waiting for its payment.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Paid: its units are sold.
    #[sea_orm(string_value = "paid")]
    Paid,
    /// Cancelled unpaid: its units went back to the product.
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

/// A row of `orders`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    /// The order's id.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The hold it was made from; one order per hold.
    #[sea_orm(unique)]
    pub hold_id: i64,
    /// The hold's product.
    pub product_id: i64,
    /// Units ordered: the hold's.
    pub qty: i64,
    /// `qty` times the product's price when ordered, in cents.
    pub total_cents: i64,
    /// Where it is in its lifecycle.
    pub status: OrderStatus,
    /// When it was made; its payment deadline counts from here.
    pub created_at_ms: i64,
    /// When its status last changed.
    pub updated_at_ms: i64,
    /// Its hold's customer; `None` when anonymous.
    pub customer_id: Option<String>,
}

/// The hold an order was made from.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The order's hold.
    #[sea_orm(
        belongs_to = "super::hold::Entity",
        from = "Column::HoldId",
        to = "super::hold::Column::Id"
    )]
    Hold,
}

impl Related<super::hold::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Hold.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
