//! Live stock: `GET /api/products/{id}/stream` answers the product at once and again on
//! every change, whoever made it (this process, another one, the clock), coalesced, and
//! ends cleanly when the server stops.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    Backend, ProductStream, TestApp, hold_id, on_both_backends, rfc3339, setup, unix_now,
};

on_both_backends!(
    a_stream_starts_with_the_product_and_follows_each_change,
    an_unknown_product_has_no_stream,
    changes_made_by_another_process_reach_the_stream_within_a_second,
    an_expiring_hold_and_a_starting_sale_are_pushed_without_any_request,
    a_burst_of_changes_is_coalesced_and_ends_on_the_latest_value,
    a_subscriber_that_never_reads_does_not_hold_back_the_others,
    the_stream_keeps_a_quiet_connection_open_with_comments,
    streams_end_and_the_server_exits_cleanly_on_sigterm,
    open_streams_are_counted_in_the_metrics,
    streams_past_the_limit_are_refused_until_one_ends,
);

/// Bound on a change reaching a subscriber: the SPEC's one second, with room for a slow
/// test machine (the design's own bound is one poll, 500 ms, plus one load).
const WITHIN: Duration = Duration::from_secs(2);

/// Opens product `product`'s stream, asserting 200.
async fn open(app: &TestApp, product: i64) -> ProductStream {
    match app.stream(&product.to_string()).await {
        Ok(s) => s,
        Err(r) => panic!("stream refused: {} {}", r.status, r.body),
    }
}

/// Reads events until one shows `available` units, within [`WITHIN`].
async fn until_available(stream: &mut ProductStream, available: i64) -> Value {
    stream
        .until(WITHIN, |p| p["available_stock"] == available)
        .await
        .unwrap_or_else(|| panic!("no event with available_stock {available}"))
        .data
}

