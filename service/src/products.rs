//! Products: creation, the cached public view, and giving back the stock of overdue holds.

use std::time::Instant;

use entity::{
    hold::{self, HoldStatus},
    product,
};
use sea_orm::{
    ActiveEnum, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, Set,
    sea_query::{Alias, Expr, ExprTrait, Func},
};

use super::{Service, now_ms};
use crate::{Error, Result};

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest price accepted, in cents (ten billion currency units).
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;
/// Largest stock accepted for one product.
pub const MAX_TOTAL_STOCK: i64 = 1_000_000_000;

/// A product as the public API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductView {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub total_stock: i64,
    /// Units a new hold could take right now.
    pub available_stock: i64,
}

/// A validated request to create a product.
#[derive(Debug)]
pub struct NewProduct {
    pub name: String,
    pub price_cents: i64,
    pub total_stock: i64,
}

impl NewProduct {
    /// Checks every field against its bounds.
    pub fn parse(name: &str, price_cents: i64, total_stock: i64) -> Result<Self> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(Error::validation(
                "name",
                format!("must be 1 to {MAX_NAME_CHARS} characters long"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::validation(
                "name",
                "must not contain control characters",
            ));
        }
        if !(0..=MAX_PRICE_CENTS).contains(&price_cents) {
            return Err(Error::validation(
                "price_cents",
                format!("must be between 0 and {MAX_PRICE_CENTS}"),
            ));
        }
        if !(0..=MAX_TOTAL_STOCK).contains(&total_stock) {
            return Err(Error::validation(
                "total_stock",
                format!("must be between 0 and {MAX_TOTAL_STOCK}"),
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            price_cents,
            total_stock,
        })
    }
}

impl Service {
    /// Creates a product with all of its stock available.
    pub async fn create_product(&self, new: NewProduct) -> Result<ProductView> {
        let model = product::ActiveModel {
            name: Set(new.name),
            price_cents: Set(new.price_cents),
            total_stock: Set(new.total_stock),
            available: Set(new.total_stock),
            created_at_ms: Set(now_ms()),
            ..Default::default()
        }
        .insert(&self.db.conn)
        .await?;
        self.cache.invalidate(model.id);
        Ok(ProductView {
            available_stock: model.available,
            id: model.id,
            name: model.name,
            price_cents: model.price_cents,
            total_stock: model.total_stock,
        })
    }

    /// Creates the demo product unless some product exists already.
    pub async fn seed_demo(&self) -> Result<Option<ProductView>> {
        if product::Entity::find().count(&self.db.conn).await? > 0 {
            return Ok(None);
        }
        let demo = NewProduct::parse("Limited sneaker drop", 12_999, 100)?;
        self.create_product(demo).await.map(Some)
    }

    /// The product as the public sees it, from the cache when fresh.
    pub async fn product(&self, id: i64) -> Result<ProductView> {
        let found = match self.cache.get(id) {
            Ok(hit) => hit,
            Err(ticket) => {
                let loaded_at = Instant::now();
                let snapshot = self.db.begin_snapshot().await?;
                let found = load_product_view(&snapshot, id, now_ms()).await?;
                snapshot.commit().await?;
                self.cache.put(ticket, found.clone(), loaded_at);
                found
            }
        };
        found.ok_or(Error::ProductNotFound(id))
    }
}

/// Reads product `id` from the database, counting the stock of overdue holds as free.
pub async fn load_product_view(
    conn: &impl ConnectionTrait,
    id: i64,
    now_ms: i64,
) -> Result<Option<ProductView>> {
    let Some(p) = product::Entity::find_by_id(id).one(conn).await? else {
        return Ok(None);
    };
    let overdue = overdue_hold_qty(conn, id, now_ms).await?;
    Ok(Some(ProductView {
        available_stock: p.available + overdue,
        id: p.id,
        name: p.name,
        price_cents: p.price_cents,
        total_stock: p.total_stock,
    }))
}

/// Conditions of a hold that still says `active` but reserves nothing any more.
fn overdue_holds(product_id: i64, now_ms: i64) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(hold::Column::ProductId.eq(product_id))
        .add(hold::Column::Status.eq(HoldStatus::Active))
        .add(hold::Column::ExpiresAtMs.lte(now_ms))
        .add(hold::Column::PaidAtMs.is_null())
}

