//! The Asterisk Manager Interface: how the dialer places calls (`Originate`) and learns how
//! they went (`OriginateResponse`, `Hangup`).

pub mod client;
pub mod message;

pub use client::{Ami, AmiConfig, AmiError, AmiState, EventFilter};
pub use message::Message;
