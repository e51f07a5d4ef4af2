//! Demo mode (`--demo`): the storefront page at `/` for the demo product, shopper tokens
//! for it, and test payments the server makes itself, standing in for a shop's login and
//! its payment provider. None of these routes exists without `--demo`; then `GET /`
//! redirects to the API's documentation.

use std::sync::Arc;

use anyhow::Context as _;
use jsonwebtoken::{EncodingKey, Header};
use poem::{
    Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route,
    error::ReadBodyError,
    get, handler,
    http::{StatusCode, header},
    post,
    web::{Data, Html, Json, Redirect},
};
use serde::{Deserialize, Serialize};
use service::{
    Service,
    payments::{Charge, PaymentEvent},
};

use crate::{
    customers::CustomerTokenConfig,
    http::{
        State, WebhookResponse,
        body::MAX_BODY_BYTES,
        customer::{invalid_token, verify_header},
        error::{ApiError, error_response},
    },
};

/// How long a demo shopper's token lives, in seconds.
const SHOPPER_TOKEN_SECS: i64 = 12 * 60 * 60;

/// The storefront's files, compiled in: no build step, no CDN.
const PAGE: &str = include_str!("../storefront/index.html");
const STYLE: &str = include_str!("../storefront/storefront.css");
const SCRIPT: &str = include_str!("../storefront/storefront.js");

/// Scripts and styles from this server only; no frames, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     frame-ancestors 'none'; form-action 'none'; base-uri 'none'";

/// Paths of the demo that take POST (every other path outside the API takes GET).
pub const POST_PATHS: [&str; 2] = ["/demo/shopper", "/demo/payments"];

/// What demo mode needs to serve: the product on sale and the key shoppers' tokens are
/// signed with.
pub struct Demo {
    product_id: i64,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Demo {
    /// The secret demo shoppers' tokens are signed with: `CUSTOMER_JWT_SECRET`, or, when no
    /// customer key is configured, a random one for this process, written into `customers`
    /// so that the API verifies what the demo signs.
    pub fn shopper_secret(customers: &mut CustomerTokenConfig) -> anyhow::Result<String> {
        if let Some(secret) = customers
            .customer_jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
        {
            tracing::warn!(
                "--demo hands out customer tokens signed with CUSTOMER_JWT_SECRET to anyone \
                 who asks: never run it with a secret a real shop's login uses"
            );
            return Ok(secret);
        }
        anyhow::ensure!(
            customers.customer_jwt_public_key_file.is_none(),
            "--demo signs its shoppers' tokens itself, which a public key cannot do: set \
             CUSTOMER_JWT_SECRET instead of CUSTOMER_JWT_PUBLIC_KEY_FILE, or neither"
        );
        let secret = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        customers.customer_jwt_secret = Some(secret.clone());
        Ok(secret)
    }

    /// Seeds the demo's products if the database has none, and picks the storefront's.
    pub async fn start(
        svc: &Service,
        secret: &str,
        customers: &CustomerTokenConfig,
    ) -> anyhow::Result<Self> {
        let key = EncodingKey::from_secret(secret.as_bytes())?;
        for p in svc.seed_demo().await? {
            tracing::info!(product_id = p.id, name = %p.name, stock = p.total_stock,
                limit_per_customer = p.sale.max_per_customer, "demo product created");
        }
        let product_id = svc
            .storefront_product()
            .await?
            .context("the demo needs a product, and the database has none")?;
        Ok(Self {
            product_id,
            key,
            issuer: customers.customer_jwt_issuer.clone(),
            audience: customers.customer_jwt_audience.clone(),
        })
    }
}

/// `route` with the home page, `/`: the storefront and its routes in demo mode, else a
/// redirect to `/docs`.
pub fn serve(route: Route, demo: Option<Arc<Demo>>) -> impl Endpoint<Output = Response> {
    let (route, home) = match demo {
        None => (route, get(docs).boxed()),
        Some(demo) => {
            let page = PAGE.replace("{{PRODUCT_ID}}", &demo.product_id.to_string());
            let route = route
                .at("/demo/storefront.css", get(style))
                .at("/demo/storefront.js", get(script))
                .at("/demo/shopper", post(shopper).data(demo))
                .at("/demo/payments", post(pay));
            (route, get(storefront).data(Arc::new(page)).boxed())
        }
    };
    let home = Arc::new(home);
    // poem's router answers `/` from the API nested at `/`, so the home page is picked
    // before routing.
    route.around(move |next, req| {
        let home = home.clone();
        async move {
            if req.uri().path() == "/" {
                home.call(req).await
            } else {
                next.call(req).await
            }
        }
    })
}

/// Without `--demo`, the home page is the API's documentation.
#[handler]
fn docs() -> Redirect {
    Redirect::see_other("/docs")
}

/// The storefront page.
#[handler]
fn storefront(page: Data<&Arc<String>>) -> Response {
    Html(page.0.as_str().to_owned())
        .with_header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .with_header(header::CACHE_CONTROL, "no-cache")
        .into_response()
}

#[handler]
fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[handler]
fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// A compiled-in file; revalidated on each load, so a new binary's page is never mixed
/// with an old cached file.
fn asset(content_type: &str, text: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(text)
}

/// A new demo shopper.
#[derive(Serialize)]
struct Shopper {
    customer_id: String,
    /// A customer token for `customer_id`, as a shop's login would issue it.
    token: String,
}

/// The claims of a shopper's token.
#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// `POST /demo/shopper`: a random shopper and their token. Nothing is stored.
#[handler]
fn shopper(demo: Data<&Arc<Demo>>) -> Response {
    let customer_id = format!(
        "shopper-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        sub: &customer_id,
        iat: now,
        exp: now + SHOPPER_TOKEN_SECS,
        iss: demo.issuer.as_deref(),
        aud: demo.audience.as_deref(),
    };
    match jsonwebtoken::encode(&Header::default(), &claims, &demo.key) {
        Ok(token) => Json(Shopper { customer_id, token }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a demo shopper's token");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error",
            )
        }
    }
}

