//! Sales: customers known by their bearer token, a sale's start and end, and a limit per
//! customer — what a buyer with a bad token, another customer's hold, a crowd before the
//! start and a greedy customer in parallel each get, on SQLite and on PostgreSQL.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use futures::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};
use testkit::{
    Backend, CUSTOMER_ENV, CUSTOMER_SECRET, EC_PUBLIC_KEY_FILE, EC_PUBLIC_PEM, RSA_PUBLIC_KEY_FILE,
    RSA_PUBLIC_PEM, Reply, TestApp, TestDb, TokenKey, assert_audit, audit, bearer, customer_claims,
    customer_token, execute, hold_id, on_both_backends, order_id, query_i64, rfc3339,
    rfc3339_millis, setup, token, unix_now, unsigned_token,
};

on_both_backends!(
    bad_tokens_get_401_invalid_token_on_every_buyer_endpoint_and_write_nothing,
    tokens_get_401_when_no_customer_key_is_configured,
    valid_tokens_are_accepted_within_the_leeway_and_with_claims_nobody_checks,
    tokens_before_their_nbf_are_refused_beyond_the_leeway,
    rs256_tokens_verify_with_an_rsa_public_key_and_forgeries_do_not,
    es256_tokens_verify_with_a_p256_public_key_and_forgeries_do_not,
    issuer_and_audience_are_checked_when_configured,
    a_customers_hold_and_order_are_404_to_everyone_else,
    one_idempotency_key_used_by_two_customers_makes_two_holds,
    holds_before_the_start_get_409_sale_not_started_and_touch_no_stock,
    holds_from_the_end_on_get_409_sale_ended_and_earlier_holds_still_order,
    a_sale_opens_within_a_second_of_its_start,
    parallel_holds_of_one_customer_never_pass_the_limit,
    eighty_customers_holding_in_parallel_each_get_exactly_their_limit,
    pending_and_paid_orders_count_against_the_limit_and_cancelled_ones_do_not,
    an_expired_hold_gives_the_allowance_back,
    limit_refusal_names_the_limit_and_the_units_held,
    a_limited_product_needs_a_customer_token,
    products_show_their_sale_settings_and_state,
    product_creation_refuses_bad_sale_settings_with_422,
    max_per_customer_needs_a_customer_key_configured,
    the_sdk_sends_a_customer_token,
    the_audit_reports_a_customer_over_the_limit_they_were_granted_under,
);

/// Now in Unix milliseconds, the clock the server decides a sale's instants on.
fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// How many answers had each (status, code).
fn tally(replies: &[Reply]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts
            .entry((r.status.as_u16(), r.code().to_owned()))
            .or_default() += 1;
    }
    counts
}

/// The `(status, code)` key of [`tally`].
fn key(status: u16, code: &str) -> (u16, String) {
    (status, code.to_owned())
}

/// Asserts the answer to a present but unusable token: 401 `invalid_token` with a
/// `WWW-Authenticate: Bearer error="invalid_token"…` challenge.
#[track_caller]
fn assert_invalid_token(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.body);
    assert_eq!(r.code(), "invalid_token", "{what}: {}", r.body);
    assert!(
        r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error without message: {}",
        r.body
    );
    let challenge = r
        .headers
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        challenge.starts_with(r#"Bearer error="invalid_token""#),
        "{what}: WWW-Authenticate is {challenge:?}"
    );
}

/// What a refused request must leave as it was: the rows of holds and orders, and the
/// product's available stock.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    holds: i64,
    orders: i64,
    available: i64,
}

/// [`Written`] for `product` now.
async fn written(db_url: &str, app: &TestApp, product: i64) -> Written {
    Written {
        holds: query_i64(db_url, "SELECT COUNT(*) FROM holds").await,
        orders: query_i64(db_url, "SELECT COUNT(*) FROM orders").await,
        available: available(app, product).await,
    }
}

