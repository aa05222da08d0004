//! Read-backs of wrong spoken codes. A spoken code that is right verifies at once, so reading
//! back a wrong one ("I heard 4 8 2 ...") tells the caller it was wrong, and costs no attempt
//! unless the caller confirms it: it is a guess, uncounted. A recognition slip must not cost
//! an attempt as easily as a keyed mistake, but the guesses must stay few: a number and a
//! user may have [`READ_BACKS`] read-backs within the lockout window, across all their calls
//! and verifications, kept in the store (so they hold across daemons and restarts). The call
//! asks before it offers spoken entry ([`Verifications::read_backs_left`]), and takes one
//! before it reads a code back ([`Verifications::take_read_back`]); when it gets none, the
//! code is checked as an attempt.

use super::Verifications;
use crate::domain::clock::now_ms;
use crate::domain::verification::{Call, VerifyError};
use crate::store::ReadBackRule;

/// Read-backs of wrong spoken codes a number and a user may have within the lockout window
/// (`verification.lockout_secs`), on top of their attempts.
pub const READ_BACKS: i64 = 2;

impl Verifications {
    /// Whether the call's number and user have read-backs left (a read: the call offers
    /// spoken entry only then).
    pub async fn read_backs_left(&self, call: &Call) -> Result<bool, VerifyError> {
        let v = &call.verification;
        let used = self
            .store
            .read_backs(&v.phone, &v.user_ref, self.strikes_since(now_ms()))
            .await?;
        Ok(used < READ_BACKS)
    }

    /// Take one read-back for a wrong spoken code of the right length, for the call's number
    /// and user at once (calls racing for the last one get it once). False: none is left (or
    /// the call may check no code any more), and the code is to be checked as an attempt.
    pub async fn take_read_back(&self, call: &Call) -> Result<bool, VerifyError> {
        let now = now_ms();
        let rule = ReadBackRule {
            max: READ_BACKS,
            forget_before: self.strikes_since(now),
        };
        let taken = self
            .store
            .take_read_back(&call.verification, call.attempt_id, rule, now)
            .await?;
        if !taken {
            tracing::info!("no read-back left: the spoken code is checked as an attempt");
        }
        Ok(taken)
    }
}
