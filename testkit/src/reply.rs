//! Answers as the tests see them when they assert errors: status, headers and JSON body
//! ([`Reply`]), and the raw requests that can send what the SDK never would.

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

use crate::TestApp;

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The JSON body; a JSON string for a body that is not JSON, `null` for none.
    pub body: Value,
}

impl Reply {
    /// The `code` of an error body.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Whether the answer is a replay of an earlier one (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// Asserts an error answer: `status`, `code` and a non-empty message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.code(), code, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without message: {}",
            self.body
        );
    }

    /// The body as the SDK's type `T`, for an answer the test knows is a success (such as
    /// a 201 among the parallel answers of a race).
    #[track_caller]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|e| panic!("not the expected answer ({e}): {}", self.body))
    }

    /// An SDK answer, success or documented error, as a [`Reply`].
    pub(crate) fn from_sdk<T: serde::Serialize>(result: crate::sdk::SdkResult<T>) -> Self {
        match result {
            Ok(rv) => Self::from_value(rv),
            Err(client::Error::ErrorResponse(rv)) => Self::from_value(rv),
            Err(e) => panic!("the response does not match openapi.yaml: {e}"),
        }
    }

    /// A decoded SDK answer, encoded again as JSON.
    fn from_value<B: serde::Serialize>(rv: client::ResponseValue<B>) -> Self {
        let status = rv.status();
        let headers = rv.headers().clone();
        let body = serde_json::to_value(rv.into_inner()).expect("serialisable");
        Self {
            status,
            headers,
            body,
        }
    }
}

impl TestApp {
    /// Sends a request with an optional JSON body and extra headers.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let raw = body.map(|b| b.to_string().into_bytes());
        self.request_raw(method, path, raw, headers).await
    }

    /// Sends raw body bytes as `application/json`.
    pub async fn request_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.client.request(method, self.url(path));
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// POSTs `body` chunked (no length announced) to `path` with `headers`, and asserts it
    /// is refused 413 `payload_too_large`. The server answers as soon as the limit is
    /// passed and may close the connection while the client is still writing (a broken
    /// pipe here), so a few attempts are made, each on a connection of its own: at least
    /// one must read the 413 and its body.
    pub async fn assert_chunked_refused_413(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) {
        for _ in 0..5 {
            let chunks: Vec<_> = body
                .chunks(8 * 1024)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect();
            let mut req = reqwest::Client::new()
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match req.send().await {
                Ok(r) => {
                    assert_eq!(r.status(), 413);
                    let body: Value = r.json().await.expect("a JSON error body");
                    assert_eq!(body["code"], "payload_too_large");
                    return;
                }
                // An early close shows as a broken pipe while writing, or as a connection
                // that ended before a whole answer could be read.
                Err(e) => assert!(
                    ["BrokenPipe", "IncompleteMessage", "ConnectionReset"]
                        .iter()
                        .any(|early_close| format!("{e:?}").contains(early_close))
                        || e.is_body(),
                    "only an early close is acceptable: {e:?}"
                ),
            }
        }
        panic!("no chunked attempt read the 413 answer");
    }

    /// The value of the sample `series` (name and labels, as printed) in `GET /metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, 200);
        let text = r.body.as_str().expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, &[]).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(&body), &[]).await
    }
}

/// The id of the hold a 201 answer created.
#[track_caller]
pub fn hold_id(r: &Reply) -> i64 {
    assert_eq!(r.status, 201, "expected a new hold: {}", r.body);
    r.body["hold_id"].as_i64().expect("hold_id")
}

/// The id of the order a 201 answer created.
#[track_caller]
pub fn order_id(r: &Reply) -> i64 {
    assert_eq!(r.status, 201, "expected a new order: {}", r.body);
    r.body["id"].as_i64().expect("order id")
}