/// `available_stock` of `product` as served, read as raw JSON.
async fn available(app: &TestApp, product: i64) -> i64 {
    let r = app.get(&format!("/api/products/{product}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["available_stock"].as_i64().expect("available_stock")
}

/// `sale_state` of `product` as served.
async fn sale_state(app: &TestApp, product: i64) -> String {
    let r = app.get(&format!("/api/products/{product}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["sale_state"]
        .as_str()
        .unwrap_or_else(|| panic!("no sale_state: {}", r.body))
        .to_owned()
}

/// Claims of customer `sub` with `extra` merged over them (a `null` removes a claim).
fn claims_with(sub: &str, extra: Value) -> Value {
    let mut claims = customer_claims(sub);
    let fields = claims.as_object_mut().expect("an object");
    for (k, v) in extra.as_object().expect("an object") {
        if v.is_null() {
            fields.remove(k);
        } else {
            fields.insert(k.clone(), v.clone());
        }
    }
    claims
}

/// An HS256 token with the configured secret carrying `claims`.
fn hs256(claims: &Value) -> String {
    token(TokenKey::Hs256(CUSTOMER_SECRET), claims)
}

/// The four buyer requests with `authorization` as the header value: a hold on `product`
/// (with an `Idempotency-Key`), a read of `hold`, an order of `orderable_hold`, a read of
/// `order`. Every one names ids that exist, so only the token can make it fail.
async fn every_buyer_request(
    app: &TestApp,
    authorization: &str,
    ids: [i64; 4],
    idempotency_key: &str,
) -> Vec<(&'static str, Reply)> {
    let [product, hold, orderable_hold, order] = ids;
    let auth = ("authorization", authorization);
    let hold_body = json!({"product_id": product, "qty": 1});
    let order_body = json!({"hold_id": orderable_hold});
    vec![
        (
            "POST /api/holds",
            app.request(
                Method::POST,
                "/api/holds",
                Some(&hold_body),
                &[auth, ("idempotency-key", idempotency_key)],
            )
            .await,
        ),
        (
            "GET /api/holds/{id}",
            app.request(Method::GET, &format!("/api/holds/{hold}"), None, &[auth])
                .await,
        ),
        (
            "POST /api/orders",
            app.request(Method::POST, "/api/orders", Some(&order_body), &[auth])
                .await,
        ),
        (
            "GET /api/orders/{id}",
            app.request(Method::GET, &format!("/api/orders/{order}"), None, &[auth])
                .await,
        ),
    ]
}

async fn bad_tokens_get_401_invalid_token_on_every_buyer_endpoint_and_write_nothing(
    backend: Backend,
) {
    // Goal: every kind of unusable token is refused on every buyer endpoint with 401
    // invalid_token and its challenge, is never taken for an anonymous shopper, and writes
    // nothing (no hold, no order, no stock moved, no idempotency key remembered).
    // Method: an HS256 server; anonymous holds and an order to aim at; then each bad
    // Authorization value on the four buyer requests, comparing the rows and the stock.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(10, 100).await;
    let read_hold = hold_id(&app.hold_as(None, product, 1, None).await);
    let order = order_id(&app.order_as(None, read_hold).await);
    let orderable_hold = hold_id(&app.hold_as(None, product, 1, None).await);
    let before = written(&db.url, &app, product).await;

    let now = unix_now();
    let alice = customer_claims("alice");
    let good = hs256(&alice);
    let mallory = hs256(&customer_claims("mallory"));
    let spliced = {
        // Mallory's claims under the signature of Alice's token.
        let m: Vec<&str> = mallory.split('.').collect();
        let a: Vec<&str> = good.split('.').collect();
        format!("{}.{}.{}", m[0], m[1], a[2])
    };
    let bad: Vec<(&str, String)> = vec![
        ("not a JWT", "not-a-jwt".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        (
            "two parts only",
            good.rsplit_once('.').unwrap().0.to_owned(),
        ),
        ("signed with another secret", {
            token(
                TokenKey::Hs256("another-secret-0123456789abcdef0123"),
                &alice,
            )
        }),
        ("claims spliced under another signature", spliced),
        ("alg none", unsigned_token(&alice)),
        ("HS512 with the right secret", {
            token(TokenKey::Hs512(CUSTOMER_SECRET), &alice)
        }),
        ("RS256 while an HS256 secret is configured", {
            token(TokenKey::Rs256, &alice)
        }),
        (
            "expired beyond the 30 s leeway",
            hs256(&claims_with("alice", json!({"exp": now - 120}))),
        ),
        (
            "nbf beyond the 30 s leeway",
            hs256(&claims_with("alice", json!({"nbf": now + 120}))),
        ),
        (
            "without sub",
            hs256(&claims_with("alice", json!({"sub": null}))),
        ),
        (
            "without exp",
            hs256(&claims_with("alice", json!({"exp": null}))),
        ),
        (
            "exp not a number",
            hs256(&claims_with("alice", json!({"exp": "tomorrow"}))),
        ),
        ("empty sub", hs256(&customer_claims(""))),
        (
            "sub of 129 characters",
            hs256(&customer_claims(&"a".repeat(129))),
        ),
        ("sub with a space", hs256(&customer_claims("ali ce"))),
        ("sub with a tab", hs256(&customer_claims("ali\tce"))),
        (
            "sub with a control character",
            hs256(&customer_claims("ali\u{7}ce")),
        ),
        (
            "sub not a string",
            hs256(&claims_with("alice", json!({"sub": 42}))),
        ),
    ];
    for (i, (what, t)) in bad.iter().enumerate() {
        let authorization = bearer(t);
        let idem = format!("bad-token-{i}");
        let ids = [product, read_hold, orderable_hold, order];
        for (request, r) in every_buyer_request(&app, &authorization, ids, &idem).await {
            assert_invalid_token(&r, &format!("{what}, {request}"));
        }
    }
    assert_eq!(written(&db.url, &app, product).await, before);

    // The refused holds remembered no key: the same keys now serve new requests afresh.
    let r = app.hold_as(None, product, 2, Some("bad-token-0")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(!r.replayed());
    // Nor under alice's scope for the refused tokens that named her (another secret, alg
    // none, expired); and the server does take her good token, so the refusals above were
    // about the tokens.
    for what in [
        "signed with another secret",
        "alg none",
        "expired beyond the 30 s leeway",
    ] {
        let i = bad
            .iter()
            .position(|(w, _)| *w == what)
            .expect("listed above");
        let r = app
            .hold_as(Some(&good), product, 1, Some(&format!("bad-token-{i}")))
            .await;
        assert_eq!(r.status, 201, "{what}: {}", r.body);
        assert!(!r.replayed(), "{what}: the refused request left its key");
    }
    assert_eq!(available(&app, product).await, before.available - 5);
    assert_audit(&db.url);
}

async fn tokens_get_401_when_no_customer_key_is_configured(backend: Backend) {
    // Goal: a server with no customer key cannot verify any token, so it refuses them all
    // rather than taking the caller for an anonymous shopper; anonymous buying still works.
    // Method: a server without CUSTOMER_JWT_*; well-formed HS256, RS256 and ES256 tokens
    // on the four buyer requests; rows and stock compared.
    let (db, app) = setup!(backend);
    let product = app.create_product(10, 100).await;
    let read_hold = hold_id(&app.hold_as(None, product, 1, None).await);
    let order = order_id(&app.order_as(None, read_hold).await);
    let orderable_hold = hold_id(&app.hold_as(None, product, 1, None).await);
    let before = written(&db.url, &app, product).await;
    let alice = customer_claims("alice");
    let tokens = [
        ("HS256", hs256(&alice)),
        ("RS256", token(TokenKey::Rs256, &alice)),
        ("ES256", token(TokenKey::Es256, &alice)),
    ];
    for (what, t) in &tokens {
        let ids = [product, read_hold, orderable_hold, order];
        for (request, r) in every_buyer_request(&app, &bearer(t), ids, "no-key").await {
            assert_invalid_token(&r, &format!("{what}, {request}"));
        }
    }
    assert_eq!(written(&db.url, &app, product).await, before);
    let r = app.hold_as(None, product, 1, Some("no-key")).await;
    assert_eq!(r.status, 201, "anonymous shoppers still buy: {}", r.body);
    assert!(!r.replayed());
    assert_audit(&db.url);
}

async fn valid_tokens_are_accepted_within_the_leeway_and_with_claims_nobody_checks(
    backend: Backend,
) {
    // Goal: the rules refuse only what they must: a token expired less than 30 s ago, one
    // whose nbf is less than 30 s ahead, one with iss and aud a server does not check, and
    // subjects at the edges of 1 to 128 visible characters all identify their customer.
    // Method: an HS256 server with no issuer or audience; each token makes a hold, which
    // a fresh token of the same sub reads back and another customer cannot.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(100, 100).await;
    let now = unix_now();
    let long_sub = "x".repeat(128);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("expired 10 s ago", "alice", json!({"exp": now - 10})),
        ("nbf 10 s ahead", "alice", json!({"nbf": now + 10})),
        ("nbf in the past", "alice", json!({"nbf": now - 60})),
        (
            "iss and aud nobody checks",
            "alice",
            json!({"iss": "https://elsewhere.test", "aud": "someone-else"}),
        ),
        ("one-character sub", "a", json!({})),
        ("128-character sub", &long_sub, json!({})),
        ("punctuated sub", "user|42@shop.example:eu/1", json!({})),
    ];
    let stranger = customer_token("stranger");
    for (what, sub, extra) in &cases {
        let t = hs256(&claims_with(sub, extra.clone()));
        let r = app.hold_as(Some(&t), product, 1, None).await;
        assert_eq!(r.status, 201, "{what}: {}", r.body);
        let path = format!("/api/holds/{}", hold_id(&r));
        let own = app.get_as(Some(&customer_token(sub)), &path).await;
        assert_eq!(own.status, 200, "{what}: the owner reads it: {}", own.body);
        app.get_as(Some(&stranger), &path)
            .await
            .assert_error(404, "hold_not_found");
    }
    // Subjects are compared whole: a prefix of the 128 characters is somebody else.
    let r = app
        .hold_as(Some(&customer_token(&long_sub)), product, 1, None)
        .await;
    let path = format!("/api/holds/{}", hold_id(&r));
    app.get_as(Some(&customer_token(&long_sub[..127])), &path)
        .await
        .assert_error(404, "hold_not_found");
    assert_eq!(available(&app, product).await, 100 - cases.len() as i64 - 1);
    assert_audit(&db.url);
}

async fn tokens_before_their_nbf_are_refused_beyond_the_leeway(backend: Backend) {
    // Goal: `nbf` is honoured: a token not valid for another two minutes buys nothing.
    // Method: HS256 tokens with nbf = now + 120 s (refused) and now + 10 s (inside the
    // 30 s leeway, accepted) on POST /api/holds; rows and stock compared.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(10, 100).await;
    let before = written(&db.url, &app, product).await;
    let early = hs256(&claims_with("alice", json!({"nbf": unix_now() + 120})));
    assert_invalid_token(
        &app.hold_as(Some(&early), product, 1, None).await,
        "nbf in 120 s",
    );
    assert_eq!(written(&db.url, &app, product).await, before);
    let soon = hs256(&claims_with("alice", json!({"nbf": unix_now() + 10})));
    let r = app.hold_as(Some(&soon), product, 1, None).await;
    assert_eq!(r.status, 201, "nbf within the leeway: {}", r.body);
    assert_audit(&db.url);
}

/// A server verifying with the public key at `key_file` (text `public_pem`) takes tokens
/// signed as `good` and refuses every forgery, the HS256-with-the-public-key one above all.
async fn public_key_tokens(backend: Backend, key_file: &str, public_pem: &str, good: TokenKey<'_>) {
    let (db, app) = setup!(backend, &[("CUSTOMER_JWT_PUBLIC_KEY_FILE", key_file)]);
    let product = app.create_product(10, 100).await;
    let alice = customer_claims("alice");
    let t = token(good, &alice);
    let r = app.hold_as(Some(&t), product, 2, None).await;
    let hold = hold_id(&r);
    let path = format!("/api/holds/{hold}");
    // A fresh token of the same key and sub is the same customer; anonymous is not.
    let again = token(good, &claims_with("alice", json!({"jti": "second"})));
    assert_eq!(app.get_as(Some(&again), &path).await.status, 200);
    app.get_as(None, &path)
        .await
        .assert_error(404, "hold_not_found");
    let order = order_id(&app.order_as(Some(&t), hold).await);
    assert_eq!(
        app.get_as(Some(&t), &format!("/api/orders/{order}"))
            .await
            .status,
        200
    );

    let other = match good {
        TokenKey::Rs256 => TokenKey::Es256,
        _ => TokenKey::Rs256,
    };
    let forged: Vec<(&str, String)> = vec![
        // The classic confusion: the public key, which anyone has, used as an HMAC secret.
        (
            "HS256 keyed with the public key PEM",
            token(TokenKey::Hs256(public_pem), &alice),
        ),
        (
            "HS256 keyed with the public key PEM, trimmed",
            token(TokenKey::Hs256(public_pem.trim_end()), &alice),
        ),
        (
            "HS256 keyed with the test secret",
            token(TokenKey::Hs256(CUSTOMER_SECRET), &alice),
        ),
        ("the other asymmetric algorithm", token(other, &alice)),
        ("alg none", unsigned_token(&alice)),
        (
            "expired beyond the leeway",
            token(
                good,
                &claims_with("alice", json!({"exp": unix_now() - 120})),
            ),
        ),
        (
            "without sub",
            token(good, &claims_with("alice", json!({"sub": null}))),
        ),
    ];
    let before = written(&db.url, &app, product).await;
    for (what, f) in &forged {
        assert_invalid_token(&app.hold_as(Some(f), product, 1, None).await, what);
        assert_invalid_token(&app.get_as(Some(f), &path).await, what);
    }
    assert_eq!(written(&db.url, &app, product).await, before);
    assert_audit(&db.url);
}

async fn rs256_tokens_verify_with_an_rsa_public_key_and_forgeries_do_not(backend: Backend) {
    // Goal: with an RSA public key configured, RS256 tokens identify their customer, and
    // HS256 signed with the PEM text (the algorithm-confusion attack), ES256, alg none,
    // expired and sub-less tokens get 401 and write nothing.
    // Method: CUSTOMER_JWT_PUBLIC_KEY_FILE = the test RSA public key; a hold and order by
    // RS256, then each forgery on POST and GET /api/holds; rows and stock compared.
    public_key_tokens(
        backend,
        RSA_PUBLIC_KEY_FILE,
        RSA_PUBLIC_PEM,
        TokenKey::Rs256,
    )
    .await;
}

async fn es256_tokens_verify_with_a_p256_public_key_and_forgeries_do_not(backend: Backend) {
    // Goal: the same as the RS256 test with a P-256 key: ES256 accepted, HS256 keyed with
    // the PEM text, RS256, alg none, expired and sub-less tokens refused, nothing written.
    // Method: CUSTOMER_JWT_PUBLIC_KEY_FILE = the test EC public key.
    public_key_tokens(backend, EC_PUBLIC_KEY_FILE, EC_PUBLIC_PEM, TokenKey::Es256).await;
}

async fn issuer_and_audience_are_checked_when_configured(backend: Backend) {
    // Goal: with CUSTOMER_JWT_ISSUER and CUSTOMER_JWT_AUDIENCE set, a token from another
    // issuer or for another audience, or naming none, is refused and writes nothing.
    // Method: an HS256 server with both set; tokens varying only iss and aud.
    let iss = "https://login.shop.test";
    let aud = "flashsale-api";
    let mut env = CUSTOMER_ENV.to_vec();
    env.extend([("CUSTOMER_JWT_ISSUER", iss), ("CUSTOMER_JWT_AUDIENCE", aud)]);
    let (db, app) = setup!(backend, &env);
    let product = app.create_product(10, 100).await;
    let ok = hs256(&claims_with("alice", json!({"iss": iss, "aud": aud})));
    let r = app.hold_as(Some(&ok), product, 1, None).await;
    let hold = hold_id(&r);
    let path = format!("/api/holds/{hold}");
    assert_eq!(app.get_as(Some(&ok), &path).await.status, 200);
    // RFC 7519 lets `aud` be a list; one of them being ours is enough.
    let listed = hs256(&claims_with(
        "alice",
        json!({"iss": iss, "aud": ["billing", aud]}),
    ));
    assert_eq!(app.get_as(Some(&listed), &path).await.status, 200);

    let before = written(&db.url, &app, product).await;
    let refused = [
        (
            "another issuer",
            json!({"iss": "https://evil.test", "aud": aud}),
        ),
        ("no issuer", json!({"aud": aud})),
        ("another audience", json!({"iss": iss, "aud": "billing"})),
        ("no audience", json!({"iss": iss})),
        (
            "an issuer differing in case",
            json!({"iss": iss.to_uppercase(), "aud": aud}),
        ),
    ];
    for (what, extra) in refused {
        let t = hs256(&claims_with("alice", extra));
        assert_invalid_token(&app.hold_as(Some(&t), product, 1, None).await, what);
        assert_invalid_token(&app.get_as(Some(&t), &path).await, what);
    }
    assert_eq!(written(&db.url, &app, product).await, before);
    assert_audit(&db.url);
}

/// Asserts that the answer `hidden` for the existing id `id` is the answer `missing` for
/// the id `missing_id` that does not exist, but for the id itself: nothing tells a caller
/// that somebody else's hold or order is there.
#[track_caller]
fn assert_same_as_missing(hidden: &Reply, id: i64, missing: &Reply, missing_id: i64, who: &str) {
    assert_eq!(hidden.status, missing.status, "{who}: {}", hidden.body);
    let without_id = |r: &Reply, id: i64| r.body.to_string().replace(&id.to_string(), "<id>");
    assert_eq!(
        without_id(hidden, id),
        without_id(missing, missing_id),
        "{who}: a hidden id is answered like a missing one"
    );
}

async fn a_customers_hold_and_order_are_404_to_everyone_else(backend: Backend) {
    // Goal: a customer's hold and order are invisible to other customers and to anonymous
    // callers (the same 404 as an id that does not exist), who can neither read nor order
    // the hold; the owner, with any token of the same sub, reads and orders; anonymous
    // holds and orders stay readable by anyone with the id.
    // Method: HS256 tokens for alice and bob; every read and order as each caller.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(10, 100).await;
    let alice = customer_token("alice");
    let alice_again = hs256(&claims_with("alice", json!({"jti": "another-session"})));
    let bob = customer_token("bob");
    let hold = hold_id(&app.hold_as(Some(&alice), product, 2, None).await);
    let hold_path = format!("/api/holds/{hold}");

    for (who, t) in [("bob", Some(bob.as_str())), ("anonymous", None)] {
        let r = app.get_as(t, &hold_path).await;
        r.assert_error(404, "hold_not_found");
        let missing = app.get_as(t, "/api/holds/999999").await;
        assert_same_as_missing(&r, hold, &missing, 999_999, who);
        app.order_as(t, hold)
            .await
            .assert_error(404, "hold_not_found");
    }
    assert_eq!(
        query_i64(&db.url, "SELECT COUNT(*) FROM orders").await,
        0,
        "nobody but alice ordered her hold"
    );
    let own = app.get_as(Some(&alice_again), &hold_path).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["hold_id"], hold);
    assert_eq!(own.body["status"], "active");

    let order = order_id(&app.order_as(Some(&alice), hold).await);
    let order_path = format!("/api/orders/{order}");
    for (who, t) in [("bob", Some(bob.as_str())), ("anonymous", None)] {
        let r = app.get_as(t, &order_path).await;
        r.assert_error(404, "order_not_found");
        let missing = app.get_as(t, "/api/orders/999999").await;
        assert_same_as_missing(&r, order, &missing, 999_999, who);
        // Not even the replay of alice's order leaks to them.
        app.order_as(t, hold)
            .await
            .assert_error(404, "hold_not_found");
    }
    let own = app.get_as(Some(&alice_again), &order_path).await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["id"], order);
    assert_eq!(own.body["hold_id"], hold);
    let retry = app.order_as(Some(&alice_again), hold).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert!(retry.replayed());
    assert_eq!(retry.body["id"], order);
    let own_hold = app.get_as(Some(&alice), &hold_path).await;
    assert_eq!(own_hold.body["status"], "ordered", "{}", own_hold.body);

    // Anonymous holds and orders: whoever has the id reads them.
    let anon_hold = hold_id(&app.hold_as(None, product, 1, None).await);
    let anon_order = order_id(&app.order_as(None, anon_hold).await);
    for t in [Some(alice.as_str()), Some(bob.as_str()), None] {
        let r = app.get_as(t, &format!("/api/holds/{anon_hold}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = app.get_as(t, &format!("/api/orders/{anon_order}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(available(&app, product).await, 7);
    assert_audit(&db.url);
}

async fn one_idempotency_key_used_by_two_customers_makes_two_holds(backend: Backend) {
    // Goal: Idempotency-Key is scoped to the customer: the same key by two customers (and
    // by the anonymous scope) makes separate holds, none a replay of another's; a retry by
    // the same customer, with any token of its sub, replays; another body is 409.
    // Method: sequential requests by alice, bob and anonymous with one key; then 20
    // customers each sending one shared key three times, all 60 requests at once.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app.create_product(100, 100).await;
    let alice = customer_token("alice");
    let bob = customer_token("bob");
    let callers = [
        ("alice", Some(alice.as_str())),
        ("bob", Some(bob.as_str())),
        ("anonymous", None),
    ];
    let mut first = Vec::new();
    for (who, t) in callers {
        let r = app.hold_as(t, product, 2, Some("checkout-1")).await;
        assert_eq!(r.status, 201, "{who}: {}", r.body);
        assert!(!r.replayed(), "{who} got another caller's hold: {}", r.body);
        first.push(r);
    }
    let ids: HashSet<i64> = first.iter().map(hold_id).collect();
    assert_eq!(ids.len(), 3, "three callers, three holds");
    for ((who, t), original) in callers.iter().zip(&first) {
        let r = app.hold_as(*t, product, 2, Some("checkout-1")).await;
        assert_eq!(r.status, 201, "{who}: {}", r.body);
        assert!(r.replayed(), "{who}'s retry is a replay");
        assert_eq!(r.body, original.body, "{who}'s retry answers the same body");
    }
    let bob_again = hs256(&claims_with("bob", json!({"jti": "another-session"})));
    let r = app
        .hold_as(Some(&bob_again), product, 2, Some("checkout-1"))
        .await;
    assert!(
        r.replayed(),
        "the scope is the sub, not the token: {}",
        r.body
    );
    assert_eq!(r.body, first[1].body);
    for (who, t) in callers {
        let r = app.hold_as(t, product, 3, Some("checkout-1")).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (409, "idempotency_key_reused"),
            "{who} reused the key for another body: {}",
            r.body
        );
    }
    assert_eq!(available(&app, product).await, 94);

    let tokens: Vec<String> = (0..20)
        .map(|c| customer_token(&format!("shopper-{c}")))
        .collect();
    let replies = join_all((0..60).map(|i| {
        let t = &tokens[i % 20];
        app.hold_as(Some(t), product, 1, Some("shared-key"))
    }))
    .await;
    let mut per_customer: BTreeMap<usize, Vec<&Reply>> = BTreeMap::new();
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.status, 201, "{}", r.body);
        per_customer.entry(i % 20).or_default().push(r);
    }
    let mut all_ids = HashSet::new();
    for (c, rs) in &per_customer {
        let ids: HashSet<i64> = rs.iter().map(|r| hold_id(r)).collect();
        assert_eq!(
            ids.len(),
            1,
            "shopper-{c} got one hold for one key: {ids:?}"
        );
        assert_eq!(
            rs.iter().filter(|r| !r.replayed()).count(),
            1,
            "shopper-{c}"
        );
        all_ids.extend(ids);
    }
    assert_eq!(all_ids.len(), 20, "no customer was handed another's hold");
    assert!(all_ids.is_disjoint(&ids));
    assert_eq!(available(&app, product).await, 74);
    assert_audit(&db.url);
}

async fn holds_before_the_start_get_409_sale_not_started_and_touch_no_stock(backend: Backend) {
    // Goal: before sale_starts_at, every hold is 409 sale_not_started, with or without a
    // token or key, on limited products too, and nothing is reserved; the product shows
    // sale_state "upcoming".
    // Method: products starting in an hour; holds of every kind; rows and stock compared.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let start = rfc3339(unix_now() + 3600);
    let product = app
        .create_sale_product(json!({"total_stock": 10, "sale_starts_at": start}))
        .await;
    let limited = app
        .create_sale_product(
            json!({"total_stock": 10, "sale_starts_at": start, "max_per_customer": 2}),
        )
        .await;
    let before = written(&db.url, &app, product).await;
    let alice = customer_token("alice");
    let refused = [
        app.hold_as(None, product, 1, None).await,
        app.hold_as(None, product, 10, Some("early-1")).await,
        app.hold_as(Some(&alice), product, 1, None).await,
        app.hold_as(Some(&alice), product, 1, Some("early-2")).await,
        app.hold_as(Some(&alice), limited, 1, None).await,
    ];
    for r in &refused {
        r.assert_error(409, "sale_not_started");
    }
    assert_eq!(written(&db.url, &app, product).await, before);
    assert_eq!(available(&app, limited).await, 10);
    assert_eq!(sale_state(&app, product).await, "upcoming");
    assert_eq!(sale_state(&app, limited).await, "upcoming");
    assert_audit(&db.url);
}

/// One poll of a timing test: when the request left, when its answer came back, and the
/// answer. The server decided somewhere between the two instants.
struct Poll {
    sent_ms: i64,
    received_ms: i64,
    reply: Reply,
}

/// Sends `request` every 50 ms until `done` says so or `deadline_ms` (Unix ms) passes.
async fn poll_until<F, Fut>(
    deadline_ms: i64,
    mut request: F,
    done: impl Fn(&Reply) -> bool,
) -> Vec<Poll>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let mut polls = Vec::new();
    loop {
        let sent_ms = now_millis();
        let reply = request().await;
        let received_ms = now_millis();
        let finished = done(&reply);
        polls.push(Poll {
            sent_ms,
            received_ms,
            reply,
        });
        if finished || received_ms > deadline_ms {
            return polls;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn holds_from_the_end_on_get_409_sale_ended_and_earlier_holds_still_order(backend: Backend) {
    // Goal: from sale_ends_at on, holds are 409 sale_ended and reserve nothing, decided on
    // the server's clock at arrival; a hold taken before the end still becomes an order and
    // its payment applies; sale_state reads "ended" within a second of the end.
    // Method: products that ended already, refused at once; one ending 3 to 4 s from now,
    // polled with qty-1 holds every 50 ms across its end, each request timed on both sides.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let now = unix_now();
    let ended = app
        .create_sale_product(json!({
            "total_stock": 10,
            "sale_starts_at": rfc3339(now - 7200),
            "sale_ends_at": rfc3339(now - 3600),
        }))
        .await;
    let only_end = app
        .create_sale_product(json!({"total_stock": 10, "sale_ends_at": rfc3339(now - 1)}))
        .await;
    let alice = customer_token("alice");
    let before = written(&db.url, &app, ended).await;
    for product in [ended, only_end] {
        app.hold_as(None, product, 1, None)
            .await
            .assert_error(409, "sale_ended");
        app.hold_as(Some(&alice), product, 1, Some("late"))
            .await
            .assert_error(409, "sale_ended");
        assert_eq!(sale_state(&app, product).await, "ended");
    }
    assert_eq!(written(&db.url, &app, ended).await, before);
    assert_eq!(available(&app, only_end).await, 10);

    let end_s = unix_now() + 4;
    let end_ms = end_s * 1000;
    let closing = app
        .create_sale_product(json!({"total_stock": 100, "sale_ends_at": rfc3339(end_s)}))
        .await;
    let early = app.hold_as(Some(&alice), closing, 1, None).await;
    assert_eq!(
        early.status, 201,
        "held well before the end: {}",
        early.body
    );
    let early = hold_id(&early);
    let polls = poll_until(
        end_ms + 5000,
        || app.hold_as(None, closing, 1, None),
        |r| r.status == 409,
    )
    .await;
    let mut granted = 1;
    for p in &polls {
        match p.reply.status.as_u16() {
            201 => {
                granted += 1;
                assert!(
                    p.sent_ms < end_ms,
                    "a hold sent {} ms after the end was granted",
                    p.sent_ms - end_ms
                );
            }
            _ => {
                p.reply.assert_error(409, "sale_ended");
                assert!(
                    p.received_ms >= end_ms,
                    "refused as ended {} ms before the end",
                    end_ms - p.received_ms
                );
            }
        }
    }
    assert_eq!(
        polls.last().unwrap().reply.status,
        409,
        "the sale never ended"
    );
    assert_eq!(available(&app, closing).await, 100 - granted);

    let product_path = format!("/api/products/{closing}");
    let states = poll_until(
        end_ms + 5000,
        || app.get(&product_path),
        |r| r.body["sale_state"] == "ended",
    )
    .await;
    for p in &states {
        let state = &p.reply.body["sale_state"];
        if state == "live" {
            assert!(p.sent_ms < end_ms + 1000, "still live 1 s after the end");
        } else {
            assert_eq!(state, "ended", "{}", p.reply.body);
            assert!(
                p.received_ms >= end_ms,
                "ended {} ms before the end",
                end_ms - p.received_ms
            );
        }
    }
    assert_eq!(states.last().unwrap().reply.body["sale_state"], "ended");

    // The hold taken before the end still becomes an order, and its payment applies.
    let order = order_id(&app.order_as(Some(&alice), early).await);
    let paid = app.webhook("after-the-end", early, "paid").await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["state"], "applied", "{}", paid.body);
    let r = app
        .get_as(Some(&alice), &format!("/api/orders/{order}"))
        .await;
    assert_eq!(r.body["status"], "paid", "{}", r.body);
    assert_audit(&db.url);
}

async fn a_sale_opens_within_a_second_of_its_start(backend: Backend) {
    // Goal: a sale starting 2 to 3 s from now grants no hold before its instant, and opens
    // (holds granted, sale_state "live") no later than a second after it.
    // Method: one task polls qty-1 anonymous holds every 50 ms, another polls
    // GET /api/products/{id}, both across the start; each request is timed on both sides:
    // a 201 or "live" answered before the start is too early, a refusal or "upcoming" for a
    // request sent a second after the start is too late.
    let (db, app) = setup!(backend);
    let start_s = unix_now() + 3;
    let start_ms = start_s * 1000;
    let product = app
        .create_sale_product(json!({"total_stock": 10, "sale_starts_at": rfc3339(start_s)}))
        .await;
    let holds = poll_until(
        start_ms + 5000,
        || app.hold_as(None, product, 1, None),
        |r| r.status == 201,
    );
    let product_path = format!("/api/products/{product}");
    let states = poll_until(
        start_ms + 5000,
        || app.get(&product_path),
        |r| r.body["sale_state"] == "live",
    );
    let (holds, states) = tokio::join!(holds, states);

    for p in &holds {
        if p.reply.status == 201 {
            assert!(
                p.received_ms >= start_ms,
                "a hold granted {} ms before the start",
                start_ms - p.received_ms
            );
        } else {
            p.reply.assert_error(409, "sale_not_started");
            assert!(
                p.sent_ms < start_ms + 1000,
                "still not started {} ms after the start",
                p.sent_ms - start_ms
            );
        }
    }
    assert_eq!(
        holds.last().unwrap().reply.status,
        201,
        "the sale never opened"
    );
    assert!(
        holds.len() > 1,
        "the first poll came after the start: the test proved nothing"
    );

    for p in &states {
        let state = &p.reply.body["sale_state"];
        if state == "live" {
            assert!(
                p.received_ms >= start_ms,
                "live {} ms before the start",
                start_ms - p.received_ms
            );
        } else {
            assert_eq!(state, "upcoming", "{}", p.reply.body);
            assert!(
                p.sent_ms < start_ms + 1000,
                "still upcoming {} ms after the start",
                p.sent_ms - start_ms
            );
        }
    }
    assert_eq!(states.last().unwrap().reply.body["sale_state"], "live");

    assert_eq!(
        available(&app, product).await,
        9,
        "refusals reserved nothing"
    );
    assert_eq!(query_i64(&db.url, "SELECT COUNT(*) FROM holds").await, 1);
    assert_audit(&db.url);
}

/// Asserts that `replies` are exactly `granted` holds and the rest 409
/// customer_limit_reached.
#[track_caller]
fn assert_limited(replies: &[Reply], granted: usize) {
    let counts = tally(replies);
    let want = BTreeMap::from([
        (key(201, ""), granted),
        (key(409, "customer_limit_reached"), replies.len() - granted),
    ]);
    assert_eq!(counts, want);
}

async fn parallel_holds_of_one_customer_never_pass_the_limit(backend: Backend) {
    // Goal: one customer firing many holds at once gets exactly the limit, never more,
    // however the requests interleave; other customers are not affected.
    // Method: 60 parallel qty-1 POST /api/holds with one token on a product with
    // max_per_customer 3 and stock 100; then one hold by another customer; audit.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app
        .create_sale_product(json!({"total_stock": 100, "max_per_customer": 3}))
        .await;
    let alice = customer_token("alice");
    let replies = join_all((0..60).map(|_| app.hold_as(Some(&alice), product, 1, None))).await;
    assert_limited(&replies, 3);
    assert_eq!(available(&app, product).await, 97);
    let r = app
        .hold_as(Some(&customer_token("bob")), product, 3, None)
        .await;
    assert_eq!(r.status, 201, "bob has his own allowance: {}", r.body);
    assert_eq!(available(&app, product).await, 94);
    assert_audit(&db.url);
}

/// Two API processes on one PostgreSQL: the limit is kept by the database, not by memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_on_one_postgres_never_pass_a_customers_limit() {
    // Goal: a customer's limit holds across processes.
    // Method: two flashsale-api processes on one database; 60 parallel qty-1 holds with one
    // token, alternating between them, on a product with max_per_customer 3, stock 100.
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let a = TestApp::spawn(&db, &CUSTOMER_ENV).await;
    let b = TestApp::spawn(&db, &CUSTOMER_ENV).await;
    let product = a
        .create_sale_product(json!({"total_stock": 100, "max_per_customer": 3}))
        .await;
    let alice = customer_token("alice");
    let apps = [&a, &b];
    let replies =
        join_all((0..60).map(|i| apps[i % 2].hold_as(Some(&alice), product, 1, None))).await;
    assert_limited(&replies, 3);
    assert_eq!(available(&a, product).await, 97);
    assert_eq!(
        query_i64(
            &db.url,
            &format!(
                "SELECT CAST(COALESCE(SUM(qty), 0) AS BIGINT) FROM holds WHERE product_id = {product}"
            )
        )
        .await,
        3
    );
    assert_audit(&db.url);
}

async fn eighty_customers_holding_in_parallel_each_get_exactly_their_limit(backend: Backend) {
    // Goal: with many customers racing on one product, each gets exactly their limit: no
    // customer passes it, and none is refused while under it because of the others.
    // Method: 80 customers x 4 qty-1 holds, all 320 at once, interleaved; limit 2, stock
    // 1000 (so stock never runs out); answers counted per customer; audit.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app
        .create_sale_product(json!({"total_stock": 1000, "max_per_customer": 2}))
        .await;
    let tokens: Vec<String> = (0..80)
        .map(|c| customer_token(&format!("customer-{c}")))
        .collect();
    let replies =
        join_all((0..320).map(|i| app.hold_as(Some(&tokens[i % 80]), product, 1, None))).await;
    let mut per_customer: BTreeMap<usize, Vec<Reply>> = BTreeMap::new();
    for (i, r) in replies.into_iter().enumerate() {
        per_customer.entry(i % 80).or_default().push(r);
    }
    for (c, rs) in &per_customer {
        let counts = tally(rs);
        let want = BTreeMap::from([(key(201, ""), 2), (key(409, "customer_limit_reached"), 2)]);
        assert_eq!(counts, want, "customer-{c}");
    }
    assert_eq!(available(&app, product).await, 1000 - 160);
    assert_audit(&db.url);
}

async fn pending_and_paid_orders_count_against_the_limit_and_cancelled_ones_do_not(
    backend: Backend,
) {
    // Goal: a customer's units are active holds plus pending and paid orders: ordering a
    // hold does not free its allowance, paying does not either, a cancelled order does.
    // Method: limit 2; hold 2 and order it, then a third unit (409); pay it (still 409);
    // on a second product, hold 2, order, a failed payment cancels it, then hold 2 (201).
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let alice = customer_token("alice");
    let product = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 2}))
        .await;
    let hold = hold_id(&app.hold_as(Some(&alice), product, 2, None).await);
    let order = order_id(&app.order_as(Some(&alice), hold).await);
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    let paid = app.webhook("pay-1", hold, "paid").await;
    assert_eq!(paid.body["state"], "applied", "{}", paid.body);
    let r = app
        .get_as(Some(&alice), &format!("/api/orders/{order}"))
        .await;
    assert_eq!(r.body["status"], "paid", "{}", r.body);
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    assert_eq!(available(&app, product).await, 8);

    let second = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 2}))
        .await;
    let hold = hold_id(&app.hold_as(Some(&alice), second, 2, None).await);
    let order = order_id(&app.order_as(Some(&alice), hold).await);
    app.hold_as(Some(&alice), second, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    let failed = app.webhook("fail-1", hold, "failed").await;
    assert_eq!(failed.body["state"], "applied", "{}", failed.body);
    let r = app
        .get_as(Some(&alice), &format!("/api/orders/{order}"))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let r = app.hold_as(Some(&alice), second, 2, None).await;
    assert_eq!(
        r.status, 201,
        "a cancelled order gives the allowance back: {}",
        r.body
    );
    assert_eq!(available(&app, second).await, 8);
    assert_audit(&db.url);
}

