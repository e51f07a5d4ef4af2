//! The HTTP face of flashsale: [`App`] binds, connects and serves the routes of [`http`]
//! over the rules of the `service` crate. `main.rs` is the `flashsale-api` binary; with
//! `--with-worker` it also runs the `worker` crate's loops in the same process.

pub mod config;
pub mod customers;
pub mod demo;
pub mod http;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;

use poem::{
    Server,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
};

use listener::TimedAcceptor;
use service::{Service, db::Db};

use crate::{config::Config, http::AppState};

/// How long in-flight requests get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A bound, migrated, ready-to-serve API.
pub struct App {
    acceptor: TimedAcceptor<TcpAcceptor>,
    local_addr: SocketAddr,
    state: http::State,
    demo: Option<Arc<demo::Demo>>,
}

impl App {
    /// Binds (port 0 works), then connects, migrates and seeds the demo products if asked:
    /// a port that is taken stops the start before the database is touched.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let acceptor = TcpListener::bind(config.bind.as_str())
            .into_acceptor()
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (BIND / --bind; set it to a free address of this host)",
                    config.bind
                )
            })?;
        let mut customers = config.customers.clone();
        let demo_secret = config
            .demo
            .then(|| demo::Demo::shopper_secret(&mut customers))
            .transpose()?;
        let customer_tokens = customers::CustomerTokens::from_config(&customers)?;
        let db = Db::connect(&config.database).await?;
        db.migrate().await?;
        tokio::spawn({
            let db = db.clone();
            async move { db.watch_reachability().await }
        });
        let svc =
            Service::new(db, config.rules.clone()).with_live_limit(config.live_max_subscribers);
        let demo = match demo_secret {
            Some(secret) => Some(Arc::new(
                demo::Demo::start(&svc, &secret, &customers).await?,
            )),
            None => None,
        };
        let state = Arc::new(AppState::new(
            svc,
            config.admin_token.as_deref(),
            config.webhook_secrets(),
            customer_tokens,
        ));
        let local_addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .ok_or_else(|| anyhow::anyhow!("listener has no TCP address"))?;
        Ok(Self {
            acceptor: TimedAcceptor::new(acceptor, config.connection_timeouts()),
            local_addr,
            state,
            demo,
        })
    }

    /// The address the server listens on (the port picked, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The service layer this app serves.
    pub fn service(&self) -> Service {
        self.state.svc.clone()
    }

    /// Serves until `shutdown` resolves, then ends the live stock streams and lets
    /// in-flight requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let live = self.state.svc.live.clone();
        let shutdown = async move {
            shutdown.await;
            live.close();
        };
        Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                http::routes(self.state, self.demo),
                shutdown,
                Some(SHUTDOWN_GRACE),
            )
            .await
    }
}
