//! callverify: a self-hosted phone-verification service for Asterisk.
//!
//! The application crate; `ARCHITECTURE.md` is the map. From the bottom up: `domain` (the
//! rules; the only place a verification's state changes), `store` (SQLite or Postgres),
//! `support` (the support line's requests and staff), `flow` (the FastAGI call scripts),
//! `outbound` (dialer, webhooks), `web` (the HTTP API and the staff console), `config` and
//! `daemon` (settings and wiring), `logging` (one escaped line per event). The protocols (`callverify-pbx`), audio, speech and the
//! QA probe are crates of their own under `crates/`.

pub mod config;
pub mod daemon;
pub mod doctor;
pub mod domain;
pub mod flow;
pub mod logging;
pub mod outbound;
pub mod store;
pub mod support;
pub mod web;
