//! FastAGI: the protocol Asterisk speaks to the daemon over TCP (res_agi.c).
//!
//! `connection` frames lines, `env` reads the opening `agi_*` block, `command` encodes,
//! `reply` parses, `session` pairs them into typed calls, `server` accepts sessions.

pub mod command;
pub mod connection;
pub mod env;
pub mod reply;
pub mod server;
pub mod session;

pub use command::Command;
pub use env::AgiEnv;
pub use reply::{Reply, Success};
pub use server::{serve, Handler, ServerConfig};
pub use session::{AgiError, Digits, Session, Timeouts};
