//! A TCP proxy in front of PostgreSQL, to take the database away from one process (cut
//! or refused connections) without touching the server other tests share.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

/// A TCP proxy in front of PostgreSQL whose connections can be cut, to take the database
/// away from a process without touching the database server other tests share.
pub struct TcpProxy {
    /// The loopback port it listens on.
    pub port: u16,
    target: String,
    cut: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let proxy = Self {
            port,
            target,
            cut: Arc::default(),
            links: Arc::default(),
            accept: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// Forwards every connection `listener` accepts while the proxy is not cut.
    fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (cut, links, target) = (self.cut.clone(), self.links.clone(), self.target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let link = tokio::spawn(forward(inbound, target.clone()));
                links.lock().expect("links").push(link);
            }
        });
        *self.accept.lock().expect("accept") = Some(accept);
    }

    /// A proxy in front of the PostgreSQL database `db_url`, and the URL that reaches the
    /// same database through it.
    pub async fn in_front_of(db_url: &str) -> (Self, String) {
        let (server, name) = db_url.rsplit_once('/').expect("URL names a database");
        let (user, host) = server
            .trim_start_matches("postgres://")
            .rsplit_once('@')
            .expect("URL names a user");
        let proxy = Self::start(host.to_owned()).await;
        let via_proxy = format!("postgres://{user}@127.0.0.1:{}/{name}", proxy.port);
        (proxy, via_proxy)
    }

    /// Drops every open connection and closes new ones as soon as they are accepted.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    /// Like [`cut`](Self::cut), and stops listening too, so that connecting is refused
    /// (`ECONNREFUSED`), as when the database server is stopped or restarting.
    pub fn refuse(&self) {
        self.cut();
        if let Some(accept) = self.accept.lock().expect("accept").take() {
            accept.abort();
        }
    }

    /// Lets connections through again (listening again on the same port if it stopped).
    pub fn restore(&self) {
        if self.accept.lock().expect("accept").is_none() {
            let listener =
                std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("bind proxy again");
            self.serve(listener);
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.refuse();
    }
}

/// Copies bytes both ways between `inbound` and a new connection to `target` until either
/// side closes.
async fn forward(mut inbound: tokio::net::TcpStream, target: String) {
    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    }
}
