//! The two macros every black-box test file starts from: one test per back end, and a
//! fresh database with the API running on it.

/// Declares each listed `async fn name(backend: Backend)` as a test on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Opens a fresh database for `backend` and starts the API on it, or returns from the test
/// (skipping it) when PostgreSQL is unreachable outside CI.
#[macro_export]
macro_rules! setup {
    ($backend:expr) => {
        $crate::setup!($backend, &[])
    };
    ($backend:expr, $env:expr) => {{
        let Some(db) = $crate::TestDb::new($backend).await else {
            return;
        };
        let app = $crate::TestApp::spawn(&db, $env).await;
        (db, app)
    }};
}
