//! Rust client of the flashsale API, generated at build time from the committed
//! `openapi.yaml` by progenitor: whatever the spec says is what this crate can call.

progenitor::generate_api!(spec = "../openapi.yaml", interface = Builder, tags = Merged);