/// Units held by overdue holds of `product_id`.
async fn overdue_hold_qty(
    conn: &impl ConnectionTrait,
    product_id: i64,
    now_ms: i64,
) -> Result<i64> {
    // SUM(bigint) is NUMERIC on PostgreSQL: cast it back so it decodes as i64 on both back ends.
    let sum = Expr::from(Func::cast_as(
        Func::sum(Expr::col(hold::Column::Qty)),
        Alias::new("BIGINT"),
    ));
    let total: Option<Option<i64>> = hold::Entity::find()
        .select_only()
        .column_as(sum, "qty")
        .filter(overdue_holds(product_id, now_ms))
        .into_tuple()
        .one(conn)
        .await?;
    Ok(total.flatten().unwrap_or(0))
}

/// Marks the overdue holds of `product_id` expired and returns their units to `available`.
/// Returns the units given back. The caller must already hold the product's row lock
/// (lock order: product before holds).
pub async fn reclaim_overdue_holds(
    conn: &impl ConnectionTrait,
    product_id: i64,
    now_ms: i64,
) -> Result<i64> {
    reclaim(conn, product_id, overdue_holds(product_id, now_ms)).await
}

/// [`reclaim_overdue_holds`] for the holds `hold_ids` of `product_id` only.
pub async fn reclaim_overdue_holds_among(
    conn: &impl ConnectionTrait,
    product_id: i64,
    hold_ids: &[i64],
    now_ms: i64,
) -> Result<i64> {
    let among = overdue_holds(product_id, now_ms).add(hold::Column::Id.is_in(hold_ids.to_vec()));
    reclaim(conn, product_id, among).await
}

/// Marks the holds matching `overdue` expired and gives their units back.
async fn reclaim(
    conn: &impl ConnectionTrait,
    product_id: i64,
    overdue: sea_orm::Condition,
) -> Result<i64> {
    let reclaimed = hold::Entity::update_many()
        .col_expr(
            hold::Column::Status,
            Expr::value(HoldStatus::Expired.to_value()),
        )
        .filter(overdue)
        .exec_with_returning(conn)
        .await?;
    let units: i64 = reclaimed.iter().map(|h| h.qty).sum();
    crate::metrics::metrics()
        .holds
        .with_label_values(&["expired"])
        .inc_by(reclaimed.len() as u64);
    if units > 0 {
        release_stock(conn, product_id, units).await?;
    }
    Ok(units)
}

/// Gives `units` back to product `product_id`'s available stock.
pub async fn release_stock(conn: &impl ConnectionTrait, product_id: i64, units: i64) -> Result<()> {
    assert!(units > 0, "release of {units} units");
    let res = product::Entity::update_many()
        .col_expr(
            product::Column::Available,
            Expr::col(product::Column::Available).add(units),
        )
        .filter(product::Column::Id.eq(product_id))
        .exec(conn)
        .await?;
    assert_eq!(res.rows_affected, 1, "product {product_id} vanished");
    Ok(())
}

/// Locks product `id`'s row (NO KEY UPDATE: foreign-key checks of concurrent inserts
/// take KEY SHARE, which FOR UPDATE would block) and returns it; `None`: no such product.
/// Every transaction that locks a product takes this lock first (the global lock order:
/// product, hold, order). On SQLite the transaction's write lock already covers it.
pub(super) async fn lock_product(
    conn: &impl ConnectionTrait,
    id: i64,
) -> Result<Option<product::Model>> {
    use sea_orm::{QuerySelect, sea_query::LockType};
    Ok(product::Entity::find_by_id(id)
        .lock(LockType::NoKeyUpdate)
        .one(conn)
        .await?)
}
