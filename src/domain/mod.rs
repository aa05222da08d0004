//! The domain: what a verification is and every rule about it. Only this module decides a
//! verification's state changes (the store carries them out, atomically); flows, the
//! dialer, the API and the CLI ask it.
//!
//! - [`verification`]: the entity, its policy and what the web app sees; checks on input.
//! - [`verifications`]: the service: create, read, cancel; a call's start, code checks and
//!   end; the web app's checks (read-code mode); the dialer's queue; upkeep; (its
//!   `read_backs` part) the read-backs of wrong spoken codes a number and a user may have;
//!   and (its `cluster` part) this daemon's registration and heartbeat among the daemons on
//!   a store.
//! - [`status`]: statuses and call outcomes, with their stored names.
//! - [`codes`], [`sealed`], [`phone`], [`api_keys`], [`callback`]: codes, their keyed hashes and
//!   the sealed codes a read-code call says; numbers,
//!   the destination policy and masking; the web app's credentials; where webhooks may go.
//! - [`clock`], [`ids`]: time as stored and shown; ids and secret tokens.
//! - [`metrics`]: counters of what happened, for `/metrics`.

pub mod api_keys;
pub mod callback;
pub mod clock;
pub mod codes;
pub mod ids;
pub mod metrics;
pub mod phone;
pub mod sealed;
pub mod status;
pub mod verification;
pub mod verifications;

pub use status::{CallOutcome, Mode, Status};
pub use verification::{
    Call, CallStart, CodeCheck, DialJob, Machine, NewVerification, Policy, Registered, Started,
    TrunkCaps, Verification, VerifyError, View,
};
pub use verifications::Verifications;
