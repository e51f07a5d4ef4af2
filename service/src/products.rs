//! Products: creation and the cached public view.

use std::time::Instant;

use entity::product;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, Unchanged,
};

use super::{
    Service,
    db::WriteTxn,
    locks::lock_product,
    now_ms,
    sales::{SaleSettings, SaleState},
    stock::{free_again, reclaim_overdue, restock},
};
use crate::{Error, Result};

/// Longest product name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Largest price accepted, in cents (ten billion currency units).
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;
/// The demo storefront product's limit per customer.
pub const DEMO_LIMIT_PER_CUSTOMER: i64 = 2;
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
        Ok(Self {
            name: parse_name(name)?,
            price_cents: check_price(price_cents)?,
            total_stock: check_total_stock(total_stock)?,
            sale,
        })
    }
}

/// A product's name: trimmed, 1 to [`MAX_NAME_CHARS`] characters, no control characters.
fn parse_name(name: &str) -> Result<String> {
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
    Ok(name.to_owned())
}

/// A unit price: 0 to [`MAX_PRICE_CENTS`].
fn check_price(price_cents: i64) -> Result<i64> {
    if !(0..=MAX_PRICE_CENTS).contains(&price_cents) {
        return Err(Error::validation(
            "price_cents",
            format!("must be between 0 and {MAX_PRICE_CENTS}"),
        ));
    }
    Ok(price_cents)
}

/// A product's stock: 0 to [`MAX_TOTAL_STOCK`].
fn check_total_stock(total_stock: i64) -> Result<i64> {
    if !(0..=MAX_TOTAL_STOCK).contains(&total_stock) {
        return Err(Error::validation(
            "total_stock",
            format!("must be between 0 and {MAX_TOTAL_STOCK}"),
        ));
    }
    Ok(total_stock)
}

/// An operator's change to a product: `None` leaves a field as it is; for the sale
/// settings, `Some(None)` clears one.
#[derive(Debug, Default)]
pub struct ProductChange {
    /// A new name.
    pub name: Option<String>,
    /// A new unit price, for orders made from now on.
    pub price_cents: Option<i64>,
    /// A new stock: `available` changes by as much.
    pub total_stock: Option<i64>,
    /// A new start of the sale (Unix milliseconds), or none.
    pub sale_starts_at_ms: Option<Option<i64>>,
    /// A new end of the sale (Unix milliseconds), or none.
    pub sale_ends_at_ms: Option<Option<i64>>,
    /// A new limit per customer, or none.
    pub max_per_customer: Option<Option<i64>>,
}

impl ProductChange {
    /// Checks the fields given against the bounds a new product's have.
    pub fn parse(mut self) -> Result<Self> {
        self.name = self.name.as_deref().map(parse_name).transpose()?;
        self.price_cents = self.price_cents.map(check_price).transpose()?;
        self.total_stock = self.total_stock.map(check_total_stock).transpose()?;
        Ok(self)
    }

    /// The sale settings of `p` with this change applied, checked as a whole (the end
    /// after the start). A limit needs customers to count only when this change sets one.
    fn sale_of(&self, p: &product::Model, customers_known: bool) -> Result<SaleSettings> {
        let now = SaleSettings::of(p);
        let sets_limit = matches!(self.max_per_customer, Some(Some(_)));
        SaleSettings::parse(
            self.sale_starts_at_ms.unwrap_or(now.starts_at_ms),
            self.sale_ends_at_ms.unwrap_or(now.ends_at_ms),
            self.max_per_customer.unwrap_or(now.max_per_customer),
            customers_known || !sets_limit,
        )
    }
}

