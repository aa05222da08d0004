//! SIP over UDP for the probe: rsip parses and builds the messages; this module adds what
//! rsip leaves out: the socket, RFC 3261's client transactions with their retransmission
//! timers, the dialog's identifiers, and digest authentication.

pub mod digest;
pub mod message;
pub mod transaction;
pub mod transport;

pub use message::Dialog;
pub use transaction::{Timers, TransactionError};
pub use transport::{Endpoint, Inbound};
