//! Connecting, migrating, and the one way to open a write transaction.

use std::{sync::Arc, time::Duration};

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
    pub conn: DatabaseConnection,
    /// SQLite only: lets one transaction of this process write at a time, so our own
    /// writers queue in order here instead of spinning in SQLite's busy handler.
    write_gate: Option<Arc<Mutex<()>>>,
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
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

impl Db {
    /// Opens a pool on `cfg.database_url`.
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, DbErr> {
        let mut opt = ConnectOptions::new(cfg.database_url.clone());
        opt.max_connections(cfg.db_max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(|o| {
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        let conn = Database::connect(opt).await?;
        let write_gate =
            (conn.get_database_backend() == DbBackend::Sqlite).then(|| Arc::new(Mutex::new(())));
        Ok(Self { conn, write_gate })
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// Applies pending migrations; safe when several processes start at once.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        match self.backend() {
            DbBackend::Postgres => {
                use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _};
                // The lock is held on a connection of its own, outside the pool: the
                // migrations need pool connections meanwhile, and a pool of one would wait
                // for the lock's connection for ever.
                let pool = self.conn.get_postgres_connection_pool();
                let mut lock_conn = pool.connect_options().connect().await.map_err(sqlx_err)?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut lock_conn)
                    .await
                    .map_err(sqlx_err)?;
                let result = match Migrator::up(&self.conn, None).await {
                    Ok(()) => crate::jobs::setup(self).await,
                    Err(e) => Err(e),
                };
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(MIGRATION_LOCK_KEY)
                    .execute(&mut lock_conn)
                    .await
                    .map_err(sqlx_err)?;
                lock_conn.close().await.map_err(sqlx_err)?;
                result
            }
            _ => {
                // SQLite has no advisory locks; every create is IF NOT EXISTS, so a process
                // that loses the race fails on the migration record and simply re-checks.
                let mut attempt = 0;
                loop {
                    let result = match Migrator::up(&self.conn, None).await {
                        Ok(()) => crate::jobs::setup(self).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => return Ok(()),
                        Err(e) => {
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
                }
            }
        }
    }

    /// SQLite only: waits for this process's turn to write outside a [`WriteTxn`].
    pub async fn write_gate(&self) -> Option<OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// Begins a transaction that is going to write.
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        let gate = self.write_gate().await;
        let txn = self
            .conn
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            })
            .await?;
        Ok(WriteTxn { txn, _gate: gate })
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

    /// `true` when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        let stmt = sea_orm::Statement::from_string(self.backend(), "SELECT 1");
        tokio::time::timeout(Duration::from_secs(2), self.conn.execute_raw(stmt))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

fn sqlx_err(e: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Custom(format!("migration lock: {e}"))
}
