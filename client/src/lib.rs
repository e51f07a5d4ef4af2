//! Rust client of the flashsale API, generated at build time from the committed
//! `openapi.yaml` by progenitor: whatever the spec says is what this crate can call.

// Generated items carry the spec's descriptions; where `openapi.yaml` has none there is no
// doc to give, and the spec is generated from the server's code, not written here.
#![allow(missing_docs)]

progenitor::generate_api!(spec = "../openapi.yaml", interface = Builder, tags = Merged);