/// `PATCH /api/admin/products/{product}` with `body`, asserting 200.
async fn patch(app: &TestApp, product: i64, body: &Value) {
    let r = app.patch_product(product, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn a_stream_starts_with_the_product_and_follows_each_change(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(10, 500).await;
    let mut stream = open(&app, product).await;
    assert!(
        stream.content_type.starts_with("text/event-stream"),
        "{}",
        stream.content_type
    );
    let first = stream
        .next_product(Duration::from_secs(1))
        .await
        .expect("the first event at once");
    assert_eq!(first.data, app.product_json(product).await);

    let hold = hold_id(&app.hold_as(None, product, 3, None).await);
    assert_eq!(until_available(&mut stream, 7).await["total_stock"], 10);
    let released = app
        .request(Method::DELETE, &format!("/api/holds/{hold}"), None, &[])
        .await;
    assert_eq!(released.status, 200, "{}", released.body);
    until_available(&mut stream, 10).await;

    patch(
        &app,
        product,
        &json!({"name": "Renamed drop", "total_stock": 12}),
    )
    .await;
    let changed = stream
        .until(WITHIN, |p| p["name"] == "Renamed drop")
        .await
        .expect("the settings change is pushed");
    assert_eq!(changed.data["available_stock"], 12);
    assert_eq!(changed.data, app.product_json(product).await);
}

async fn an_unknown_product_has_no_stream(backend: Backend) {
    let (_db, app) = setup!(backend);
    let Err(missing) = app.stream("999999").await else {
        panic!("a stream for a product that does not exist");
    };
    missing.assert_error(404, "product_not_found");
    let Err(bad) = app.stream("abc").await else {
        panic!("a stream for an id that does not parse");
    };
    bad.assert_error(400, "invalid_parameter");
}

async fn changes_made_by_another_process_reach_the_stream_within_a_second(backend: Backend) {
    let (_db, app) = setup!(backend);
    let other = TestApp::spawn_url(&app.db_url, &[]).await;
    let product = app.create_product(20, 500).await;
    let mut stream = open(&app, product).await;
    stream.next_product(WITHIN).await.expect("first event");

    // A hold, then a restock, made through the other process only.
    hold_id(&other.hold_as(None, product, 5, None).await);
    until_available(&mut stream, 15).await;
    patch(&other, product, &json!({"total_stock": 30})).await;
    let restocked = until_available(&mut stream, 25).await;
    assert_eq!(restocked["total_stock"], 30);
}

async fn an_expiring_hold_and_a_starting_sale_are_pushed_without_any_request(backend: Backend) {
    let (_db, app) = setup!(backend, &[("HOLD_TTL_SECS", "3")]);
    let product = app.create_product(4, 500).await;
    hold_id(&app.hold_as(None, product, 4, None).await);
    let mut stream = open(&app, product).await;
    let first = stream.next_product(WITHIN).await.expect("first event");
    assert_eq!(first.data["available_stock"], 0, "{}", first.data);
    // No worker runs and nothing is asked: only the clock moves.
    let back = stream
        .until(Duration::from_secs(3) + WITHIN, |p| {
            p["available_stock"] == 4
        })
        .await
        .expect("the expired hold's units are pushed back");
    assert_eq!(back.data["total_stock"], 4);

    let starts = unix_now() + 4;
    let upcoming = app
        .create_sale_product(json!({
            "name": "Opens soon", "price_cents": 100, "total_stock": 3,
            "sale_starts_at": rfc3339(starts),
        }))
        .await;
    let mut stream = open(&app, upcoming).await;
    let first = stream.next_product(WITHIN).await.expect("first event");
    assert_eq!(first.data["sale_state"], "upcoming", "{}", first.data);
    let live = stream
        .until(Duration::from_secs(4) + WITHIN, |p| {
            p["sale_state"] == "live"
        })
        .await
        .expect("the sale's start is pushed");
    assert!(unix_now() >= starts, "live before its start: {}", live.data);
}

async fn a_burst_of_changes_is_coalesced_and_ends_on_the_latest_value(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(100, 500).await;
    let mut stream = open(&app, product).await;
    stream.next_product(WITHIN).await.expect("first event");
    // 40 one-unit holds spread over about two seconds, read as they come.
    let changes = async {
        let started = std::time::Instant::now();
        for _ in 0..40 {
            hold_id(&app.hold_as(None, product, 1, None).await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        started.elapsed()
    };
    let reading = async {
        let mut events = Vec::new();
        while let Some(e) = stream.next_product(Duration::from_secs(3)).await {
            let done = e.data["available_stock"] == 60;
            events.push(e);
            if done {
                break;
            }
        }
        events
    };
    let (took, events) = tokio::join!(changes, reading);
    assert_eq!(
        events.last().map(|e| e.data["available_stock"].clone()),
        Some(json!(60)),
        "the stream does not end on the latest value"
    );
    for pair in events.windows(2) {
        let gap = pair[1].at - pair[0].at;
        // The server spaces them by 200 ms; reading may bunch them by a few ms.
        assert!(
            gap >= Duration::from_millis(150),
            "two events {gap:?} apart"
        );
    }
    let most = took.as_millis() / 200 + 3;
    assert!(
        (events.len() as u128) <= most,
        "{} events in {took:?}: not coalesced",
        events.len()
    );
    assert!(
        events.len() >= 3,
        "{} events for changes over {took:?}: the stream does not follow them",
        events.len()
    );
}

async fn a_subscriber_that_never_reads_does_not_hold_back_the_others(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(1_000, 500).await;
    // A raw connection that asks for the stream and never reads a byte.
    let mut stuck = tokio::net::TcpStream::connect(&app.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /api/products/{product}/stream HTTP/1.1\r\nHost: {}\r\n\r\n",
        app.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut stuck, request.as_bytes())
        .await
        .expect("send");
    let mut reader = open(&app, product).await;
    reader.next_product(WITHIN).await.expect("first event");
    let mut expected = 1_000;
    for _ in 0..10 {
        hold_id(&app.hold_as(None, product, 7, None).await);
        expected -= 7;
        until_available(&mut reader, expected).await;
    }
    drop(stuck);
}

async fn the_stream_keeps_a_quiet_connection_open_with_comments(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(5, 500).await;
    let mut stream = open(&app, product).await;
    stream.next_product(WITHIN).await.expect("first event");
    let next = stream
        .next(Duration::from_secs(17))
        .await
        .expect("something within 15 s of silence");
    assert!(next.is_comment(), "an event with nothing changed: {next:?}");
}

async fn streams_end_and_the_server_exits_cleanly_on_sigterm(backend: Backend) {
    let (_db, mut app) = setup!(backend);
    let product = app.create_product(5, 500).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = open(&app, product).await;
        s.next_product(WITHIN).await.expect("first event");
        streams.push(s);
    }
    let started = std::time::Instant::now();
    assert!(app.terminate(), "a clean exit");
    // Well inside the 30 s grace for requests in flight: the streams did not wait for it.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        started.elapsed()
    );
    for mut s in streams {
        assert!(
            s.ends_within(Duration::from_secs(1)).await,
            "a stream lives on"
        );
    }
}

async fn open_streams_are_counted_in_the_metrics(backend: Backend) {
    let (_db, app) = setup!(backend);
    let product = app.create_product(1_000, 500).await;
    assert_eq!(app.metric("flashsale_live_subscribers").await, 0.0);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = open(&app, product).await;
        s.next_product(WITHIN).await.expect("first event");
        streams.push(s);
    }
    assert_eq!(app.metric("flashsale_live_subscribers").await, 3.0);
    let events = app.metric("flashsale_live_events_total").await;
    streams.truncate(1);
    // A server notices a subscriber has gone when it next writes to it: an event, or the
    // keep-alive comment. Changes make it write.
    assert!(
        testkit::eventually(Duration::from_secs(5), || async {
            hold_id(&app.hold_as(None, product, 1, None).await);
            app.metric("flashsale_live_subscribers").await == 1.0
        })
        .await,
        "closed streams are still counted"
    );
    assert!(
        app.metric("flashsale_live_events_total").await > events,
        "changes published no event"
    );
}

async fn streams_past_the_limit_are_refused_until_one_ends(backend: Backend) {
    let (_db, app) = setup!(backend, &[("LIVE_MAX_SUBSCRIBERS", "2")]);
    let product = app.create_product(50, 500).await;
    let mut first = open(&app, product).await;
    first.next_product(WITHIN).await.expect("first event");
    let _second = open(&app, product).await;
    let Err(refused) = app.stream(&product.to_string()).await else {
        panic!("a third stream past LIVE_MAX_SUBSCRIBERS=2");
    };
    refused.assert_error(503, "too_many_subscribers");
    // Other requests are served as usual.
    assert_eq!(
        app.get(&format!("/api/products/{product}")).await.status,
        200
    );

    drop(first);
    // The server notices the closed stream at its next write: changes make it write.
    assert!(
        testkit::eventually(Duration::from_secs(5), || async {
            hold_id(&app.hold_as(None, product, 1, None).await);
            app.stream(&product.to_string()).await.is_ok()
        })
        .await,
        "a place freed by a closed stream is not given again"
    );
}
