//! A subscriber to `GET /api/products/{id}/stream`: reads the server-sent events as a
//! browser's `EventSource` would, and says when each arrived.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream::BoxStream};
use serde_json::Value;

use crate::{Reply, TestApp};

/// One server-sent event, or a comment line.
#[derive(Clone, Debug)]
pub struct SseEvent {
    /// The `event:` field; empty for a comment.
    pub event: String,
    /// The `data:` field parsed as JSON; `Null` for a comment.
    pub data: Value,
    /// When its last byte was read.
    pub at: Instant,
}

impl SseEvent {
    /// `true` for a comment line (a keep-alive).
    pub fn is_comment(&self) -> bool {
        self.event.is_empty() && self.data.is_null()
    }
}

/// An open live stock stream.
pub struct ProductStream {
    body: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: String,
    /// The response's `Content-Type`.
    pub content_type: String,
}

impl TestApp {
    /// Opens product `product`'s stream; the answer when it is not 200.
    pub async fn stream(&self, product: &str) -> Result<ProductStream, Reply> {
        // No overall timeout: a stream lives as long as the test wants it.
        let client = reqwest::Client::new();
        let resp = client
            .get(self.url(&format!("/api/products/{product}/stream")))
            .send()
            .await
            .expect("stream request");
        if resp.status() != 200 {
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.json().await.unwrap_or(Value::Null);
            return Err(Reply {
                status,
                headers,
                body,
            });
        }
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(ProductStream {
            body: resp.bytes_stream().map(|c| c.map(|b| b.to_vec())).boxed(),
            buffer: String::new(),
            content_type,
        })
    }
}

impl ProductStream {
    /// The next event or comment within `within`; `None` when none came or the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next `product` event within `within`, skipping comments.
    pub async fn next_product(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next(left).await?;
            if !event.is_comment() {
                assert_eq!(event.event, "product", "unexpected event {event:?}");
                return Some(event);
            }
        }
    }

    /// Reads `product` events until one satisfies `wanted`, within `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Option<SseEvent> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let event = self.next_product(left).await?;
            if wanted(&event.data) {
                return Some(event);
            }
        }
    }

    /// `true` when the server ends the stream within `within`.
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Takes one complete event (or comment) off the buffer.
    fn parse_one(&mut self) -> Option<SseEvent> {
        let end = self.buffer.find("\n\n")?;
        let block: String = self.buffer.drain(..end + 2).collect();
        let mut event = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        let data = if data.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&data).expect("event data is JSON")
        };
        Some(SseEvent {
            event,
            data,
            at: Instant::now(),
        })
    }
}
