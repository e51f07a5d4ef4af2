//! Sales: who the customer is, when a product's sale is open, and how many units one
//! customer may have.
//!
//! The window is decided from this process's memory of each product's settings
//! ([`SaleMemory`]), without touching the database, so that the crowd refreshing before the
//! start costs about what `/health` costs. The limit per customer is decided in the
//! reservation's own transaction, under the product's row lock ([`super::holds`]), from one
//! count of the customers' current units ([`customer_units`]).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use entity::{hold::HoldStatus, order::OrderStatus, product};
use sea_orm::{ActiveEnum, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, Statement};

use super::{Service, to_datetime};
use crate::{Error, Result};

/// Longest customer id (a token's `sub`), in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;
/// Largest `max_per_customer` accepted.
pub const MAX_PER_CUSTOMER: i64 = 1_000_000;
/// How long this process believes its memory of a product's settings: changes made by
/// other processes show within this time plus one load.
pub const SETTINGS_TTL: Duration = Duration::from_millis(500);
/// While one request reloads a product's settings, the others go on using the previous
/// ones, up to this long after they were read, instead of each querying the database.
pub const STALE_FOR: Duration = Duration::from_millis(900);
/// Bound on the number of products whose settings are remembered.
const MAX_REMEMBERED: usize = 100_000;

/// A customer: the `sub` of a verified token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CustomerId(String);

