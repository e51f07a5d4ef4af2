//! Requests as a customer (a bearer token, or none for an anonymous shopper), products
//! with sale settings, and the RFC 3339 instants those settings are written in.
//!
//! Everything here is raw JSON over [`TestApp::request`], not the SDK: the tests of the
//! sales contract must send headers and fields the generated client may not know.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{ADMIN_TOKEN, Reply, TestApp};

impl TestApp {
    /// `POST /api/holds` `{product_id, qty}` as the holder of `token` (anonymous for
    /// `None`), with `key` as its `Idempotency-Key` if there is one.
    pub async fn hold_as(
        &self,
        token: Option<&str>,
        product_id: i64,
        qty: i64,
        key: Option<&str>,
    ) -> Reply {
        let body = json!({"product_id": product_id, "qty": qty});
        let bearer = token.map(bearer);
        let mut headers = Vec::new();
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        self.request(Method::POST, "/api/holds", Some(&body), &headers)
            .await
    }

    /// `GET path` as the holder of `token` (anonymous for `None`).
    pub async fn get_as(&self, token: Option<&str>, path: &str) -> Reply {
        let bearer = token.map(bearer);
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        self.request(Method::GET, path, None, &headers).await
    }

    /// `POST /api/orders` `{hold_id}` as the holder of `token` (anonymous for `None`).
    pub async fn order_as(&self, token: Option<&str>, hold_id: i64) -> Reply {
        let body = json!({"hold_id": hold_id});
        let bearer = token.map(bearer);
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        self.request(Method::POST, "/api/orders", Some(&body), &headers)
            .await
    }

    /// `PATCH /api/admin/products/{product}` with the admin token and exactly `body`.
    pub async fn patch_product(&self, product: i64, body: &Value) -> Reply {
        let admin = bearer(ADMIN_TOKEN);
        let path = format!("/api/admin/products/{product}");
        self.request(
            Method::PATCH,
            &path,
            Some(body),
            &[("authorization", &admin)],
        )
        .await
    }

    /// The product as served (`GET /api/products/{id}`, asserting 200).
    pub async fn product_json(&self, product: i64) -> Value {
        let r = self.get(&format!("/api/products/{product}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// `POST /api/admin/products` with the admin token and exactly `body`.
    pub async fn post_product(&self, body: &Value) -> Reply {
        let admin = bearer(ADMIN_TOKEN);
        self.request(
            Method::POST,
            "/api/admin/products",
            Some(body),
            &[("authorization", &admin)],
        )
        .await
    }

    /// Creates a product from `body` (a JSON object, typically with sale settings such as
    /// `sale_starts_at`, `sale_ends_at`, `max_per_customer`), asserting 201, and returns its
    /// id. `name`, `price_cents` and `total_stock` default to `"Sale sneaker"`, 100 and 100
    /// where `body` leaves them out.
    pub async fn create_sale_product(&self, body: Value) -> i64 {
        let mut body = body;
        let fields = body
            .as_object_mut()
            .expect("create_sale_product takes a JSON object");
        fields
            .entry("name")
            .or_insert_with(|| json!("Sale sneaker"));
        fields.entry("price_cents").or_insert_with(|| json!(100));
        fields.entry("total_stock").or_insert_with(|| json!(100));
        let r = self.post_product(&body).await;
        assert_eq!(r.status, 201, "POST /api/admin/products {body}: {}", r.body);
        r.body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("a product without id: {}", r.body))
    }
}

/// The `Authorization` value that presents `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `unix_secs` as an RFC 3339 UTC instant, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The instant an RFC 3339 text names, in Unix milliseconds (fractions below a
/// millisecond dropped); `None` when `text` is not RFC 3339.
pub fn rfc3339_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let separators_ok = b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && b.get(13) == Some(&b':')
        && b.get(16) == Some(&b':');
    if !separators_ok
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let digits = &text[start..i.min(start + 3)];
        millis = digits.parse::<i64>().ok()? * 10_i64.pow(3 - digits.len() as u32);
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            let off = oh * 3600 + om * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let unix = days * 86_400 + h * 3600 + mi * 60 + s - offset_secs;
    Some(unix * 1000 + millis)
}

/// The civil date (year, month, day) of `days` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    // Howard Hinnant's algorithm: eras of 400 years, years starting in March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of the civil date `y-m-d` (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_writes_utc_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_893_456_000 + 3661), "2030-01-01T01:01:01Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_millis_reads_what_servers_write() {
        let at = 1_893_456_000_000;
        for text in [
            "2030-01-01T00:00:00Z",
            "2030-01-01T00:00:00.000Z",
            "2030-01-01T00:00:00.000000+00:00",
            "2030-01-01T02:00:00+02:00",
            "2029-12-31T23:30:00-00:30",
        ] {
            assert_eq!(rfc3339_millis(text), Some(at), "{text}");
        }
        assert_eq!(rfc3339_millis("2030-01-01T00:00:00.25Z"), Some(at + 250));
        for secs in [0, 951_782_400, 1_893_459_661, -1] {
            assert_eq!(rfc3339_millis(&rfc3339(secs)), Some(secs * 1000));
        }
        for bad in [
            "",
            "tomorrow",
            "2030-01-01",
            "2030-01-01T00:00:00",
            "2030-13-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339_millis(bad), None, "{bad}");
        }
    }
}
