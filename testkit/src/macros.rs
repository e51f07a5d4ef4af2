//! The macros black-box test files start from: one test per back end, and a fresh
//! database with the API running on it (directly, or through a proxy that can be cut).

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

/// Like [`setup!`] on PostgreSQL, with the API reaching its database through a
/// [`TcpProxy`](crate::TcpProxy) the test can cut: `(db, proxy, app)`.
#[macro_export]
macro_rules! setup_via_proxy {
    ($env:expr) => {{
        let Some(db) = $crate::TestDb::new($crate::Backend::Postgres).await else {
            return;
        };
        let (proxy, via_proxy) = $crate::TcpProxy::in_front_of(&db.url).await;
        let app = $crate::TestApp::spawn_url(&via_proxy, $env).await;
        (db, proxy, app)
    }};
}