impl CustomerId {
    /// `sub` as a customer id: 1 to [`MAX_CUSTOMER_ID_CHARS`] visible ASCII characters,
    /// like idempotency keys; `None` otherwise. Beyond ASCII, "visible" has no short
    /// definition (zero-width and direction characters would let two ids look the same).
    pub fn parse(sub: &str) -> Option<Self> {
        let visible = sub.bytes().all(|b| b.is_ascii_graphic());
        ((1..=MAX_CUSTOMER_ID_CHARS).contains(&sub.len()) && visible).then(|| Self(sub.to_owned()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `owner` (a hold's or order's customer) lets `caller` see it: anonymous ones are
/// anyone's, a customer's only their own.
pub fn may_see(owner: Option<&str>, caller: Option<&CustomerId>) -> bool {
    owner.is_none_or(|owner| caller.is_some_and(|c| c.as_str() == owner))
}

/// Where a product's sale is, by the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleState {
    /// Its start is ahead.
    Upcoming,
    /// Holds are granted.
    Live,
    /// Its end has passed.
    Ended,
}

/// A product's sale settings; each optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaleSettings {
    /// Before it, no hold is granted (Unix milliseconds).
    pub starts_at_ms: Option<i64>,
    /// From it on, no hold is granted (Unix milliseconds).
    pub ends_at_ms: Option<i64>,
    /// Most units one customer may hold and have ordered at once.
    pub max_per_customer: Option<i64>,
}

impl SaleSettings {
    /// The settings stored on `p`.
    pub fn of(p: &product::Model) -> Self {
        Self {
            starts_at_ms: p.sale_starts_at_ms,
            ends_at_ms: p.sale_ends_at_ms,
            max_per_customer: p.max_per_customer,
        }
    }

    /// Checks settings given by the operator. A limit needs customers to count, so it
    /// needs a customer key configured (`customers_known`).
    pub fn parse(
        starts_at_ms: Option<i64>,
        ends_at_ms: Option<i64>,
        max_per_customer: Option<i64>,
        customers_known: bool,
    ) -> Result<Self> {
        if let (Some(start), Some(end)) = (starts_at_ms, ends_at_ms)
            && end <= start
        {
            return Err(Error::validation(
                "sale_ends_at",
                "must be after sale_starts_at",
            ));
        }
        if let Some(max) = max_per_customer {
            if !(1..=MAX_PER_CUSTOMER).contains(&max) {
                return Err(Error::validation(
                    "max_per_customer",
                    format!("must be between 1 and {MAX_PER_CUSTOMER}"),
                ));
            }
            if !customers_known {
                return Err(Error::validation(
                    "max_per_customer",
                    "needs customer tokens: configure CUSTOMER_JWT_SECRET or \
                     CUSTOMER_JWT_PUBLIC_KEY_FILE first",
                ));
            }
        }
        Ok(Self {
            starts_at_ms,
            ends_at_ms,
            max_per_customer,
        })
    }

    /// The sale's state at `now_ms`.
    pub fn state(&self, now_ms: i64) -> SaleState {
        if self.starts_at_ms.is_some_and(|start| now_ms < start) {
            SaleState::Upcoming
        } else if self.ends_at_ms.is_some_and(|end| now_ms >= end) {
            SaleState::Ended
        } else {
            SaleState::Live
        }
    }

    /// Refuses a hold of product `product_id` at `now_ms` that the settings forbid: before
    /// the start, from the end on, or without a customer when the product has a limit.
    pub fn admit(&self, product_id: i64, now_ms: i64, customer: Option<&CustomerId>) -> Result<()> {
        let rfc3339 = |ms: Option<i64>| to_datetime(ms.unwrap_or_default()).to_rfc3339();
        match self.state(now_ms) {
            SaleState::Upcoming => Err(Error::SaleNotStarted {
                product_id,
                starts_at: rfc3339(self.starts_at_ms),
            }),
            SaleState::Ended => Err(Error::SaleEnded {
                product_id,
                ended_at: rfc3339(self.ends_at_ms),
            }),
            SaleState::Live if self.max_per_customer.is_some() && customer.is_none() => {
                Err(Error::CustomerTokenRequired(product_id))
            }
            SaleState::Live => Ok(()),
        }
    }
}

/// One remembered product: its settings (`None`: no such product) and when they were read.
struct Slot {
    value: Option<(Option<SaleSettings>, Instant)>,
    /// When this process last changed the product's settings.
    forgotten_at: Option<Instant>,
    /// A request is reloading them.
    refreshing: bool,
}

/// This process's memory of every product's sale settings, each believed for
/// [`SETTINGS_TTL`] and forgotten at once when this process changes them. When they are
/// due, one request reloads them while the others use the previous ones (for at most
/// [`STALE_FOR`] since they were read), so the crowd before a sale's start costs the
/// database one read per product every half second, not one per request.
#[derive(Default)]
pub struct SaleMemory {
    slots: Mutex<HashMap<i64, Slot>>,
}

impl SaleMemory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Slot>> {
        // Every critical section leaves the map whole: a panic elsewhere cannot corrupt it.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The settings of `id` if read less than [`SETTINGS_TTL`] ago, or less than
    /// [`STALE_FOR`] ago while another request reloads them. `None`: the caller loads them,
    /// and until it is done (see [`Reloading`]) the others use the previous ones.
    fn get(&self, id: i64) -> Option<Option<SaleSettings>> {
        let mut slots = self.lock();
        let slot = slots.get_mut(&id)?;
        if let Some((value, at)) = slot.value {
            let age = at.elapsed();
            if age < SETTINGS_TTL || (slot.refreshing && age < STALE_FOR) {
                return Some(value);
            }
        }
        slot.refreshing = true;
        None
    }

    /// Marks the end of a reload of `id`, successful or not.
    fn reloaded(&self, id: i64) {
        if let Some(slot) = self.lock().get_mut(&id) {
            slot.refreshing = false;
        }
    }

    /// Stores settings read from a load that began at `started`, unless this process
    /// changed them since (the load may have read the older ones).
    fn put(&self, id: i64, value: Option<SaleSettings>, started: Instant) {
        let mut slots = self.lock();
        if slots.len() >= MAX_REMEMBERED && !slots.contains_key(&id) {
            // Dropping an entry also drops when it was forgotten; only stale ones go, and
            // a load older than SETTINGS_TTL could not be newer than such a change anyway.
            drop_stale(&mut slots);
            if slots.len() >= MAX_REMEMBERED || started.elapsed() >= SETTINGS_TTL {
                return;
            }
        }
        let slot = slots.entry(id).or_insert(Slot {
            value: None,
            forgotten_at: None,
            refreshing: false,
        });
        if slot.forgotten_at.is_some_and(|at| at >= started) {
            return;
        }
        slot.value = Some((value, started));
    }

    /// Forgets product `id`'s settings: this process has just changed them. The mark is
    /// kept (making room among stale entries if need be), so that a load that read the
    /// older settings cannot store them afterwards.
    pub fn forget(&self, id: i64) {
        let mut slots = self.lock();
        if slots.len() >= MAX_REMEMBERED && !slots.contains_key(&id) {
            drop_stale(&mut slots);
        }
        slots.insert(
            id,
            Slot {
                value: None,
                forgotten_at: Some(Instant::now()),
                refreshing: false,
            },
        );
    }
}

/// Makes room in a full memory: drops every product not read within [`SETTINGS_TTL`].
fn drop_stale(slots: &mut HashMap<i64, Slot>) {
    slots.retain(|_, s| s.value.is_some_and(|(_, at)| at.elapsed() < SETTINGS_TTL));
}

/// A reload of one product's settings under way; its end, however it ends (stored, failed,
/// or the request dropped), lets the next request reload them.
struct Reloading<'a> {
    memory: &'a SaleMemory,
    id: i64,
}

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        self.memory.reloaded(self.id);
    }
}

