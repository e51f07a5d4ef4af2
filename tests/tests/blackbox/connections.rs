//! Connections that send nothing, or too slowly, and more connections than the process may
//! hold: the server closes the first, and keeps serving through the last. These are about
//! the HTTP server alone, so they run on SQLite only.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use testkit::{Backend, TestApp, TestDb, eventually, setup, status_of};

/// Short timeouts, so that the tests see them pass (the request timeout must be longer
/// than a hold request may wait for the database, five times `DB_WAIT_SECS`).
const TIMEOUTS: [(&str, &str); 3] = [
    ("HTTP_IDLE_TIMEOUT_SECS", "1"),
    ("HTTP_REQUEST_TIMEOUT_SECS", "6"),
    ("DB_WAIT_SECS", "1"),
];

/// Far longer than any configured timeout: the wait for what would otherwise never happen.
const NEVER: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection (or resets it); what it sent, or `None`
/// when it held the connection open for [`NEVER`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(NEVER, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let (_db, app) = setup!(Backend::Sqlite, &TIMEOUTS);
    let mut idle = TcpStream::connect(&app.addr).await.unwrap();
    let said = read_until_closed(&mut idle).await;
    assert_eq!(
        said.as_deref(),
        Some(""),
        "the idle connection was not closed"
    );
    // A connection that keeps talking is not idle.
    let mut busy = TcpStream::connect(&app.addr).await.unwrap();
    for _ in 0..3 {
        busy.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = busy.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_that_stops_half_way_is_closed_after_the_request_timeout() {
    let (_db, app) = setup!(Backend::Sqlite, &TIMEOUTS);
    let mut slow = TcpStream::connect(&app.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let said = read_until_closed(&mut slow).await;
    assert!(said.is_some(), "the half-sent head held the connection");
    assert!(
        !said.unwrap().contains(" 200 "),
        "an incomplete request was served"
    );
    assert_eq!(app.get("/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_that_stops_half_way_is_answered_or_closed_after_the_request_timeout() {
    let (_db, app) = setup!(Backend::Sqlite, &TIMEOUTS);
    let product = app.create_product(5, 100).await;
    let body = format!(r#"{{"product_id": {product}, "qty": 1}}"#);
    let mut slow = TcpStream::connect(&app.addr).await.unwrap();
    let head = format!(
        "POST /api/holds HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let said = read_until_closed(&mut slow)
        .await
        .expect("the half-sent body held the connection");
    if let Some(status) = said.split(' ').nth(1) {
        assert!(status.starts_with('4'), "answered {said}");
    }
    assert_eq!(app.available(product).await, 5, "nothing was reserved");
}

/// CPU time (user + system) the process `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat format")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_idle_sockets_than_file_descriptors_neither_spin_nor_stop_the_server() {
    // Goal: with its descriptors used up by idle sockets, the server does not spin on the
    // connections waiting to be accepted, and serves again once the sockets go.
    // Method: an open-file limit of 128, 300 idle sockets; count the CPU ticks the
    // process uses for two seconds while they are held (a spinning accept loop burns a
    // core: about 200 ticks).
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let env = [
        ("HTTP_IDLE_TIMEOUT_SECS", "30"),
        ("HTTP_REQUEST_TIMEOUT_SECS", "30"),
    ];
    let app = TestApp::spawn_with_fd_limit(&db, &env, 128).await;
    assert_eq!(app.get("/health").await.status, 200);
    let mut sockets = Vec::new();
    for i in 0..300 {
        let socket = TcpStream::connect(&app.addr).await;
        sockets.push(socket.unwrap_or_else(|e| panic!("connection {i}: {e}")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(app.pid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(app.pid()) - before;
    assert!(used < 40, "{used} CPU ticks in two seconds of exhaustion");
    drop(sockets);
    let health = app.url("/health");
    assert!(
        eventually(Duration::from_secs(20), || async {
            status_of(&health).await == 200
        })
        .await,
        "the server did not serve again"
    );
}
