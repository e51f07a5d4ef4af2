//! A database that exists for one test only: a temporary SQLite file, or
//! `CREATE DATABASE t_<uuid>` on the PostgreSQL at `TEST_DATABASE_URL`.

use std::path::PathBuf;

use sea_orm::ConnectionTrait;

/// Where PostgreSQL tests create their databases, unless `TEST_DATABASE_URL` says otherwise.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The database back end a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a fresh temporary folder.
    Sqlite,
    /// A fresh database on the shared PostgreSQL server.
    Postgres,
}

/// A database that exists for one test only.
pub struct TestDb {
    /// The URL the binaries connect with (`DATABASE_URL`).
    pub url: String,
    pg_admin: Option<(String, String)>,
    _dir: Option<TempDir>,
}

/// A folder removed with everything in it when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestDb {
    /// A fresh, empty database; `None` when PostgreSQL is unreachable and `CI` is unset
    /// (the test is then skipped with a note). With `CI` set, unreachable is a failure.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => Self::postgres().await,
        }
    }

    /// A database file in a fresh temporary folder.
    fn sqlite() -> Self {
        let dir =
            std::env::temp_dir().join(format!("flashsale-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.join("test.db").display());
        Self {
            url,
            pg_admin: None,
            _dir: Some(TempDir(dir)),
        }
    }

    /// A new database `t_<uuid>` beside the one `TEST_DATABASE_URL` names.
    async fn postgres() -> Option<Self> {
        let admin =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let conn = match sea_orm::Database::connect(admin.as_str()).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {admin} is unreachable ({e}); set CI=1 to make this a failure"
                );
                return None;
            }
            Err(e) => panic!("PostgreSQL at {admin} is unreachable and CI is set: {e}"),
        };
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        conn.close().await.ok();
        let (base, _) = admin
            .rsplit_once('/')
            .expect("TEST_DATABASE_URL has a database name");
        Some(Self {
            url: format!("{base}/{name}"),
            pg_admin: Some((admin.clone(), name)),
            _dir: None,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Drop runs inside the test's runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(drop_database(&admin, &name));
                Ok::<_, std::io::Error>(())
            })
            .join();
        }
    }
}

/// Drops database `name` on the server `admin` reaches, whoever is still connected to it.
async fn drop_database(admin: &str, name: &str) {
    if let Ok(conn) = sea_orm::Database::connect(admin).await {
        let _ = conn
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        let _ = conn.close().await;
    }
}
