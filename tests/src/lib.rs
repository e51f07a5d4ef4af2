//! The black-box suite of flashsale lives in `tests/blackbox`; its harness is the `testkit`
//! crate.
