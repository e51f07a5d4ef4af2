//! Connecting, migrating, and the one way to open a write transaction.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    AccessMode, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, IsolationLevel, SqliteTransactionMode, TransactionOptions, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::config::DatabaseConfig;

/// Arbitrary constant naming the PostgreSQL advisory lock taken around migrations.
const MIGRATION_LOCK_KEY: i64 = 0x666c_6173_6873_616c; // "flashsal"

/// A database handle shared by every request of a process.
#[derive(Clone, Debug)]
pub struct Db {
    /// The pool every statement outside a [`WriteTxn`] runs on.
    pub conn: DatabaseConnection,
    /// SQLite only: lets one transaction of this process write at a time, so our own
    /// writers queue in order here instead of spinning in SQLite's busy handler.
    write_gate: Option<Arc<Mutex<()>>>,
    /// Longest a request waits on the database (`DB_WAIT_SECS`).
    wait: Duration,
    /// Set while [`watch_reachability`](Self::watch_reachability) finds the database
    /// unreachable: requests are then refused at once instead of each waiting `wait`.
    down: Arc<AtomicBool>,
}

/// A transaction that may write. On SQLite it holds the write lock from `BEGIN` on
/// (IMMEDIATE), because SQLite has no row locks and a deferred transaction that reads
/// then writes fails with "database is locked" under concurrency.
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _gate: Option<OwnedMutexGuard<()>>,
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;
    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl WriteTxn {
    /// Commits. A failure here leaves the outcome unknown (the server may have committed
    /// just before the connection failed), so it is never reported as "unavailable,
    /// nothing written": the error says the outcome is unknown, whatever its cause.
    pub async fn commit(self) -> crate::Result<()> {
        self.txn.commit().await.map_err(|e| {
            crate::Error::OutcomeUnknown(format!("commit failed, outcome unknown: {e}"))
        })
    }

    /// Rolls back: nothing of the transaction was written.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

impl Db {
    /// Opens a pool on `cfg.database_url`. A database that cannot be reached is reported
    /// in one sentence naming the setting, the URL (without its password) and what to do.
    pub async fn connect(cfg: &DatabaseConfig) -> anyhow::Result<Self> {
        check_reachable(&cfg.database_url).await?;
        Self::open(cfg).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open the database {} (DATABASE_URL / --database-url): {e}",
                redacted(&cfg.database_url)
            )
        })
    }

    async fn open(cfg: &DatabaseConfig) -> Result<Self, DbErr> {
        let wait = Duration::from_secs(cfg.db_wait_secs);
        let lock_timeout_ms = wait.as_millis();
        let mut opt = ConnectOptions::new(cfg.database_url.clone());
        opt.max_connections(cfg.db_max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(wait)
            .sqlx_logging(false)
            // A statement never waits longer than a request would for a row lock: a stuck
            // transaction turns into a clean 503 and a rollback, not a request that hangs.
            .map_sqlx_postgres_opts(move |o| o.options([("lock_timeout", lock_timeout_ms)]))
            .map_sqlx_sqlite_opts(move |o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(wait)
                    .foreign_keys(true)
            });
        let conn = Database::connect(opt).await?;
        let write_gate =
            (conn.get_database_backend() == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Ok(Self {
            conn,
            write_gate,
            wait,
            down: Arc::default(),
        })
    }

    /// Which database this is: PostgreSQL or SQLite.
    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// Applies pending migrations; safe when several processes start at once.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        match self.backend() {
            DbBackend::Postgres => self.migrate_under_advisory_lock().await,
            _ => self.migrate_with_retries().await,
        }
    }

    /// The migrations, then the job queue's tables.
    async fn migrate_once(&self) -> Result<(), DbErr> {
        match self.backend() {
            DbBackend::Sqlite => {
                let conn = self.sqlite_migration_connection().await?;
                let migrated = Migrator::up(&conn, None).await;
                conn.close().await?;
                migrated?;
            }
            _ => Migrator::up(&self.conn, None).await?,
        }
        crate::jobs::setup(self).await
    }

    /// SQLite: one connection to the same file with foreign-key enforcement off, as SQLite
    /// requires for a migration that rebuilds a table others refer to (the migration checks
    /// the foreign keys itself before it commits). The pragma cannot change inside a
    /// transaction, hence a connection of its own rather than one of the pool's.
    async fn sqlite_migration_connection(&self) -> Result<DatabaseConnection, DbErr> {
        use sea_orm::{SqlxSqliteConnector, sqlx::sqlite::SqlitePoolOptions};
        let opts = (*self.conn.get_sqlite_connection_pool().connect_options())
            .clone()
            .foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| DbErr::Custom(format!("migration connection: {e}")))?;
        Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
    }

    /// PostgreSQL: migrates while holding an advisory lock, so that processes starting
    /// together migrate one after another.
    async fn migrate_under_advisory_lock(&self) -> Result<(), DbErr> {
        use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
        // The lock is held on a connection of its own, outside the pool: the
        // migrations need pool connections meanwhile, and a pool of one would wait
        // for the lock's connection for ever.
        let pool = self.conn.get_postgres_connection_pool();
        let mut lock_conn = pool.connect_options().connect().await.map_err(sqlx_err)?;
        // Another process's migrations may take longer than a request's lock wait:
        // this connection, and only it, waits for the lock as long as they take.
        sqlx::query("SET lock_timeout = 0")
            .execute(&mut lock_conn)
            .await
            .map_err(sqlx_err)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut lock_conn)
            .await
            .map_err(sqlx_err)?;
        let result = self.migrate_once().await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut lock_conn)
            .await
            .map_err(sqlx_err)?;
        lock_conn.close().await.map_err(sqlx_err)?;
        result
    }

    /// SQLite: migrates, and on failure checks again a few times whether another process
    /// has done it meanwhile.
    async fn migrate_with_retries(&self) -> Result<(), DbErr> {
        // SQLite has no advisory locks; every create is IF NOT EXISTS, so a process
        // that loses the race fails on the migration record and simply re-checks.
        let mut attempt = 0;
        loop {
            let Err(e) = self.migrate_once().await else {
                return Ok(());
            };
            attempt += 1;
            if attempt >= 5 {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            if Migrator::get_pending_migrations(&self.conn)
                .await?
                .is_empty()
            {
                return Ok(());
            }
        }
    }

    /// SQLite only: waits for this process's turn to write outside a [`WriteTxn`], at most
    /// as long as for a pool connection.
    pub async fn write_gate(&self) -> Result<Option<OwnedMutexGuard<()>>, DbErr> {
        let Some(gate) = &self.write_gate else {
            return Ok(None);
        };
        match tokio::time::timeout(self.wait, gate.clone().lock_owned()).await {
            Ok(guard) => Ok(Some(guard)),
            Err(_) => Err(DbErr::ConnectionAcquire(
                sea_orm::error::ConnAcquireErr::Timeout,
            )),
        }
    }

    /// Begins a transaction that is going to write.
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let gate = self.write_gate().await?;
        let txn = self
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTxn { txn, _gate: gate })
    }

    /// Longest a request waits on the database (`DB_WAIT_SECS`).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// `true` while the database is known to be unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// PostgreSQL only: checks every [`PROBE_INTERVAL`] on a connection of its own, outside
    /// the pool (a busy pool is not a down database), whether the database answers, and
    /// keeps [`is_down`](Self::is_down) true while it does not. Runs until the process ends.
    pub async fn watch_reachability(&self) {
        if self.backend() != DbBackend::Postgres {
            return;
        }
        let opts = self.conn.get_postgres_connection_pool().connect_options();
        let mut probe = None;
        loop {
            // `None`: the probe cannot tell (a slow answer, or no connection slot left while
            // the pool's own connections may still work); the last verdict stands.
            if let Some(up) = probe_once(&opts, &mut probe).await
                && self.down.swap(!up, Ordering::Relaxed) == up
            {
                match up {
                    true => tracing::info!("the database answers again"),
                    false => tracing::warn!("the database is unreachable: refusing requests"),
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Begins a read-only transaction whose reads all see one snapshot, so that two reads
    /// (a product and its overdue holds) agree. PostgreSQL needs REPEATABLE READ for that;
    /// an SQLite transaction is one snapshot already and takes neither an isolation level
    /// nor an access mode (sea-orm logs a warning for each one asked).
    pub async fn begin_snapshot(&self) -> Result<DatabaseTransaction, DbErr> {
        let options = match self.backend() {
            DbBackend::Postgres => TransactionOptions {
                isolation_level: Some(IsolationLevel::RepeatableRead),
                access_mode: Some(AccessMode::ReadOnly),
                sqlite_transaction_mode: None,
            },
            _ => TransactionOptions::default(),
        };
        self.conn.begin_with_options(options).await
    }

    /// Closes the pool at a clean stop. On SQLite it first folds the write-ahead log into
    /// the database file, so that `flashsale.db` alone holds every committed change.
    pub async fn close(self) {
        if self.backend() == DbBackend::Sqlite {
            let checkpoint = "PRAGMA wal_checkpoint(TRUNCATE)";
            if let Err(e) = self.conn.execute_unprepared(checkpoint).await {
                tracing::warn!(error = %e, "the write-ahead log was not folded into the database");
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the database pool failed");
        }
    }

    /// `true` when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        let stmt = sea_orm::Statement::from_string(self.backend(), "SELECT 1");
        tokio::time::timeout(Duration::from_secs(2), self.conn.execute_raw(stmt))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// PostgreSQL only: one connection attempt before the pool is built, so that a database
/// that is not there fails at once with its real cause (refused, no such database, wrong
/// password) rather than after the pool's wait with "pool timed out".
async fn check_reachable(url: &str) -> anyhow::Result<()> {
    use sea_orm::sqlx::{ConnectOptions as _, Connection as _, postgres::PgConnectOptions};
    if !url.starts_with("postgres") {
        return Ok(());
    }
    let hint = |what: &str| {
        anyhow::anyhow!(
            "cannot connect to the database {} (DATABASE_URL / --database-url): {what}",
            redacted(url)
        )
    };
    let opts: PgConnectOptions = url
        .parse()
        .map_err(|e| hint(&format!("the URL does not parse ({e})")))?;
    let connect = opts.connect();
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Err(_) => Err(hint("no answer within 5 s; is the host reachable?")),
        Ok(Err(e)) => Err(hint(&describe_connect_error(&e))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
    }
}

/// What went wrong connecting, and what to do about it.
fn describe_connect_error(e: &sea_orm::sqlx::Error) -> String {
    use sea_orm::sqlx::Error as Sqlx;
    match e {
        Sqlx::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused; is PostgreSQL running there?".to_owned()
        }
        Sqlx::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!("{}; create it first (createdb)", db.message()),
            Some("28P01" | "28000") => {
                format!("{}; check the user and password in the URL", db.message())
            }
            _ => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// `url` with its password, if any, replaced by `***`: safe for logs and errors.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// How often [`Db::watch_reachability`] checks the database.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// One reachability check on the probe connection, (re)connecting it when needed.
/// `Some(false)` only when the database refused or dropped the connection, or said it is
/// shutting down or starting up; a failed query is retried once on a new connection, so a
/// connection the server closed while idle is not taken for a database that is down.
async fn probe_once(
    opts: &sea_orm::sqlx::postgres::PgConnectOptions,
    probe: &mut Option<sea_orm::sqlx::PgConnection>,
) -> Option<bool> {
    use sea_orm::sqlx::{Connection, PgConnection};
    for _ in 0..2 {
        if probe.is_none() {
            let connect = PgConnection::connect_with(opts);
            match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(conn)) => *probe = Some(conn),
                Ok(Err(e)) => return unreachable(&e).then_some(false),
                Err(_) => return None,
            }
        }
        let conn = probe.as_mut().expect("connected above");
        match tokio::time::timeout(PROBE_TIMEOUT, conn.ping()).await {
            Ok(Ok(())) => return Some(true),
            Ok(Err(_)) => *probe = None,
            Err(_) => {
                *probe = None;
                return None;
            }
        }
    }
    Some(false)
}

/// `true` when connecting failed because the database is not there to answer: refused or
/// dropped, or shutting down or starting up (SQLSTATE class 57P), not merely busy.
fn unreachable(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match e {
        Sqlx::Io(_) | Sqlx::Tls(_) | Sqlx::Protocol(_) => true,
        Sqlx::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// Longest one probe may take before the database counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn sqlx_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Custom(format!("migration lock: {e}"))
}
