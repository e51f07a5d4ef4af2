//! Customer tokens: the key a shop's login signs them with, and their verification.
//!
//! The algorithm is pinned to the configured key: HS256 for `CUSTOMER_JWT_SECRET`, RS256
//! for an RSA public key, ES256 for a P-256 one. A token whose header names any other
//! algorithm (`none`, or HS256 signed with the public key's text) is refused before its
//! signature is looked at.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use service::sales::CustomerId;

/// Leeway for `exp` and `nbf`, in seconds: clocks of the shop's login and of this server
/// may differ by this much.
pub const LEEWAY_SECS: u64 = 30;
/// Shortest HS256 secret accepted: as long as the hash (RFC 7518, section 3.2).
const MIN_SECRET_BYTES: usize = 32;

/// Where customer tokens' keys come from. Neither set: every request is anonymous, and a
/// request that sends a token is refused.
#[derive(Args, Clone, Debug, Default)]
pub struct CustomerTokenConfig {
    /// HS256 secret the shop's login signs customer tokens with (at least 32 bytes).
    #[arg(long, env = "CUSTOMER_JWT_SECRET", hide_env_values = true)]
    pub customer_jwt_secret: Option<String>,

    /// PEM file of the public key customer tokens are verified with: RSA (RS256) or
    /// P-256 (ES256). Instead of CUSTOMER_JWT_SECRET.
    #[arg(long, env = "CUSTOMER_JWT_PUBLIC_KEY_FILE")]
    pub customer_jwt_public_key_file: Option<PathBuf>,

    /// When set, a customer token's `iss` must be this.
    #[arg(long, env = "CUSTOMER_JWT_ISSUER")]
    pub customer_jwt_issuer: Option<String>,

    /// When set, a customer token's `aud` must include this.
    #[arg(long, env = "CUSTOMER_JWT_AUDIENCE")]
    pub customer_jwt_audience: Option<String>,
}

/// Verifies customer tokens with the configured key.
pub struct CustomerTokens {
    key: DecodingKey,
    validation: Validation,
}

/// The claims read from a verified token; `exp`, `nbf`, `iss` and `aud` are checked by
/// the validation itself.
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl CustomerTokens {
    /// The verifier `config` describes; `None` when no key is configured. Fails on a key
    /// that cannot verify anything: both kinds given, an unreadable or unknown PEM, or a
    /// short secret.
    pub fn from_config(config: &CustomerTokenConfig) -> anyhow::Result<Option<Self>> {
        let secret = config
            .customer_jwt_secret
            .as_deref()
            .filter(|s| !s.is_empty());
        let (key, algorithm) = match (secret, &config.customer_jwt_public_key_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => anyhow::bail!(
                "set CUSTOMER_JWT_SECRET or CUSTOMER_JWT_PUBLIC_KEY_FILE, not both: one key \
                 pins the algorithm customer tokens are verified with"
            ),
            (Some(secret), None) => {
                anyhow::ensure!(
                    secret.len() >= MIN_SECRET_BYTES,
                    "CUSTOMER_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long"
                );
                (
                    DecodingKey::from_secret(secret.as_bytes())?,
                    Algorithm::HS256,
                )
            }
            (None, Some(path)) => public_key(path)?,
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &config.customer_jwt_issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.customer_jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Otherwise the crate refuses every token that carries an `aud`.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self { key, validation }))
    }

    /// The customer a token names, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<CustomerId, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| format!("the customer token is not valid: {e}"))?;
        CustomerId::parse(&data.claims.sub).ok_or_else(|| {
            "the customer token's sub must be 1 to 128 visible ASCII characters".to_owned()
        })
    }
}

