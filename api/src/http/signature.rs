//! Webhook signatures: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
//!
//! The header is unauthenticated input, so the work it can cause is bounded before any
//! hashing: at most [`MAX_HEADER_BYTES`] and [`MAX_SIGNATURES`] `v1=` values, and one MAC
//! per configured secret whatever the number of values (each value is compared to it in
//! constant time).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use service::Error;

/// Largest distance between `t` and now that is accepted, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// Longest `X-Signature` accepted, in bytes: room for [`MAX_SIGNATURES`] values and more.
pub const MAX_HEADER_BYTES: usize = 1024;

/// Most `v1=` values one header may carry (a sender rotating secrets sends one per secret).
pub const MAX_SIGNATURES: usize = 8;

/// A parsed header: the timestamp as sent and the decoded candidate signatures.
struct Parsed<'a> {
    t_text: &'a str,
    signatures: Vec<Vec<u8>>,
}

/// Checks the header's shape and bounds; no hashing happens here.
fn parse(header: Option<&str>, now_secs: i64) -> Result<Parsed<'_>, Error> {
    let header = header.ok_or(Error::InvalidSignature("missing X-Signature header"))?;
    if header.len() > MAX_HEADER_BYTES {
        return Err(Error::InvalidSignature(
            "X-Signature is longer than 1024 bytes",
        ));
    }
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    if candidates.len() > MAX_SIGNATURES {
        return Err(Error::InvalidSignature(
            "X-Signature carries more than 8 v1= values",
        ));
    }
    let t_text = timestamp.ok_or(Error::InvalidSignature("malformed X-Signature: no t="))?;
    let t: i64 = t_text
        .parse()
        .map_err(|_| Error::InvalidSignature("malformed X-Signature: t is not a number"))?;
    if (now_secs - t).abs() > TOLERANCE_SECS {
        return Err(Error::InvalidSignature(
            "X-Signature timestamp is too far from now",
        ));
    }
    let signatures: Vec<Vec<u8>> = candidates
        .iter()
        .filter_map(|c| hex::decode(c).ok())
        .collect();
    if signatures.is_empty() {
        return Err(Error::InvalidSignature(
            "malformed X-Signature: no valid v1=",
        ));
    }
    Ok(Parsed { t_text, signatures })
}

/// The MAC of `"<t>.<body>"` under `secret`.
fn mac(secret: &str, t_text: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Whether any signature matches any secret, and how many MACs that took (one per secret
/// at most: the count is what bounds the CPU a forged request can cost).
fn matches(secrets: &[String], parsed: &Parsed<'_>, body: &[u8]) -> (bool, usize) {
    let mut computed = 0;
    for secret in secrets {
        let expected = mac(secret, parsed.t_text, body);
        computed += 1;
        // Every value is compared, so the time does not tell which one matched.
        let found = parsed
            .signatures
            .iter()
            .fold(subtle::Choice::from(0), |any, s| {
                any | expected.as_slice().ct_eq(s)
            });
        if bool::from(found) {
            return (true, computed);
        }
    }
    (false, computed)
}

/// Verifies `header` over `body` against any of `secrets` at time `now_secs`.
pub fn verify(
    secrets: &[String],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), Error> {
    let parsed = parse(header, now_secs)?;
    match matches(secrets, &parsed, body) {
        (true, _) => Ok(()),
        (false, _) => Err(Error::InvalidSignature("X-Signature does not match")),
    }
}

/// The header value a sender with `secret` would send at `t` (used by tests and tools).
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secrets() -> Vec<String> {
        vec!["old".into(), "new".into()]
    }

    #[test]
    fn a_correct_signature_from_any_secret_verifies() {
        for s in ["old", "new"] {
            let h = sign(s, NOW, b"{}");
            assert!(verify(&secrets(), Some(&h), b"{}", NOW).is_ok());
        }
    }

    #[test]
    fn wrong_body_secret_or_format_is_refused() {
        let h = sign("new", NOW, b"{}");
        assert!(verify(&secrets(), Some(&h), b"{ }", NOW).is_err());
        assert!(verify(&secrets(), Some(&sign("other", NOW, b"{}")), b"{}", NOW).is_err());
        for bad in [
            "",
            "t=",
            "v1=00",
            "t=abc,v1=00",
            "t=1800000000,v1=zz",
            "garbage",
        ] {
            assert!(verify(&secrets(), Some(bad), b"{}", NOW).is_err(), "{bad}");
        }
        assert!(verify(&secrets(), None, b"{}", NOW).is_err());
    }

    #[test]
    fn one_mac_per_secret_whatever_the_number_of_values() {
        let good = sign("new", NOW, b"{}");
        let (_, good_value) = good.split_once(',').unwrap();
        let header = format!("t={NOW},v1=00,{good_value}");
        let many_wrong = format!("t={NOW}{}", ",v1=00".repeat(MAX_SIGNATURES));
        let parsed = parse(Some(&many_wrong), NOW).unwrap();
        assert_eq!(matches(&secrets(), &parsed, b"{}"), (false, 2));
        let parsed = parse(Some(&header), NOW).unwrap();
        assert_eq!(parsed.signatures.len(), 2);
        assert_eq!(matches(&secrets(), &parsed, b"{}"), (true, 2));
    }

    #[test]
    fn headers_over_the_caps_are_refused_before_any_hashing() {
        let good = sign("new", NOW, b"{}");
        let too_many = format!("{good}{}", ",v1=00".repeat(MAX_SIGNATURES));
        assert!(parse(Some(&too_many), NOW).is_err());
        let too_long = format!("{good},x={}", "a".repeat(MAX_HEADER_BYTES));
        assert!(parse(Some(&too_long), NOW).is_err());
        let at_the_caps = format!("{good}{}", ",v1=00".repeat(MAX_SIGNATURES - 1));
        assert!(verify(&secrets(), Some(&at_the_caps), b"{}", NOW).is_ok());
    }

    #[test]
    fn stale_or_future_timestamps_are_refused() {
        let old = sign("new", NOW - TOLERANCE_SECS - 1, b"{}");
        assert!(verify(&secrets(), Some(&old), b"{}", NOW).is_err());
        let future = sign("new", NOW + TOLERANCE_SECS + 1, b"{}");
        assert!(verify(&secrets(), Some(&future), b"{}", NOW).is_err());
        let edge = sign("new", NOW - TOLERANCE_SECS, b"{}");
        assert!(verify(&secrets(), Some(&edge), b"{}", NOW).is_ok());
    }
}
