//! The worker's small HTTP server, on `METRICS_BIND`: `GET /metrics` (Prometheus) and
//! `GET /ready` (200 while the job workers run, 503 while they are down).

use anyhow::Context;
use listener::{ConnectionTimeouts, TimedAcceptor};
use poem::{
    EndpointExt, Route, Server, get, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpAcceptor, TcpListener},
    web::Data,
};

use crate::Liveness;

/// Listens on `addr` (`METRICS_BIND`), or says in one line why it cannot.
pub async fn bind(addr: &str) -> anyhow::Result<TcpAcceptor> {
    let acceptor = TcpListener::bind(addr.to_owned())
        .into_acceptor()
        .await
        .with_context(|| {
            format!(
                "cannot listen on {addr} (METRICS_BIND / --metrics-bind; set it to a free \
                 address of this host)"
            )
        })?;
    let bound = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().map(ToString::to_string))
        .unwrap_or_else(|| addr.to_owned());
    tracing::info!(addr = %bound, "worker metrics listening");
    Ok(acceptor)
}

/// Serves `GET /metrics` and `GET /ready` on `acceptor` in the background.
pub fn serve(acceptor: TcpAcceptor, liveness: Liveness) {
    let routes = Route::new()
        .at("/metrics", get(metrics))
        .at("/ready", get(ready))
        .data(liveness);
    // The API's default timeouts: a scraper needs far less.
    let acceptor = TimedAcceptor::new(acceptor, ConnectionTimeouts::default());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(routes));
}

#[handler]
fn metrics() -> String {
    service::metrics::metrics().render()
}

#[handler]
fn ready(liveness: Data<&Liveness>) -> (StatusCode, &'static str) {
    if liveness.is_up() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "job workers down")
    }
}