impl Service {
    /// Product `product_id`'s sale settings as this process knows them (`None`: no such
    /// product): from memory when fresh (see [`SaleMemory`]), else from the database.
    pub async fn sale_settings(&self, product_id: i64) -> Result<Option<SaleSettings>> {
        if let Some(known) = self.sales.get(product_id) {
            return Ok(known);
        }
        let _reloading = Reloading {
            memory: &self.sales,
            id: product_id,
        };
        let started = Instant::now();
        let found = product::Entity::find_by_id(product_id)
            .one(&self.db.conn)
            .await?
            .map(|p| SaleSettings::of(&p));
        self.sales.put(product_id, found, started);
        Ok(found)
    }
}

/// What counts against a customer's limit, as a condition on a hold's own columns: it still
/// reserves (active, and not past its expiry unless paid). Its values are bound as `$1` and
/// `$2` by [`counted_values`].
pub(crate) const COUNTED_HOLD: &str =
    "status = $1 AND (expires_at_ms > $2 OR paid_at_ms IS NOT NULL)";
/// A hold past its expiry and unpaid, as a condition on the columns of `holds`, with the
/// values of [`counted_values`]: [`COUNTED_HOLD`]'s opposite among active holds.
const OVERDUE_HOLD: &str = "status = $1 AND expires_at_ms <= $2 AND paid_at_ms IS NULL";
/// An order past its payment deadline, as a condition on the columns of `orders`: pending
/// (`$3`), made at or before the cutoff (`$5`), and no payment recorded for its hold before
/// it (that payment wins). The SQL of [`crate::stock::overdue_orders`].
const OVERDUE_ORDER: &str = "status = $3 AND created_at_ms <= $5 AND NOT EXISTS \
     (SELECT 1 FROM holds ph WHERE ph.id = orders.hold_id AND ph.paid_at_ms IS NOT NULL)";
/// What counts against a customer's limit, as a condition on the columns of `orders`: it
/// is paid (`$4`), or pending and not past its payment deadline.
pub(crate) fn counted_order() -> String {
    format!("(status = $4 OR (status = $3 AND NOT ({OVERDUE_ORDER})))")
}

/// The values of `$1` to `$5` in [`COUNTED_HOLD`] and [`counted_order`] at `now_ms`, for
/// orders made at or before `cutoff_ms` being past their deadline.
pub(crate) fn counted_values(now_ms: i64, cutoff_ms: i64) -> Vec<sea_orm::Value> {
    vec![
        HoldStatus::Active.to_value().into(),
        now_ms.into(),
        OrderStatus::Pending.to_value().into(),
        OrderStatus::Paid.to_value().into(),
        cutoff_ms.into(),
    ]
}

/// What [`customer_units`] found.
pub struct Counted {
    /// Units of each customer who has any.
    pub units: HashMap<String, i64>,
    /// The product has holds past their expiry or orders past their payment deadline,
    /// which the count passed over.
    pub overdue: bool,
}

