//! Demo mode over HTTP: the storefront's files, its shopper tokens and test payments, the
//! two demo products (one limited per customer, one for the README's anonymous tour), and
//! none of it without `--demo`. The page itself is driven in a real browser in
//! `storefront`.

use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    Backend, RSA_PUBLIC_KEY_FILE, Reply, TestApp, bearer, bin, hold_id, on_both_backends, order_id,
    setup,
};

on_both_backends!(
    without_demo_the_home_page_is_the_documentation_and_demo_routes_do_not_exist,
    the_demo_serves_its_storefront_for_the_limited_product_and_keeps_product_1_open,
    a_demo_shopper_reserves_orders_pays_and_meets_the_limit,
    a_demo_payment_needs_the_shoppers_own_token_and_a_well_formed_body,
);

/// Environment of a server in demo mode (no customer key: the demo makes its own).
const DEMO: [(&str, &str); 1] = [("DEMO", "1")];

/// `GET path` without following redirects: `(status, Location)`.
async fn get_unfollowed(app: &TestApp, path: &str) -> (u16, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = client.get(app.url(path)).send().await.expect("sent");
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (resp.status().as_u16(), location)
}

/// `POST /demo/shopper`: a new shopper's `(customer_id, token)`.
async fn shopper(app: &TestApp) -> (String, String) {
    let r = app.post("/demo/shopper", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let field = |f: &str| r.body[f].as_str().expect(f).to_owned();
    (field("customer_id"), field("token"))
}

/// `POST /demo/payments` with `body`, as the holder of `token` if any.
async fn demo_pay(app: &TestApp, token: Option<&str>, body: &Value) -> Reply {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    app.request(Method::POST, "/demo/payments", Some(body), &headers)
        .await
}

async fn without_demo_the_home_page_is_the_documentation_and_demo_routes_do_not_exist(
    backend: Backend,
) {
    let (_db, app) = setup!(backend);
    let (status, location) = get_unfollowed(&app, "/").await;
    assert_eq!((status, location.as_deref()), (303, Some("/docs")));
    for (method, path) in [
        (Method::POST, "/demo/shopper"),
        (Method::POST, "/demo/payments"),
        (Method::GET, "/demo/storefront.js"),
    ] {
        let r = app.request(method, path, Some(&json!({})), &[]).await;
        r.assert_error(404, "not_found");
    }
    let products = app.get("/api/products").await;
    assert_eq!(
        products.body["items"],
        json!([]),
        "products seeded without --demo"
    );
}

async fn the_demo_serves_its_storefront_for_the_limited_product_and_keeps_product_1_open(
    backend: Backend,
) {
    let (_db, app) = setup!(backend, &DEMO);
    let open = app.get("/api/products/1").await;
    assert_eq!(open.body["name"], "Limited sneaker drop", "{}", open.body);
    assert_eq!(open.body["max_per_customer"], Value::Null);
    let limited = app.get("/api/products/2").await;
    assert_eq!(limited.body["max_per_customer"], 2, "{}", limited.body);

    let page = app.client.get(app.url("/")).send().await.expect("sent");
    assert_eq!(page.status(), 200);
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    assert!(header("content-security-policy").contains("default-src 'self'"));
    let html = page.text().await.expect("page");
    assert!(html.contains(r#"data-product="2""#), "{html}");
    for (path, kind) in [
        ("/demo/storefront.js", "text/javascript"),
        ("/demo/storefront.css", "text/css"),
    ] {
        let r = app.client.get(app.url(path)).send().await.expect("sent");
        assert_eq!(r.status(), 200, "{path}");
        let ct = r.headers()["content-type"]
            .to_str()
            .expect("text")
            .to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }

    // The README's tour: anonymous requests on product 1 work as before.
    assert_eq!(app.hold_as(None, 1, 2, None).await.status, 201);
    app.hold_as(None, 2, 1, None)
        .await
        .assert_error(401, "customer_token_required");
}

async fn a_demo_shopper_reserves_orders_pays_and_meets_the_limit(backend: Backend) {
    let (_db, app) = setup!(backend, &DEMO);
    let (customer, token) = shopper(&app).await;
    assert!(customer.starts_with("shopper-"), "{customer}");
    let (_, other) = shopper(&app).await;
    assert_ne!(token, other, "two shoppers got one token");

    let hold = hold_id(&app.hold_as(Some(&token), 2, 2, None).await);
    let order = order_id(&app.order_as(Some(&token), hold).await);
    let paid = demo_pay(&app, Some(&token), &json!({"hold_id": hold})).await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["state"], "applied", "{}", paid.body);
    assert_eq!(paid.body["order_id"], order);
    let read = app
        .get_as(Some(&token), &format!("/api/orders/{order}"))
        .await;
    assert_eq!(read.body["status"], "paid", "{}", read.body);
    let again = demo_pay(&app, Some(&token), &json!({"hold_id": hold})).await;
    assert_eq!(again.status, 200);
    assert!(again.replayed(), "a second payment is not a replay");

    app.hold_as(Some(&token), 2, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    assert_eq!(app.hold_as(Some(&other), 2, 2, None).await.status, 201);
}

async fn a_demo_payment_needs_the_shoppers_own_token_and_a_well_formed_body(backend: Backend) {
    let (_db, app) = setup!(backend, &DEMO);
    let (_, token) = shopper(&app).await;
    let (_, stranger) = shopper(&app).await;
    let hold = hold_id(&app.hold_as(Some(&token), 2, 1, None).await);
    let order = order_id(&app.order_as(Some(&token), hold).await);

    let body = json!({"hold_id": hold});
    demo_pay(&app, None, &body)
        .await
        .assert_error(401, "customer_token_required");
    demo_pay(&app, Some("not-a-token"), &body)
        .await
        .assert_error(401, "invalid_token");
    demo_pay(&app, Some(&stranger), &body)
        .await
        .assert_error(404, "hold_not_found");
    demo_pay(&app, Some(&token), &json!({"hold_id": "one"}))
        .await
        .assert_error(422, "validation_error");
    demo_pay(&app, Some(&token), &json!({"hold_id": 999_999}))
        .await
        .assert_error(404, "hold_not_found");
    // An anonymous hold is nobody's: no shopper may pay for it (and so pin it).
    let anonymous = hold_id(&app.hold_as(None, 1, 1, None).await);
    demo_pay(&app, Some(&token), &json!({"hold_id": anonymous}))
        .await
        .assert_error(404, "hold_not_found");
    let released = app
        .request(
            Method::DELETE,
            &format!("/api/holds/{anonymous}"),
            None,
            &[],
        )
        .await;
    assert_eq!(released.body["status"], "released", "{}", released.body);
    // A chunked body has no length to refuse up front: it is cut at 64 KiB as it arrives.
    let auth = bearer(&token);
    app.assert_chunked_refused_413(
        "/demo/payments",
        &vec![b' '; 160 * 1024],
        &[("authorization", &auth)],
    )
    .await;
    let raw = app
        .request_raw(
            Method::POST,
            "/demo/payments",
            Some(b"{not json".to_vec()),
            &[("authorization", &bearer(&token))],
        )
        .await;
    raw.assert_error(400, "invalid_json");
    let read = app
        .get_as(Some(&token), &format!("/api/orders/{order}"))
        .await;
    assert_eq!(
        read.body["status"], "pending",
        "a refused payment changed the order"
    );
    assert_eq!(app.get("/api/products/2").await.body["available_stock"], 49);
}

#[test]
fn the_demo_refuses_to_start_with_only_a_public_customer_key() {
    // It signs its shoppers' tokens, which a public key cannot do: one line saying so.
    let out = std::process::Command::new(bin("flashsale-api"))
        .env_clear()
        .env("DATABASE_URL", "sqlite::memory:")
        .env("BIND", "127.0.0.1:0")
        .env("DEMO", "1")
        .env("CUSTOMER_JWT_PUBLIC_KEY_FILE", RSA_PUBLIC_KEY_FILE)
        .output()
        .expect("run");
    assert!(!out.status.success(), "started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CUSTOMER_JWT_SECRET"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
