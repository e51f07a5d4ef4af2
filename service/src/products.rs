//! Products: creation and the cached public view.

use std::time::Instant;

use entity::product;
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, PaginatorTrait, Set};

use super::{
    Service, now_ms,
    sales::{SaleSettings, SaleState},
};
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
    /// The product's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Price of one unit, in cents.
    pub price_cents: i64,
    /// Every unit it has: available, held and ordered.
    pub total_stock: i64,
    /// Units a new hold could take right now.
    pub available_stock: i64,
    /// Its sale's window and limit per customer.
    pub sale: SaleSettings,
}

impl ProductView {
    /// The view of `p`, with `available_stock` free.
    fn of(p: product::Model, available_stock: i64) -> Self {
        Self {
            sale: SaleSettings::of(&p),
            id: p.id,
            name: p.name,
            price_cents: p.price_cents,
            total_stock: p.total_stock,
            available_stock,
        }
    }

    /// Where its sale is now, by the clock: a cached view turns at the instant itself.
    pub fn sale_state(&self) -> SaleState {
        self.sale.state(now_ms())
    }
}

/// A validated request to create a product.
#[derive(Debug)]
pub struct NewProduct {
    /// Trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control characters.
    pub name: String,
    /// Price of one unit, 0 to [`MAX_PRICE_CENTS`].
    pub price_cents: i64,
    /// Units for sale, 0 to [`MAX_TOTAL_STOCK`], all available at first.
    pub total_stock: i64,
    /// Its sale's window and limit per customer, checked by [`SaleSettings::parse`].
    pub sale: SaleSettings,
}

impl NewProduct {
    /// Checks every field against its bounds.
    pub fn parse(
        name: &str,
        price_cents: i64,
        total_stock: i64,
        sale: SaleSettings,
    ) -> Result<Self> {
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
            sale,
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
            sale_starts_at_ms: Set(new.sale.starts_at_ms),
            sale_ends_at_ms: Set(new.sale.ends_at_ms),
            max_per_customer: Set(new.sale.max_per_customer),
            ..Default::default()
        }
        .insert(&self.db.conn)
        .await?;
        self.cache.invalidate(model.id);
        self.sales.forget(model.id);
        let available = model.available;
        Ok(ProductView::of(model, available))
    }

    /// Creates the demo product unless some product exists already.
    pub async fn seed_demo(&self) -> Result<Option<ProductView>> {
        if product::Entity::find().count(&self.db.conn).await? > 0 {
            return Ok(None);
        }
        let demo = NewProduct::parse("Limited sneaker drop", 12_999, 100, SaleSettings::default())?;
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
    let overdue = crate::stock::overdue_hold_qty(conn, id, now_ms).await?;
    let available = p.available + overdue;
    Ok(Some(ProductView::of(p, available)))
}
