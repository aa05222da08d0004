//! The integration tests: one binary (linking every dependency once), a module per part.
//! They run the daemon in-process or as `callverify` processes, against real peers: a
//! Postgres server, sipp and baresip, Chromium, and the emulated Asterisk of
//! `callverify-testkit`. Run one part with `cargo test --test suite -- probe::`.

#[macro_use]
mod common;

mod agi_server;
mod api;
mod asterisk_kit;
mod audiosocket;
mod captures;
mod cli;
mod cluster;
mod configuration;
mod console;
mod creation;
mod dialer;
mod doctor;
mod faults;
mod probe;
mod read_code;
mod retention;
mod speech_endpointing;
mod speech_flow;
mod speech_recognition;
mod store;
mod support;
mod verify_flow;
mod webhooks;
