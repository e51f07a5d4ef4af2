//! Letting go and the operator: a hold may end `released` (its status column takes the
//! new value as it is), and every payment that must be refunded says why, how much, and
//! when the operator resolved it. Refunds recorded before this migration get their reason
//! and amount from the rows they were decided on.
//!
//! Two partial indexes serve the new questions: the unresolved refunds in the order they
//! were recorded, and a product's pending orders by age (those past their payment
//! deadline are free stock).

use sea_orm_migration::{prelude::*, schema::*, sea_orm::ConnectionTrait};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Payments {
    Table,
    RefundReason,
    RefundCents,
    ResolvedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            string_len_null(Payments::RefundReason, 24),
            big_integer_null(Payments::RefundCents),
            big_integer_null(Payments::ResolvedAtMs),
        ] {
            m.alter_table(
                Table::alter()
                    .table(Payments::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        for sql in [
            // A refund with an order: a double charge when the order was paid (under another
            // key), else the order was cancelled. Without one: a double charge when the hold
            // was paid, else the hold had expired.
            "UPDATE payments SET refund_reason = CASE \
               WHEN order_id IS NOT NULL AND \
                 (SELECT o.status FROM orders o WHERE o.id = payments.order_id) = 'paid' \
                 THEN 'double_charge' \
               WHEN order_id IS NOT NULL THEN 'order_cancelled' \
               WHEN (SELECT h.paid_at_ms FROM holds h WHERE h.id = payments.hold_id) IS NOT NULL \
                 THEN 'double_charge' \
               ELSE 'hold_expired' END, \
             refund_cents = COALESCE( \
               (SELECT o.total_cents FROM orders o WHERE o.id = payments.order_id), \
               (SELECT h.qty * p.price_cents FROM holds h JOIN products p ON p.id = h.product_id \
                 WHERE h.id = payments.hold_id)) \
             WHERE outcome = 'refund_required'",
            "CREATE INDEX idx_payments_open_refunds ON payments (applied_at_ms, idempotency_key) \
             WHERE outcome = 'refund_required' AND resolved_at_ms IS NULL",
            "CREATE INDEX idx_orders_pending_product ON orders (product_id, created_at_ms) \
             WHERE status = 'pending'",
        ] {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, _m: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "letting go cannot be undone: released holds have no earlier status".into(),
        ))
    }
}