/// Units each of `customers` has of product `product_id` at `now_ms`: their holds that
/// still reserve (active, and not past their expiry unless paid) plus their paid orders
/// and pending ones made after `cutoff_ms` (the others are past their payment deadline).
/// Customers with none are absent. The limit is decided by this count, and
/// [`crate::audit::limit_breaches`] counts every customer the same way. Also says whether
/// the product has overdue holds or orders, which the count passed over. Runs inside the
/// caller's transaction.
pub async fn customer_units(
    conn: &impl ConnectionTrait,
    product_id: i64,
    customers: &[&str],
    now_ms: i64,
    cutoff_ms: i64,
) -> Result<Counted> {
    #[derive(FromQueryResult)]
    struct Units {
        customer_id: String,
        units: i64,
        overdue: bool,
    }
    let backend = conn.get_database_backend();
    let customers = serde_json::to_string(customers).expect("strings serialise");
    // The customers travel as one JSON array, so the statement's text is the same for
    // every group. One correlated sum per customer over that customer's own rows, found
    // by their index: the other conditions sit inside the sums, so that no index of the
    // product or of the status competes for the lookup. Neither planner has statistics
    // on a table that grew since it was last analyzed (the first minute of a sale), and
    // either would otherwise risk reading every active hold once per customer. Whether
    // anything of the product is overdue is asked once, through the product's indexes.
    let customers_of = match backend {
        DbBackend::Postgres => "json_array_elements_text($7::json)",
        _ => "json_each($7)",
    };
    let of_customer = |what: &str, table: &str| {
        format!(
            "(SELECT COALESCE(SUM(CASE WHEN product_id = $6 AND {what} THEN qty END), 0) \
              FROM {table} WHERE customer_id = c.customer_id)"
        )
    };
    let sql = format!(
        "SELECT c.customer_id AS customer_id, CAST({} + {} AS BIGINT) AS units, \
           (EXISTS (SELECT 1 FROM holds WHERE product_id = $6 AND {OVERDUE_HOLD}) \
            OR EXISTS (SELECT 1 FROM orders WHERE product_id = $6 AND {OVERDUE_ORDER})) \
           AS overdue \
         FROM (SELECT DISTINCT value AS customer_id FROM {customers_of}) AS c",
        of_customer(COUNTED_HOLD, "holds"),
        of_customer(&counted_order(), "orders"),
    );
    if backend == DbBackend::Postgres {
        // A plan for this execution: one cached while the table was small would seq-scan.
        conn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await?;
    }
    let mut values = counted_values(now_ms, cutoff_ms);
    values.extend([product_id.into(), customers.into()]);
    let stmt = Statement::from_sql_and_values(backend, sql, values);
    let rows = Units::find_by_statement(stmt).all(conn).await?;
    Ok(Counted {
        overdue: rows.iter().any(|u| u.overdue),
        units: rows
            .into_iter()
            .filter(|u| u.units > 0)
            .map(|u| (u.customer_id, u.units))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_id_is_one_to_128_visible_characters() {
        assert!(CustomerId::parse("user-42").is_some());
        assert!(CustomerId::parse("shopper@example.com").is_some());
        assert!(CustomerId::parse("ünïcode").is_none());
        assert!(CustomerId::parse("zero\u{200b}width").is_none());
        assert!(CustomerId::parse(&"x".repeat(128)).is_some());
        assert!(CustomerId::parse(&"x".repeat(129)).is_none());
        assert!(CustomerId::parse("").is_none());
        assert!(CustomerId::parse("two words").is_none());
        assert!(CustomerId::parse("tab\there").is_none());
    }

    #[test]
    fn the_state_turns_at_the_start_and_at_the_end() {
        let s = SaleSettings {
            starts_at_ms: Some(1_000),
            ends_at_ms: Some(2_000),
            max_per_customer: None,
        };
        assert_eq!(s.state(999), SaleState::Upcoming);
        assert_eq!(s.state(1_000), SaleState::Live);
        assert_eq!(s.state(1_999), SaleState::Live);
        assert_eq!(s.state(2_000), SaleState::Ended);
        assert_eq!(SaleSettings::default().state(0), SaleState::Live);
    }

    #[test]
    fn settings_are_checked() {
        assert!(SaleSettings::parse(Some(2), Some(2), None, true).is_err());
        assert!(SaleSettings::parse(Some(1), Some(2), None, false).is_ok());
        assert!(SaleSettings::parse(None, None, Some(0), true).is_err());
        assert!(SaleSettings::parse(None, None, Some(2), false).is_err());
        assert!(SaleSettings::parse(None, None, Some(2), true).is_ok());
    }

    #[test]
    fn only_the_owner_sees_a_customers_hold() {
        let alice = CustomerId::parse("alice");
        let bob = CustomerId::parse("bob");
        assert!(may_see(None, None));
        assert!(may_see(None, bob.as_ref()));
        assert!(may_see(Some("alice"), alice.as_ref()));
        assert!(!may_see(Some("alice"), bob.as_ref()));
        assert!(!may_see(Some("alice"), None));
    }

    #[test]
    fn one_request_reloads_due_settings_while_the_others_use_the_previous_ones() {
        let memory = SaleMemory::default();
        let read = Instant::now() - SETTINGS_TTL;
        memory.put(1, Some(SaleSettings::default()), read);
        assert_eq!(
            memory.get(1),
            None,
            "the first to find them due reloads them"
        );
        assert_eq!(
            memory.get(1),
            Some(Some(SaleSettings::default())),
            "the others use the previous ones meanwhile"
        );
        memory.reloaded(1);
        assert_eq!(memory.get(1), None, "a failed reload lets the next one try");
        memory.put(2, None, Instant::now() - STALE_FOR);
        assert_eq!(memory.get(2), None);
        assert_eq!(memory.get(2), None, "too old to use even while reloading");
    }

    #[test]
    fn a_load_older_than_a_change_here_is_not_remembered() {
        let memory = SaleMemory::default();
        let started = Instant::now();
        memory.forget(1);
        memory.put(1, None, started);
        assert_eq!(memory.get(1), None, "the older load is dropped");
        memory.put(1, Some(SaleSettings::default()), Instant::now());
        assert_eq!(memory.get(1), Some(Some(SaleSettings::default())));
    }
}