/// A page of products in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductPage {
    /// The products, their ids above the cursor.
    pub items: Vec<ProductView>,
    /// The cursor of the next page; `None` on the last one.
    pub next_after: Option<i64>,
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

    /// Applies the operator's `change` to product `id`, under its row lock: `total_stock`
    /// and `available` change together, and a reduction larger than the units free now
    /// (counting overdue holds and orders as free) is refused with nothing changed.
    /// `customers_known`: a customer key is configured, so a limit can be set.
    pub async fn update_product(
        &self,
        id: i64,
        change: ProductChange,
        customers_known: bool,
    ) -> Result<ProductView> {
        let txn = self.db.begin_write().await?;
        let Some(p) = lock_product(&*txn, id).await? else {
            txn.rollback().await?;
            return Err(Error::ProductNotFound(id));
        };
        if let Err(refused) = self.change_locked(&txn, &p, &change, customers_known).await {
            txn.rollback().await?;
            return Err(refused);
        }
        self.commit_changing(txn, Some(id)).await?;
        self.sales.forget(id);
        tracing::info!(product_id = id, ?change, "product changed");
        self.product(id).await
    }

    /// The writes of [`update_product`](Self::update_product) once `p` is locked.
    async fn change_locked(
        &self,
        txn: &WriteTxn,
        p: &product::Model,
        change: &ProductChange,
        customers_known: bool,
    ) -> Result<()> {
        let sale = change.sale_of(p, customers_known)?;
        if let Some(total) = change.total_stock {
            self.make_room(txn, p, p.total_stock - total).await?;
            restock(&**txn, p, total).await?;
        }
        product::ActiveModel {
            id: Unchanged(p.id),
            name: Set(change.name.clone().unwrap_or_else(|| p.name.clone())),
            price_cents: Set(change.price_cents.unwrap_or(p.price_cents)),
            sale_starts_at_ms: Set(sale.starts_at_ms),
            sale_ends_at_ms: Set(sale.ends_at_ms),
            max_per_customer: Set(sale.max_per_customer),
            ..Default::default()
        }
        .update(&**txn)
        .await?;
        Ok(())
    }

    /// Makes sure `removed` units of `p` (locked) can be taken out of `available`: when
    /// they are more than it has, overdue holds and orders are reclaimed first; more than
    /// that is 409 `stock_committed` (the caller rolls the reclaims back).
    async fn make_room(&self, txn: &WriteTxn, p: &product::Model, removed: i64) -> Result<()> {
        if removed <= p.available {
            return Ok(());
        }
        let now = now_ms();
        // What the reclaims return, not what a read found: an order paid a moment ago is
        // left alone by its reclaim, and its units are not free.
        let reclaimed = reclaim_overdue(&**txn, p.id, now, self.payment_cutoff_ms(now)).await?;
        let removable = p.available + reclaimed;
        if removed > removable {
            return Err(Error::StockCommitted {
                product_id: p.id,
                removable,
            });
        }
        Ok(())
    }

    /// Up to `limit` products with ids above `after`, in id order, as the public sees them.
    pub async fn products(&self, after: i64, limit: u64) -> Result<ProductPage> {
        let snapshot = self.db.begin_snapshot().await?;
        let mut rows = product::Entity::find()
            .filter(product::Column::Id.gt(after))
            .order_by_asc(product::Column::Id)
            .limit(limit + 1)
            .all(&snapshot)
            .await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).expect("bounded by the API"));
        let ids: Vec<i64> = rows.iter().map(|p| p.id).collect();
        let now = now_ms();
        let free = free_again(&snapshot, &ids, now, self.payment_cutoff_ms(now)).await?;
        snapshot.commit().await?;
        let next_after = more.then(|| ids.last().copied()).flatten();
        let items = rows
            .into_iter()
            .map(|p| {
                let available = p.available + free.get(&p.id).copied().unwrap_or(0);
                ProductView::of(p, available)
            })
            .collect();
        Ok(ProductPage { items, next_after })
    }

    /// Creates the demo's products unless some product exists already: "Limited sneaker
    /// drop" without a limit per customer, for anonymous requests (the README's tour), and
    /// "Court sneaker, flash edition", limited to [`DEMO_LIMIT_PER_CUSTOMER`] units per
    /// customer (the storefront's). Returns what it created.
    pub async fn seed_demo(&self) -> Result<Vec<ProductView>> {
        if product::Entity::find().count(&self.db.conn).await? > 0 {
            return Ok(Vec::new());
        }
        let limited = SaleSettings::parse(None, None, Some(DEMO_LIMIT_PER_CUSTOMER), true)?;
        let products = [
            NewProduct::parse("Limited sneaker drop", 12_999, 100, SaleSettings::default())?,
            NewProduct::parse("Court sneaker, flash edition", 8_999, 50, limited)?,
        ];
        let mut created = Vec::new();
        for new in products {
            created.push(self.create_product(new).await?);
        }
        Ok(created)
    }

    /// The product the demo storefront sells: the first with a limit per customer, else
    /// the first of all; `None` when there is no product.
    pub async fn storefront_product(&self) -> Result<Option<i64>> {
        let first = |limited: bool| {
            let mut q = product::Entity::find().order_by_asc(product::Column::Id);
            if limited {
                q = q.filter(product::Column::MaxPerCustomer.is_not_null());
            }
            q.one(&self.db.conn)
        };
        let found = match first(true).await? {
            Some(p) => Some(p),
            None => first(false).await?,
        };
        Ok(found.map(|p| p.id))
    }

    /// The product as the public sees it, from the cache when fresh.
    pub async fn product(&self, id: i64) -> Result<ProductView> {
        let found = match self.cache.get(id) {
            Ok(hit) => hit,
            Err(ticket) => {
                let loaded_at = Instant::now();
                let found = self.load_product(id).await?;
                self.cache.put(ticket, found.clone(), loaded_at);
                found
            }
        };
        found.ok_or(Error::ProductNotFound(id))
    }

    /// The product as the public sees it, read from the database now.
    pub(crate) async fn load_product(&self, id: i64) -> Result<Option<ProductView>> {
        let snapshot = self.db.begin_snapshot().await?;
        let now = now_ms();
        let cutoff = self.payment_cutoff_ms(now);
        let found = load_product_view(&snapshot, id, now, cutoff).await?;
        snapshot.commit().await?;
        Ok(found)
    }
}

/// Reads product `id` from the database, counting the units of overdue holds, and of
/// orders made at or before `cutoff_ms` and still unpaid, as free.
pub async fn load_product_view(
    conn: &impl ConnectionTrait,
    id: i64,
    now_ms: i64,
    cutoff_ms: i64,
) -> Result<Option<ProductView>> {
    let Some(p) = product::Entity::find_by_id(id).one(conn).await? else {
        return Ok(None);
    };
    let free = free_again(conn, &[id], now_ms, cutoff_ms).await?;
    let available = p.available + free.get(&id).copied().unwrap_or(0);
    Ok(Some(ProductView::of(p, available)))
}
