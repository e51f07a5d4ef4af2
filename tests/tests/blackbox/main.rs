//! Black-box tests: the real `flashsale-api` (and `flashsale-worker audit`) over HTTP, a
//! fresh database per test, every test on SQLite and on PostgreSQL; the demo storefront in
//! a headless Chromium.

mod concurrency;
mod connections;
mod contract;
mod demo;
mod edges;
mod expiry;
mod faults;
mod letting_go;
mod lifecycle;
mod live;
mod sales;
mod spec;
mod storefront;
mod storms;
mod trust;
mod upgrade;
mod webhook;
mod worker;
