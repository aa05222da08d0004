//! callverify: a self-hosted phone-verification service for Asterisk.
//!
//! The layout follows DESIGN.md: `agi` speaks FastAGI, `flow` drives calls, `verifications`
//! holds the rules, `store` persists them, `daemon` wires them together.

pub mod agi;
pub mod ami;
pub mod api;
pub mod audiosocket;
pub mod codes;
pub mod config;
pub mod console;
pub mod daemon;
pub mod dialer;
pub mod emulator;
pub mod flow;
pub mod gate;
pub mod keys;
pub mod lines;
pub mod metrics;
pub mod phone;
pub mod probe;
pub mod speech;
pub mod store;
pub mod support;
pub mod verifications;
pub mod wav;
pub mod webhooks;