async fn an_expired_hold_gives_the_allowance_back(backend: Backend) {
    // Goal: a hold past its expiry no longer counts against the customer's limit, whether
    // or not the worker has run.
    // Method: HOLD_TTL_SECS=1, no worker; limit 2: hold 2, a third unit is refused; wait
    // past the TTL; hold 2 again (201), and a further unit is refused again.
    let mut env = CUSTOMER_ENV.to_vec();
    env.push(("HOLD_TTL_SECS", "1"));
    let (db, app) = setup!(backend, &env);
    let alice = customer_token("alice");
    let product = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 2}))
        .await;
    hold_id(&app.hold_as(Some(&alice), product, 2, None).await);
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = app.hold_as(Some(&alice), product, 2, None).await;
    assert_eq!(
        r.status, 201,
        "the expired hold gave the allowance back: {}",
        r.body
    );
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    assert_audit(&db.url);
}

/// The whole numbers written in `text`.
fn numbers_in(text: &str) -> HashSet<i64> {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

async fn limit_refusal_names_the_limit_and_the_units_held(backend: Backend) {
    // Goal: the limit is "at most", not "less than"; a refusal says the limit and how many
    // units the customer already has; a single hold above the limit is refused outright.
    // Method: limit 5: hold 4, then 2 (refused: 5 and 4 in the message), then 1 (granted,
    // exactly at the limit), then 1 (refused); another customer asks 6 at once (refused).
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let alice = customer_token("alice");
    let product = app
        .create_sale_product(json!({"total_stock": 100, "max_per_customer": 5}))
        .await;
    hold_id(&app.hold_as(Some(&alice), product, 4, None).await);
    let r = app.hold_as(Some(&alice), product, 2, None).await;
    r.assert_error(409, "customer_limit_reached");
    let message = r.body["message"].as_str().unwrap();
    let said = numbers_in(message);
    assert!(
        said.contains(&5) && said.contains(&4),
        "the message says the limit (5) and the units held (4): {message}"
    );
    let r = app.hold_as(Some(&alice), product, 1, None).await;
    assert_eq!(r.status, 201, "exactly at the limit is allowed: {}", r.body);
    app.hold_as(Some(&alice), product, 1, None)
        .await
        .assert_error(409, "customer_limit_reached");
    app.hold_as(Some(&customer_token("bob")), product, 6, None)
        .await
        .assert_error(409, "customer_limit_reached");
    assert_eq!(available(&app, product).await, 95);
    assert_audit(&db.url);
}

async fn a_limited_product_needs_a_customer_token(backend: Backend) {
    // Goal: an anonymous hold on a product with max_per_customer is 401
    // customer_token_required and reserves nothing; products without a limit still sell
    // to anonymous shoppers, and a customer with a token buys the limited one.
    // Method: anonymous holds (with and without a key) on a limited product; rows and
    // stock compared; then the same with a token, and anonymously on an unlimited product.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let limited = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 2}))
        .await;
    let open = app.create_product(10, 100).await;
    let before = written(&db.url, &app, limited).await;
    app.hold_as(None, limited, 1, None)
        .await
        .assert_error(401, "customer_token_required");
    app.hold_as(None, limited, 1, Some("anon-1"))
        .await
        .assert_error(401, "customer_token_required");
    assert_eq!(written(&db.url, &app, limited).await, before);
    let r = app
        .hold_as(Some(&customer_token("alice")), limited, 2, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app.hold_as(None, open, 1, Some("anon-1")).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(available(&app, limited).await, 8);
    assert_audit(&db.url);
}

/// Asserts that `product` (a product's JSON) shows the RFC 3339 instant `want_s` (Unix
/// seconds) for `field`, or null for `None`.
#[track_caller]
fn assert_instant(product: &Value, field: &str, want_s: Option<i64>) {
    let shown = product
        .get(field)
        .unwrap_or_else(|| panic!("{field} missing: {product}"));
    match want_s {
        None => assert!(shown.is_null(), "{field} should be null: {product}"),
        Some(s) => {
            let text = shown
                .as_str()
                .unwrap_or_else(|| panic!("{field} is not a string: {product}"));
            assert_eq!(
                rfc3339_millis(text),
                Some(s * 1000),
                "{field} {text:?} is not {}",
                rfc3339(s)
            );
        }
    }
}

/// Sale settings a product is created with, and what it must then show: start and end
/// (Unix seconds), limit, sale_state.
type SaleCase = (Value, Option<i64>, Option<i64>, Option<i64>, &'static str);

async fn products_show_their_sale_settings_and_state(backend: Backend) {
    // Goal: POST /admin/products takes the three sale settings (any RFC 3339 offset), and
    // both its answer and GET /products/{id} show them, null when unset, with sale_state
    // "upcoming", "live" or "ended" as the clock says.
    // Method: products with every combination that matters, each read back.
    let (_db, app) = setup!(backend, &CUSTOMER_ENV);
    let now = unix_now();
    let (start, end) = (now - 60, now + 3600);
    // The end written with a +02:00 offset: the same instant, another notation.
    let end_text = rfc3339(end + 7200).replace('Z', "+02:00");
    let body = json!({
        "name": "Limited sneaker",
        "price_cents": 12_900,
        "total_stock": 50,
        "sale_starts_at": rfc3339(start),
        "sale_ends_at": end_text,
        "max_per_customer": 3,
    });
    let created = app.post_product(&body).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_i64().unwrap();
    let shown = app.get(&format!("/api/products/{id}")).await;
    assert_eq!(shown.status, 200, "{}", shown.body);
    for p in [&created.body, &shown.body] {
        assert_instant(p, "sale_starts_at", Some(start));
        assert_instant(p, "sale_ends_at", Some(end));
        assert_eq!(p["max_per_customer"], 3, "{p}");
        assert_eq!(p["sale_state"], "live", "{p}");
        assert_eq!(p["name"], "Limited sneaker");
        assert_eq!(p["price_cents"], 12_900);
        assert_eq!(p["total_stock"], 50);
    }

    let cases: Vec<SaleCase> = vec![
        (json!({}), None, None, None, "live"),
        (
            json!({"sale_starts_at": rfc3339(now + 3600)}),
            Some(now + 3600),
            None,
            None,
            "upcoming",
        ),
        (
            json!({"sale_starts_at": rfc3339(now + 3600), "sale_ends_at": rfc3339(now + 7200)}),
            Some(now + 3600),
            Some(now + 7200),
            None,
            "upcoming",
        ),
        (
            json!({"sale_ends_at": rfc3339(now - 60)}),
            None,
            Some(now - 60),
            None,
            "ended",
        ),
        (
            json!({"sale_starts_at": rfc3339(now - 7200), "sale_ends_at": rfc3339(now - 3600)}),
            Some(now - 7200),
            Some(now - 3600),
            None,
            "ended",
        ),
        (
            json!({"sale_starts_at": rfc3339(now - 60)}),
            Some(now - 60),
            None,
            None,
            "live",
        ),
        (json!({"max_per_customer": 1}), None, None, Some(1), "live"),
        (
            json!({"max_per_customer": 1_000_000}),
            None,
            None,
            Some(1_000_000),
            "live",
        ),
    ];
    for (settings, start, end, limit, state) in cases {
        let id = app.create_sale_product(settings.clone()).await;
        let r = app.get(&format!("/api/products/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let p = &r.body;
        assert_instant(p, "sale_starts_at", start);
        assert_instant(p, "sale_ends_at", end);
        let shown_limit = p
            .get("max_per_customer")
            .unwrap_or_else(|| panic!("max_per_customer missing: {p}"));
        match limit {
            None => assert!(shown_limit.is_null(), "{settings}: {p}"),
            Some(l) => assert_eq!(shown_limit, l, "{settings}: {p}"),
        }
        assert_eq!(p["sale_state"], state, "{settings}: {p}");
    }
}

async fn product_creation_refuses_bad_sale_settings_with_422(backend: Backend) {
    // Goal: sale settings out of their rules are 422 validation_error naming the field,
    // and create nothing: an end not after the start, a limit outside 1..=1000000 or not
    // an integer, an instant that is not RFC 3339.
    // Method: POST /admin/products with each bad setting; the products table counted.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let at = unix_now() + 3600;
    let cases = [
        (
            json!({"sale_starts_at": rfc3339(at), "sale_ends_at": rfc3339(at)}),
            "sale_ends_at",
        ),
        (
            json!({"sale_starts_at": rfc3339(at), "sale_ends_at": rfc3339(at - 1)}),
            "sale_ends_at",
        ),
        (
            json!({"sale_starts_at": rfc3339(at - 7200), "sale_ends_at": rfc3339(at - 7201)}),
            "sale_ends_at",
        ),
        (json!({"max_per_customer": 0}), "max_per_customer"),
        (json!({"max_per_customer": -1}), "max_per_customer"),
        (json!({"max_per_customer": 1_000_001}), "max_per_customer"),
        (json!({"max_per_customer": 2.5}), "max_per_customer"),
        (json!({"max_per_customer": "3"}), "max_per_customer"),
        (json!({"sale_starts_at": "tomorrow"}), "sale_starts_at"),
        (json!({"sale_starts_at": "2030-01-01"}), "sale_starts_at"),
        (
            json!({"sale_starts_at": "2030-01-01T00:00:00"}),
            "sale_starts_at",
        ),
        (json!({"sale_ends_at": 1_893_456_000}), "sale_ends_at"),
    ];
    for (settings, field) in cases {
        let mut body = json!({"name": "Bad sale", "price_cents": 100, "total_stock": 10});
        for (k, v) in settings.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = app.post_product(&body).await;
        r.assert_error(422, "validation_error");
        let message = r.body["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{settings}: the message names {field}: {message}"
        );
    }
    assert_eq!(query_i64(&db.url, "SELECT COUNT(*) FROM products").await, 0);
}

async fn max_per_customer_needs_a_customer_key_configured(backend: Backend) {
    // Goal: a server that cannot tell customers apart refuses to promise a limit per
    // customer (422), while a start and an end need no key.
    // Method: a server without CUSTOMER_JWT_*; products with and without max_per_customer.
    let (db, app) = setup!(backend);
    let r = app
        .post_product(&json!({"name": "Limited", "price_cents": 100, "total_stock": 10, "max_per_customer": 3}))
        .await;
    r.assert_error(422, "validation_error");
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("max_per_customer"),
        "the message names max_per_customer: {message}"
    );
    assert_eq!(query_i64(&db.url, "SELECT COUNT(*) FROM products").await, 0);
    let now = unix_now();
    let id = app
        .create_sale_product(json!({
            "sale_starts_at": rfc3339(now - 60),
            "sale_ends_at": rfc3339(now + 3600),
        }))
        .await;
    let r = app.get(&format!("/api/products/{id}")).await;
    assert!(r.body["max_per_customer"].is_null(), "{}", r.body);
    assert_eq!(r.body["sale_state"], "live", "{}", r.body);
}

async fn the_sdk_sends_a_customer_token(backend: Backend) {
    // Goal: the generated Rust SDK can act for a customer, and shows the sale settings.
    // Method: a product limited to 1 per customer; a hold through the SDK with a token,
    // read back through it, the limit reached through it, and the product as it shows.
    let (_db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app
        .create_sale_product(json!({"total_stock": 5, "max_per_customer": 1}))
        .await;
    let sdk = app.sdk_as(&customer_token("sdk-shopper"));
    let ask = client::types::CreateHold {
        product_id: product,
        qty: std::num::NonZeroU64::MIN,
    };
    let hold = sdk
        .create_hold()
        .body(ask.clone())
        .send()
        .await
        .expect("201")
        .into_inner();
    let read = sdk
        .get_hold()
        .id(hold.hold_id)
        .send()
        .await
        .expect("200")
        .into_inner();
    assert_eq!(read.hold_id, hold.hold_id);
    match sdk.create_hold().body(ask).send().await {
        Err(client::Error::ErrorResponse(e)) => {
            assert_eq!(
                (e.status().as_u16(), e.code.as_str()),
                (409, "customer_limit_reached")
            );
        }
        other => panic!("expected 409 customer_limit_reached, got {other:?}"),
    }
    let shown = app.get_product_ok(product).await;
    assert_eq!(shown.max_per_customer, Some(1));
    assert_eq!(shown.sale_state, client::types::SaleState::Live);
    app.get(&format!("/api/holds/{}", hold.hold_id))
        .await
        .assert_error(404, "hold_not_found");
}

async fn the_audit_reports_a_customer_over_the_limit_they_were_granted_under(backend: Backend) {
    // Goal: the audit finds a customer over their limit, and does not count a limit the
    // operator lowered afterwards as a breach.
    // Method: alice holds 2 of a product limited to 2 (audit passes); a third unit forged
    // into the database behind the service (stock kept consistent) fails the audit, naming
    // her. On a second product limited to 5, bob holds 4; the limit lowered to 2 in the
    // database afterwards is no breach.
    let (db, app) = setup!(backend, &CUSTOMER_ENV);
    let product = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 2}))
        .await;
    let alice = customer_token("alice");
    assert_eq!(
        app.hold_as(Some(&alice), product, 2, None).await.status,
        201
    );
    assert_audit(&db.url);
    let lowered = app
        .create_sale_product(json!({"total_stock": 10, "max_per_customer": 5}))
        .await;
    let bob = customer_token("bob");
    assert_eq!(app.hold_as(Some(&bob), lowered, 4, None).await.status, 201);
    execute(
        &db.url,
        &format!("UPDATE products SET max_per_customer = 2 WHERE id = {lowered}"),
    )
    .await;
    assert_audit(&db.url);
    let far = now_millis() + 3_600_000;
    execute(
        &db.url,
        &format!(
            "INSERT INTO holds (product_id, qty, status, expires_at_ms, created_at_ms, \
               customer_id, customer_limit) \
             VALUES ({product}, 1, 'active', {far}, {far}, 'alice', 2)"
        ),
    )
    .await;
    execute(
        &db.url,
        &format!("UPDATE products SET available = available - 1 WHERE id = {product}"),
    )
    .await;
    let (ok, text) = audit(&db.url);
    assert!(!ok, "the audit must fail:\n{text}");
    assert!(
        text.contains(&format!(
            "product {product} customer \"alice\" has 3 unit(s)"
        )),
        "{text}"
    );
    assert!(text.contains("1 customer(s) over their limit"), "{text}");
}
