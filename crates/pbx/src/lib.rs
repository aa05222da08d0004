//! The protocols Asterisk speaks with callverify, and nothing else: no store, no HTTP, no
//! verification rules.
//!
//! - [`agi`]: the FastAGI server, one task per call, typed commands and replies.
//! - [`ami`]: an Asterisk Manager Interface client (login, `Originate`, events).
//! - [`audiosocket`]: the AudioSocket server that carries a caller's audio and keys.
//! - [`admission`]: who may connect to a listener, and how many at once.
//! - [`bounded_line`]: line framing with a length limit, for FastAGI and AMI.
//! - [`redact`]: what of a peer's text may reach a log.

pub mod admission;
pub mod agi;
pub mod ami;
pub mod audiosocket;
pub mod bounded_line;
pub mod redact;
