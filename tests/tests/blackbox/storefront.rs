//! The demo storefront in a real browser: Debian's headless Chromium through WebDriver,
//! two pages on one demo server, so two shoppers. The stock must move on both pages
//! without a reload while one shopper reserves, releases, orders and pays through the
//! page's own buttons, and the limit per customer must show as the API's message. Runs on
//! SQLite, the newcomer's default; the HTTP side of the demo is tested on both back ends
//! in `demo`.

use std::time::Duration;

use serde_json::json;
use testkit::{Backend, Browser, Page, TestApp, eventually, setup};

/// Environment of a server in demo mode (no customer key: the demo makes its own).
const DEMO: [(&str, &str); 1] = [("DEMO", "1")];
/// A desktop window, in CSS pixels; the README's picture is taken at this size.
const DESKTOP: (u32, u32) = (1280, 900);
/// A phone's viewport, in CSS pixels.
const PHONE: (u32, u32) = (390, 844);
/// How long a stock change may take to show on a page: the stream delivers it within 1 s.
const LIVE: Duration = Duration::from_secs(5);
/// How long a click's requests may take to show their answer.
const ANSWER: Duration = Duration::from_secs(10);
/// The demo's limited product: 50 units, at most 2 per customer.
const STOCK: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shoppers_see_live_stock_as_one_reserves_releases_orders_pays_and_meets_the_limit() {
    let Some(mut browser) = Browser::start().await else {
        return;
    };
    let (_db, app) = setup!(Backend::Sqlite, &DEMO);
    let a = open(&mut browser, &app, "page A", DESKTOP).await;
    let b = open(&mut browser, &app, "page B", PHONE).await;
    assert_ne!(a.text("shopper").await, b.text("shopper").await);

    reserve_and_release(&a, &b).await;
    reserve(&a, 2).await;
    stock_on_both(&a, &b, STOCK - 2).await;
    order_and_pay(&a).await;
    screenshot(&a).await;
    meet_the_limit(&a).await;
    // The limit is per customer: the other shopper still gets theirs, and page A sees it.
    reserve(&b, 2).await;
    stock_on_both(&a, &b, STOCK - 4).await;

    fits_a_phone(&b).await;
    fits_a_phone(&a).await;
    for page in [&a, &b] {
        let same = page.script(STILL_LOADED, vec![]).await;
        assert_eq!(same, json!(true), "a page was reloaded");
    }
    a.close().await;
    b.close().await;
}

/// Opens the storefront of `app` in a new browser as a new shopper, and waits until the
/// page shows the product from the stream and the shopper is signed in.
async fn open(browser: &mut Browser, app: &TestApp, name: &str, size: (u32, u32)) -> Page {
    let page = browser.open(name, &app.url("/"), size).await;
    page.wait_text("stock", &STOCK.to_string(), LIVE, |t| {
        t == STOCK.to_string()
    })
    .await;
    // A person clicks Reserve once it is enabled: the page must know its shopper by then.
    let usable = eventually(ANSWER, || page.enabled("reserve")).await;
    assert!(usable, "{name}: Reserve is still disabled");
    let shopper = page.text("shopper").await;
    assert!(
        shopper.contains("shopper-"),
        "{name}: Reserve is enabled, but {shopper:?}"
    );
    assert_eq!(page.text("name").await, "Court sneaker, flash edition");
    assert_eq!(page.text("price").await, "$89.99");
    assert_eq!(page.text("limit").await, "Limit 2 per customer");
    assert_eq!(page.text("sale-state").await, "On sale now");
    // A mark only this load of the page carries: gone if anything reloads it.
    page.script(MARK_LOADED, vec![]).await;
    page
}

/// Marks the page's window object; [`STILL_LOADED`] finds the mark until a reload.
const MARK_LOADED: &str = "window.flashsaleTestMark = true;";
/// Whether the page is still the load [`MARK_LOADED`] marked.
const STILL_LOADED: &str = "return window.flashsaleTestMark === true;";

