//! One payment event per idempotency key, with the answer that was sent for it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PaymentStatus {
    #[sea_orm(string_value = "paid")]
    Paid,
    #[sea_orm(string_value = "failed")]
    Failed,
}

/// What the event did. `None` (NULL) while it waits for its hold's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
pub enum PaymentOutcome {
    /// It decided the order's status.
    #[sea_orm(string_value = "applied")]
    Applied,
    /// It changed nothing: a `failed` after the order was already final.
    #[sea_orm(string_value = "ignored")]
    Ignored,
    /// Money was taken that cannot buy anything: the customer must be refunded.
    #[sea_orm(string_value = "refund_required")]
    RefundRequired,
}

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub idempotency_key: String,
    pub hold_id: i64,
    pub status: PaymentStatus,
    pub request_hash: String,
    /// HTTP status of the first answer, replayed for retries.
    pub response_status: i32,
    /// JSON body of the first answer, replayed for retries.
    pub response_body: String,
    pub outcome: Option<PaymentOutcome>,
    pub order_id: Option<i64>,
    pub applied_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
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
