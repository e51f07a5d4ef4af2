//! One payment event per idempotency key, with the answer that was sent for it.

use sea_orm::entity::prelude::*;

/// What the payment provider says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PaymentStatus {
    /// The customer paid.
    #[sea_orm(string_value = "paid")]
    Paid,
    /// The payment failed.
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

/// Why a payment must be refunded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(24))")]
pub enum RefundReason {
    /// The hold expired unpaid before the payment came.
    #[sea_orm(string_value = "hold_expired")]
    HoldExpired,
    /// The buyer released the hold before the payment came.
    #[sea_orm(string_value = "hold_released")]
    HoldReleased,
    /// The order was cancelled: by its buyer, a failed payment, or its payment deadline.
    #[sea_orm(string_value = "order_cancelled")]
    OrderCancelled,
    /// The hold or its order was already paid under another key.
    #[sea_orm(string_value = "double_charge")]
    DoubleCharge,
}

/// A row of `payments`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    /// The provider's key of the event.
    #[sea_orm(primary_key, auto_increment = false)]
    pub idempotency_key: String,
    /// The hold the event is about.
    pub hold_id: i64,
    /// What the event says.
    pub status: PaymentStatus,
    /// Hash of the event's fields, to detect a key reused with another event.
    pub request_hash: String,
    /// HTTP status of the first answer, replayed for retries.
    pub response_status: i32,
    /// JSON body of the first answer, replayed for retries.
    pub response_body: String,
    /// What it did, once applied.
    pub outcome: Option<PaymentOutcome>,
    /// The order it was applied to.
    pub order_id: Option<i64>,
    /// When it was applied.
    pub applied_at_ms: Option<i64>,
    /// When it was received.
    pub created_at_ms: i64,
    /// Why it must be refunded, when its outcome is `refund_required`.
    pub refund_reason: Option<RefundReason>,
    /// What the refund is worth, in cents: its order's total, or the hold's units at the
    /// price when the refund was decided.
    pub refund_cents: Option<i64>,
    /// When the operator marked the refund done.
    pub resolved_at_ms: Option<i64>,
}

/// The hold a payment is about.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The payment's hold.
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