/// The body of `POST /demo/payments`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    hold_id: i64,
}

/// `POST /demo/payments` `{hold_id}` with the shopper's token: a `paid` payment for the
/// shopper's hold, as the provider's webhook would report it (key `demo-<hold_id>`, so
/// paying twice replays the first answer). Only the hold's owner may pay for it.
#[handler]
async fn pay(req: &Request, body: Body, state: Data<&State>) -> Response {
    paid(req, body, &state)
        .await
        .unwrap_or_else(|refused| refused)
}

async fn paid(req: &Request, body: Body, state: &State) -> Result<Response, Response> {
    let refuse = |e: service::Error| ApiError::from(e).into_response();
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        let message = "a demo payment needs the shopper's token";
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "customer_token_required",
            message,
        ));
    };
    let customer = verify_header(state, value).map_err(invalid_token)?;
    let bytes = body
        .into_bytes_limit(MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            ReadBodyError::PayloadTooLarge => ApiError::payload_too_large(),
            other => ApiError::invalid_json(format!("cannot read body: {other}")),
        })
        .map_err(IntoResponse::into_response)?;
    let request: PayRequest = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => refuse(service::Error::validation(
            "body",
            format!("must be {{\"hold_id\": <integer>}}: {e}"),
        )),
        _ => ApiError::invalid_json(e.to_string()).into_response(),
    })?;
    // Only the shopper's own hold: an anonymous one is not theirs to pay for (and pinning
    // it would take it from whoever holds its id).
    state
        .svc
        .own_hold(request.hold_id, &customer)
        .await
        .map_err(refuse)?;
    let key = format!("demo-{}", request.hold_id);
    let event =
        PaymentEvent::parse(Some(key), None, request.hold_id, Charge::Paid).map_err(refuse)?;
    let reply = state.svc.receive_payment(event).await.map_err(refuse)?;
    Ok(WebhookResponse::from(reply).into_response())
}
