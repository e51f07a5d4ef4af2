//! What every handler shares: the service, and the admin and webhook credentials.

use std::sync::Arc;

use service::Service;

use crate::customers::CustomerTokens;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shared by every handler.
pub struct AppState {
    /// The rules every handler calls into.
    pub svc: Service,
    /// SHA-256 of `ADMIN_TOKEN`; `None` disables the admin API.
    admin_token_hash: Option<[u8; 32]>,
    /// Secrets a webhook signature may be made with, in the order configured.
    pub webhook_secrets: Vec<String>,
    /// Verifies customer tokens; `None`: no customer key configured.
    pub customer_tokens: Option<CustomerTokens>,
}

/// The state handlers receive as `Data<&State>`.
pub type State = Arc<AppState>;

impl AppState {
    /// The state of a server over `svc`; an empty `admin_token` disables the admin API.
    pub fn new(
        svc: Service,
        admin_token: Option<&str>,
        webhook_secrets: Vec<String>,
        customer_tokens: Option<CustomerTokens>,
    ) -> Self {
        Self {
            svc,
            admin_token_hash: admin_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t).into()),
            webhook_secrets,
            customer_tokens,
        }
    }

    /// Compares in constant time; hashing first hides the token's length too.
    pub(crate) fn admin_token_matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.admin_token_hash else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented).into();
        presented.ct_eq(expected).into()
    }
}