/// Reserves `qty` on `page` through its form, and waits for the hold to show.
async fn reserve(page: &Page, qty: u32) {
    page.fill("qty", &qty.to_string()).await;
    page.click("reserve").await;
    page.wait_shown("hold-card", true, ANSWER).await;
    let summary = page.text("hold-summary").await;
    assert!(summary.starts_with(&format!("{qty} ×")), "{summary:?}");
    let timer = page.text("hold-timer").await;
    assert!(is_clock(&timer), "the hold's countdown shows {timer:?}");
}

/// Page A reserves 2 and releases them: both pages follow the stock down and back up.
async fn reserve_and_release(a: &Page, b: &Page) {
    reserve(a, 2).await;
    stock_on_both(a, b, STOCK - 2).await;
    a.click("release").await;
    a.wait_shown("hold-card", false, ANSWER).await;
    a.wait_text("notice", "the release notice", ANSWER, |t| {
        t.starts_with("Released")
    })
    .await;
    stock_on_both(a, b, STOCK).await;
}

/// One more unit on `page`, whose shopper has the limit's 2 units: the API's refusal,
/// which names the limit, shows in `#error`, and no hold is offered.
async fn meet_the_limit(page: &Page) {
    page.fill("qty", "1").await;
    page.click("reserve").await;
    page.wait_shown("error", true, ANSWER).await;
    let refused = page.text("error").await;
    assert!(
        refused.contains("allows 2 unit(s) per customer"),
        "#error shows {refused:?}; expected the limit's message"
    );
    assert!(!page.shown("hold-card").await, "a refused hold is shown");
}

/// Places the order for the hold `page` shows, pays it, and waits for `paid`.
async fn order_and_pay(page: &Page) {
    page.click("order").await;
    page.wait_text("order-status", "pending", ANSWER, |t| t == "pending")
        .await;
    assert!(
        !page.shown("hold-card").await,
        "the ordered hold is still offered"
    );
    page.click("pay").await;
    page.wait_text("order-status", "paid", ANSWER, |t| t == "paid")
        .await;
    assert!(!page.shown("pay").await, "a paid order still offers to pay");
}

/// Waits until both pages show `stock` units available, with no reload.
async fn stock_on_both(a: &Page, b: &Page, stock: u32) {
    let expected = format!("{stock} left (a stream update)");
    for page in [a, b] {
        page.wait_text("stock", &expected, LIVE, |t| t == stock.to_string())
            .await;
    }
}

/// Whether `text` reads as the page's `hh:mm:ss` countdown.
fn is_clock(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Shows `page` at a phone's width, and asserts it needs no horizontal scrolling there.
async fn fits_a_phone(page: &Page) {
    page.resize(PHONE).await;
    let scroll = page
        .script("return document.documentElement.scrollWidth;", vec![])
        .await;
    let scroll = scroll.as_u64().expect("a width in pixels");
    assert!(
        scroll <= u64::from(PHONE.0),
        "the page is {scroll} px wide in a {} px viewport",
        PHONE.0
    );
}

/// Whether nothing on the page is flashing or moving.
const SETTLED: &str =
    "return document.querySelector('.changed') === null && document.getAnimations().length === 0;";

/// Writes what `page` shows to the file `STOREFRONT_SCREENSHOT` names, when it is set (the
/// README's picture is made this way).
async fn screenshot(page: &Page) {
    let Some(path) = std::env::var_os("STOREFRONT_SCREENSHOT") else {
        return;
    };
    // A settled picture: the stock's flash after a change has faded.
    let settled = eventually(LIVE, || async {
        page.script(SETTLED, vec![]).await == json!(true)
    })
    .await;
    assert!(settled, "the page is still animating");
    let png = page.screenshot().await;
    std::fs::write(&path, png)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.to_string_lossy()));
}
