//! Webhook signatures: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::Error;

/// Largest distance between `t` and now that is accepted, in seconds.
pub const TOLERANCE_SECS: i64 = 300;

/// Verifies `header` over `body` against any of `secrets` at time `now_secs`.
pub fn verify(
    secrets: &[String],
    header: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), Error> {
    let header = header.ok_or(Error::InvalidSignature("missing X-Signature header"))?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
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
    for secret in secrets {
        for signature in &signatures {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(t_text.as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            if mac.verify_slice(signature).is_ok() {
                return Ok(());
            }
        }
    }
    Err(Error::InvalidSignature("X-Signature does not match"))
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
    fn stale_or_future_timestamps_are_refused() {
        let old = sign("new", NOW - TOLERANCE_SECS - 1, b"{}");
        assert!(verify(&secrets(), Some(&old), b"{}", NOW).is_err());
        let future = sign("new", NOW + TOLERANCE_SECS + 1, b"{}");
        assert!(verify(&secrets(), Some(&future), b"{}", NOW).is_err());
        let edge = sign("new", NOW - TOLERANCE_SECS, b"{}");
        assert!(verify(&secrets(), Some(&edge), b"{}", NOW).is_ok());
    }
}