/// Reads the public key at `path` and the algorithm its kind pins.
fn public_key(path: &PathBuf) -> anyhow::Result<(DecodingKey, Algorithm)> {
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read CUSTOMER_JWT_PUBLIC_KEY_FILE {}",
            path.display()
        )
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // ES256 is P-256, whose public point is 65 bytes (33 compressed); P-384 and P-521
        // points are longer. Any other curve would start fine and refuse every token.
        let point = key.try_get_as_bytes()?.len();
        anyhow::ensure!(
            matches!(point, 33 | 65),
            "CUSTOMER_JWT_PUBLIC_KEY_FILE {} is an EC key of another curve than P-256 (ES256)",
            path.display()
        );
        return Ok((key, Algorithm::ES256));
    }
    anyhow::bail!(
        "CUSTOMER_JWT_PUBLIC_KEY_FILE {} is not a PEM RSA or EC public key",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    /// A P-384 public key: EC, but not the curve of ES256.
    const P384_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEZ0AnRiSLyqUbj9RN/etJMkJvoaw4LOc8
3d6zzWDBUH0d0Vrq7SuGGer+1TqbN8oyzkIw9l3FvORpC1kk4FfQ1KJ6yrY+cdx1
bEQRI5v+oW30GLIV6YWjfnkQy8XRVLJ4
-----END PUBLIC KEY-----
";

    fn tokens(config: CustomerTokenConfig) -> CustomerTokens {
        CustomerTokens::from_config(&config)
            .expect("valid")
            .expect("configured")
    }

    fn hs256(claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("a key");
        encode(&Header::new(Algorithm::HS256), &claims, &key).expect("signs")
    }

    fn secret_config() -> CustomerTokenConfig {
        CustomerTokenConfig {
            customer_jwt_secret: Some(SECRET.into()),
            ..Default::default()
        }
    }

    fn exp() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn a_valid_token_names_its_customer() {
        let t = tokens(secret_config());
        let id = t.verify(&hs256(json!({"sub": "alice", "exp": exp()})));
        assert_eq!(id.expect("valid").as_str(), "alice");
    }

    #[test]
    fn sub_and_exp_are_required_and_checked() {
        let t = tokens(secret_config());
        let past = jsonwebtoken::get_current_timestamp() - LEEWAY_SECS - 5;
        for claims in [
            json!({"exp": exp()}),
            json!({"sub": "alice"}),
            json!({"sub": "alice", "exp": past}),
            json!({"sub": "", "exp": exp()}),
            json!({"sub": "a b", "exp": exp()}),
            json!({"sub": 42, "exp": exp()}),
            json!({"sub": "alice", "exp": exp(), "nbf": exp()}),
        ] {
            assert!(t.verify(&hs256(claims.clone())).is_err(), "{claims}");
        }
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let t = tokens(CustomerTokenConfig {
            customer_jwt_issuer: Some("shop".into()),
            customer_jwt_audience: Some("flashsale".into()),
            ..secret_config()
        });
        let good = json!({"sub": "a", "exp": exp(), "iss": "shop", "aud": "flashsale"});
        assert!(t.verify(&hs256(good)).is_ok());
        let bad_iss = json!({"sub": "a", "exp": exp(), "iss": "other", "aud": "flashsale"});
        assert!(t.verify(&hs256(bad_iss)).is_err());
        let no_aud = json!({"sub": "a", "exp": exp(), "iss": "shop"});
        assert!(t.verify(&hs256(no_aud)).is_err());
        let unconfigured = tokens(secret_config());
        let with_aud = json!({"sub": "a", "exp": exp(), "aud": "anything"});
        assert!(unconfigured.verify(&hs256(with_aud)).is_ok());
    }

    #[test]
    fn keys_that_cannot_verify_are_refused_at_start() {
        let short = CustomerTokenConfig {
            customer_jwt_secret: Some("short".into()),
            ..Default::default()
        };
        assert!(CustomerTokens::from_config(&short).is_err());
        let both = CustomerTokenConfig {
            customer_jwt_public_key_file: Some("/nonexistent.pem".into()),
            ..secret_config()
        };
        assert!(CustomerTokens::from_config(&both).is_err());
        let p384 = std::env::temp_dir().join(format!("p384-{}.pem", std::process::id()));
        std::fs::write(&p384, P384_PUBLIC_KEY).expect("write");
        let other_curve = CustomerTokenConfig {
            customer_jwt_public_key_file: Some(p384.clone()),
            ..Default::default()
        };
        let refused = CustomerTokens::from_config(&other_curve)
            .err()
            .map(|e| e.to_string());
        std::fs::remove_file(&p384).ok();
        assert!(refused.is_some_and(|e| e.contains("P-256")));
        let missing = CustomerTokenConfig {
            customer_jwt_public_key_file: Some("/nonexistent.pem".into()),
            ..Default::default()
        };
        assert!(CustomerTokens::from_config(&missing).is_err());
        assert!(
            CustomerTokens::from_config(&CustomerTokenConfig::default())
                .expect("fine")
                .is_none()
        );
    }
}
