//! The middleware every request passes: refusal by size and while the database is down,
//! the request id, one log line and the request metrics.

use std::time::Instant;

use poem::{Endpoint, IntoResponse, Request, Response, http::HeaderValue};
use tracing::Instrument;

use super::{
    State, body, error,
    routes::{allowed_methods, route_of},
};

/// Answers API requests 503 at once while the database is known to be unreachable,
/// rather than letting each wait for a connection until the pool gives up.
pub(crate) async fn refuse_while_database_down<E: Endpoint>(
    next: E,
    req: Request,
) -> poem::Result<Response> {
    let down = req.uri().path().starts_with("/api/")
        && req
            .data::<State>()
            .is_some_and(|state| state.svc.db.is_down());
    if down {
        let refused = service::Error::Unavailable("the database is unreachable");
        return Ok(error::ApiError::from(refused).into_response());
    }
    next.call(req).await.map(IntoResponse::into_response)
}

/// Longest request target (path and query) served, in bytes; longer gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Most bytes of header names and values served; more gets 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The methods counted under their own name in metrics; any other is counted as `OTHER`,
/// so made-up methods cannot add label values.
const LABELLED_METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The metrics label of `method`.
fn method_label(method: &poem::http::Method) -> &'static str {
    LABELLED_METHODS
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or("OTHER")
}

/// The answer to a request refused on its size alone, before it is routed. (The HTTP
/// stack refuses still larger requests, and bad framing, itself: see SECURITY.md.)
fn refuse_by_size(req: &Request) -> Option<Response> {
    use poem::http::StatusCode;
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return Some(error::error_response(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target exceeds {MAX_URI_BYTES} bytes"),
        ));
    }
    let header_len: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_len > MAX_HEADER_BYTES {
        return Some(error::error_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers exceed {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let too_large = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > body::MAX_BODY_BYTES);
    too_large.then(|| error::ApiError::payload_too_large().into_response())
}

/// Refuses oversized requests up front, tags the request with an id (the client's
/// `X-Request-Id` when it is sane), and logs one line when it is answered.
pub(crate) async fn observe<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let request_id = req
        .header("x-request-id")
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned);
    let method = req.method().clone();
    // Bounded, so that a long target does not end up whole in the log line either.
    let path: String = req.uri().path().chars().take(256).collect();
    let span = tracing::info_span!("request", request_id = %request_id);
    let started = Instant::now();
    let refused = refuse_by_size(&req);
    // A key that is not text would look absent to the typed header: refuse it here, or a
    // retry carrying it would reserve twice.
    let bad_key = req
        .headers()
        .get("idempotency-key")
        .is_some_and(|v| v.to_str().is_err());
    let mut resp = if let Some(refused) = refused {
        refused
    } else if bad_key {
        error::ApiError::from(service::Error::validation(
            "Idempotency-Key",
            "must contain only visible ASCII characters",
        ))
        .into_response()
    } else {
        match next.call(req).instrument(span.clone()).await {
            Ok(r) => r.into_response(),
            Err(e) => error::catch_all(e).await,
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED
        && let Ok(v) = HeaderValue::from_str(allowed_methods(&path))
    {
        // RFC 9110: a 405 lists the methods the resource does support.
        resp.headers_mut().insert("allow", v);
    }
    let route = route_of(&path).map_or("other", |(template, _, _)| template.as_str());
    let status = resp.status().as_u16().to_string();
    let labels = [route, method_label(&method), status.as_str()];
    let m = service::metrics::metrics();
    m.http_requests.with_label_values(&labels).inc();
    m.http_latency
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            %method,
            %path,
            status = resp.status().as_u16(),
            latency_us = started.elapsed().as_micros() as u64,
            "request"
        );
    });
    Ok(resp)
}
