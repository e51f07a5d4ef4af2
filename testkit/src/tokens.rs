//! Customer tokens as the shop's login would issue them, and as an attacker would forge
//! them: HS256 with a shared secret, RS256 and ES256 with the committed test keys, and
//! `alg: none` built by hand.
//!
//! The keys under `testkit/keys/` are TEST-ONLY keys, generated once with the `openssl`
//! CLI and committed so that tests are reproducible. They protect nothing and must never
//! be configured on a real server.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::unix_now;

/// The HS256 secret test servers are started with (through [`CUSTOMER_ENV`]).
pub const CUSTOMER_SECRET: &str = "test-customer-secret-0123456789abcdef";

/// The environment that configures a test server to verify [`customer_token`]s.
pub const CUSTOMER_ENV: [(&str, &str); 1] = [("CUSTOMER_JWT_SECRET", CUSTOMER_SECRET)];

/// TEST-ONLY RSA private key (PKCS#8 PEM, 2048 bits) that signs RS256 tokens.
pub const RSA_PRIVATE_PEM: &str = include_str!("../keys/rsa-private.pem");

/// TEST-ONLY RSA public key (SPKI PEM) matching [`RSA_PRIVATE_PEM`].
pub const RSA_PUBLIC_PEM: &str = include_str!("../keys/rsa-public.pem");

/// Path of [`RSA_PUBLIC_PEM`], for a server's `CUSTOMER_JWT_PUBLIC_KEY_FILE`.
pub const RSA_PUBLIC_KEY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/rsa-public.pem");

/// TEST-ONLY P-256 private key (PKCS#8 PEM) that signs ES256 tokens.
pub const EC_PRIVATE_PEM: &str = include_str!("../keys/ec-private.pem");

/// TEST-ONLY P-256 public key (SPKI PEM) matching [`EC_PRIVATE_PEM`].
pub const EC_PUBLIC_PEM: &str = include_str!("../keys/ec-public.pem");

/// Path of [`EC_PUBLIC_PEM`], for a server's `CUSTOMER_JWT_PUBLIC_KEY_FILE`.
pub const EC_PUBLIC_KEY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/keys/ec-public.pem");

/// How long a [`customer_claims`] token lives.
pub const TOKEN_LIFETIME_SECS: i64 = 600;

/// How a token is signed.
#[derive(Clone, Copy, Debug)]
pub enum TokenKey<'a> {
    /// HS256 with these bytes as the shared secret (any text, such as a PEM public key for
    /// the algorithm-confusion attack).
    Hs256(&'a str),
    /// HS512 with these bytes as the shared secret: an HMAC algorithm other than the one a
    /// server with `CUSTOMER_JWT_SECRET` expects.
    Hs512(&'a str),
    /// RS256 with [`RSA_PRIVATE_PEM`].
    Rs256,
    /// ES256 with [`EC_PRIVATE_PEM`].
    Es256,
    /// No signature at all: header `{"alg":"none","typ":"JWT"}` and an empty third part.
    None,
}

/// The claims of a valid token for customer `sub`: `sub`, `iat` = now and
/// `exp` = now + [`TOKEN_LIFETIME_SECS`].
pub fn customer_claims(sub: &str) -> Value {
    let now = unix_now();
    json!({"sub": sub, "iat": now, "exp": now + TOKEN_LIFETIME_SECS})
}

/// A valid HS256 token for customer `sub`, signed with [`CUSTOMER_SECRET`].
pub fn customer_token(sub: &str) -> String {
    token(TokenKey::Hs256(CUSTOMER_SECRET), &customer_claims(sub))
}

/// A token carrying exactly `claims` (any JSON object: expired, without `sub`, with `nbf`,
/// `iss` or `aud`…), signed as `key` says.
pub fn token(key: TokenKey<'_>, claims: &Value) -> String {
    let (alg, key) = match key {
        TokenKey::Hs256(secret) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key"),
        ),
        TokenKey::Hs512(secret) => (
            Algorithm::HS512,
            EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key"),
        ),
        TokenKey::Rs256 => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("the test RSA key"),
        ),
        TokenKey::Es256 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("the test EC key"),
        ),
        TokenKey::None => return unsigned_token(claims),
    };
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("token signed")
}

/// An `alg: none` token carrying `claims`: the header and claims base64url-encoded, and an
/// empty signature (`<header>.<claims>.`), as the classic forgery sends it.
pub fn unsigned_token(claims: &Value) -> String {
    let header = br#"{"alg":"none","typ":"JWT"}"#;
    format!(
        "{}.{}.",
        base64url(header),
        base64url(claims.to_string().as_bytes())
    )
}

/// Unpadded base64url (RFC 4648 §5), as JWTs encode their parts.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // A chunk of k bytes yields k + 1 characters; no padding.
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[sextet as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[test]
    fn base64url_matches_the_rfc_4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64url(plain.as_bytes()), encoded);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn unsigned_token_has_the_none_header_and_no_signature() {
        let t = unsigned_token(&json!({"sub": "mallory"}));
        assert_eq!(
            t,
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5In0."
        );
    }

    #[test]
    fn signed_tokens_verify_with_their_keys() {
        let claims = customer_claims("alice");
        let cases = [
            (
                token(TokenKey::Hs256(CUSTOMER_SECRET), &claims),
                Algorithm::HS256,
                DecodingKey::from_secret(CUSTOMER_SECRET.as_bytes()).unwrap(),
            ),
            (
                token(TokenKey::Rs256, &claims),
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM.as_bytes()).unwrap(),
            ),
            (
                token(TokenKey::Es256, &claims),
                Algorithm::ES256,
                DecodingKey::from_ec_pem(EC_PUBLIC_PEM.as_bytes()).unwrap(),
            ),
        ];
        for (t, alg, key) in cases {
            let data = jsonwebtoken::decode::<Value>(&t, &key, &Validation::new(alg))
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(data.claims["sub"], "alice");
        }
        assert!(std::path::Path::new(RSA_PUBLIC_KEY_FILE).is_file());
        assert!(std::path::Path::new(EC_PUBLIC_KEY_FILE).is_file());
    }
}
