//! Support staff: accounts with Argon2id password hashes (memory-hard, so a stolen table
//! resists guessing), and console sessions: a random token in an HttpOnly cookie, stored
//! hashed, with its own CSRF token for forms. Sign-in attempts are counted per name typed in
//! the store, by every daemon on it together, and throttled.

use std::time::Duration;

use argon2::password_hash::PasswordHasher;
use argon2::Argon2;
use subtle::ConstantTimeEq;

use super::account::{StaffAccount, StaffSession};
use super::actor::Actor;
use super::passwords::PasswordChecks;
use crate::domain::clock::{millis, now_ms};
use crate::domain::ids::{random_token, token_hash};
use crate::domain::status::StaffRole;
use crate::store::{Attempt, AttemptRule, AuditBudget, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    #[error("invalid staff name: use 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error("the password must be 12 to 1024 characters")]
    WeakPassword,
    #[error("a staff member named {0:?} exists already")]
    Exists(String),
    #[error("no active staff member named {0:?}")]
    Unknown(String),
    #[error("no disabled staff member named {0:?}")]
    NotDisabled(String),
    #[error("too many sign-ins for {0:?}: try again in 15 minutes")]
    Throttled(String),
    #[error("unknown time zone {0:?}: use an IANA name such as America/Los_Angeles")]
    UnknownZone(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The Argon2id hash of a new password (12 to 1024 characters), off the async threads: it
/// takes tens of milliseconds of CPU.
async fn hash_password(password: &str) -> Result<String, StaffError> {
    if !(12..=1024).contains(&password.chars().count()) {
        return Err(StaffError::WeakPassword);
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|e| StaffError::Hash(e.to_string()))?
    .map_err(|e| StaffError::Hash(e.to_string()))
}

/// Whether `zone` is a time zone staff times can be shown in (an IANA name).
pub fn check_zone(zone: &str) -> Result<(), StaffError> {
    jiff::tz::TimeZone::get(zone)
        .map(drop)
        .map_err(|_| StaffError::UnknownZone(zone.to_owned()))
}

/// A console session as the browser holds it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The cookie value (shown once; only its hash is stored).
    pub token: String,
    pub session: StaffSession,
}

pub struct Staff {
    store: Store,
    session_length: Duration,
    /// Password checks, two at a time on their own threads: each takes Argon2's 19 MiB
    /// and tens of milliseconds of a core, so a flood of sign-ins queues, its memory bounded.
    checks: PasswordChecks,
}

/// Who the audit log names for account changes: they are made with `callverify staff`, by
/// whoever may run it on the daemon's host.
const ACCOUNTS_ACTOR: &str = "cli";

/// Sign-in attempts allowed per name within [`FAILURE_WINDOW`] (a sliding window: each
/// counts for the window's length after it was made); a successful one forgets them.
const MAX_FAILURES: i64 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What every name not of a staff name's shape is counted and audited as, together: no
/// account has such a name, and a password typed into the name field stays out of the log.
const NOT_STAFF_NAME: &str = "(not a staff name)";

/// The audit log's failed and refused sign-ins, which anyone can cause: deleted after
/// `support.retention_days` ([`purge_sign_ins`]). Each name writes at most
/// [`MAX_FAILURES`] `sign_in_failed` and one `sign_in_throttled` within a window; names of
/// no account, all together, [`NO_ACCOUNT_AUDITED`] an hour (and one `sign_in_unaudited`).
const FAILED_SIGN_INS: [&str; 3] = ["sign_in_failed", "sign_in_throttled", "sign_in_unaudited"];

/// The detail of the audit entries about names of no account.
const NO_ACCOUNT: &str = "no such account";

/// Failed and refused sign-ins at names of no account audited at most within an hour, all
/// together: anyone who reaches the console can try endless names, five password checks
/// each, and the log would keep every one for `support.retention_days` (hundreds of
/// megabytes a day). Those at accounts are all audited.
const NO_ACCOUNT_AUDITED: i64 = 100;
const NO_ACCOUNT_SPAN: Duration = Duration::from_secs(3600);

/// The budget of audit entries about names of no account, at `now`.
fn no_account_budget(now: i64) -> AuditBudget {
    AuditBudget {
        actions: &["sign_in_failed", "sign_in_throttled"],
        max: NO_ACCOUNT_AUDITED,
        since: now.saturating_sub(millis(NO_ACCOUNT_SPAN)),
        over: (
            "sign_in_unaudited",
            "(names of no account)",
            "more than 100 failed or refused sign-ins at names of no account within an hour: \
             the rest of the hour's are not audited",
        ),
    }
}

/// What a password check found.
enum Opened {
    Session(SignedIn),
    /// An account's name (enabled or not) with a password that does not open it.
    Refused,
    /// No account has the name.
    NoAccount,
}

/// Audit entries deleted at most per purge.
const PURGE_BATCH: i64 = 10_000;

/// Forget the sign-in attempts whose window has passed at `now`, and the audit log's failed
/// and refused sign-ins older than `retention` (up to a batch); the audit entries deleted.
pub(super) async fn purge_sign_ins(
    store: &Store,
    now: i64,
    retention: Duration,
) -> Result<u64, StoreError> {
    store
        .purge_sign_ins(
            now.saturating_sub(millis(FAILURE_WINDOW)),
            &FAILED_SIGN_INS,
            now.saturating_sub(millis(retention)),
            PURGE_BATCH,
        )
        .await
}

/// Whether `name` has the form of a staff name (so it may be written to the audit log).
pub fn is_staff_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Staff {
    pub fn new(store: Store, session_length: Duration) -> Self {
        Self {
            store,
            session_length,
            checks: PasswordChecks::start(),
        }
    }

    pub async fn add(&self, username: &str, password: &str) -> Result<StaffAccount, StaffError> {
        if !is_staff_name(username) {
            return Err(StaffError::InvalidName);
        }
        let password_hash = hash_password(password).await?;
        let account = StaffAccount {
            id: random_token("stf_", 12),
            username: username.to_owned(),
            password_hash,
            created_at: now_ms(),
            disabled_at: None,
            role: StaffRole::Agent,
            time_zone: None,
        };
        if !self.store.insert_staff(account.clone()).await? {
            return Err(StaffError::Exists(username.to_owned()));
        }
        self.store
            .audit(
                ACCOUNTS_ACTOR,
                "staff_add",
                username,
                "",
                account.created_at,
            )
            .await?;
        Ok(account)
    }

    /// Give an active account a new password (a leaked one, a forgotten one) and end its
    /// console sessions.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), StaffError> {
        let password_hash = hash_password(password).await?;
        let now = now_ms();
        if !self
            .store
            .set_staff_password(username, &password_hash)
            .await?
        {
            return Err(StaffError::Unknown(username.to_owned()));
        }
        self.store
            .audit(ACCOUNTS_ACTOR, "staff_password", username, "", now)
            .await?;
        Ok(())
    }

    /// Make a disabled account active again; it signs in anew.
    pub async fn enable(&self, username: &str) -> Result<(), StaffError> {
        if !self.store.enable_staff(username).await? {
            return Err(StaffError::NotDisabled(username.to_owned()));
        }
        self.store
            .audit(ACCOUNTS_ACTOR, "staff_enable", username, "", now_ms())
            .await?;
        Ok(())
    }

    /// How long a sign-in lasts, for the cookie's Max-Age.
    pub fn session_secs(&self) -> u64 {
        self.session_length.as_secs()
    }

    pub async fn list(&self) -> Result<Vec<StaffAccount>, StoreError> {
        self.store.staff().await
    }

    pub async fn disable(&self, username: &str) -> Result<(), StaffError> {
        let now = now_ms();
        if self.store.disable_staff(username, now).await? {
            self.store
                .audit(ACCOUNTS_ACTOR, "staff_disable", username, "", now)
                .await?;
            Ok(())
        } else {
            Err(StaffError::Unknown(username.to_owned()))
        }
    }

    /// Check a password and open a session; `None` for a wrong name or password. After
    /// [`MAX_FAILURES`] attempts at a name (an account's or not) within 15 minutes, on any
    /// daemon of the store, its sign-ins are refused until the first of them is 15 minutes
    /// old; names not of a staff name's shape are counted together. Sign-ins and failed ones
    /// are audited, and the first refusal of a name in a window; refused ones are not.
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<SignedIn>, StaffError> {
        let shaped = is_staff_name(username);
        let name = if shaped { username } else { NOT_STAFF_NAME };
        let now = now_ms();
        let rule = AttemptRule {
            max: MAX_FAILURES,
            since: now.saturating_sub(millis(FAILURE_WINDOW)),
        };
        // The attempt is counted before the password is checked, in one store operation
        // under the name's lock: a burst of parallel guesses, on one daemon or several, gets
        // MAX_FAILURES checks, not one each.
        if let Attempt::Refused { first } = self.store.count_sign_in(name, rule, now).await? {
            if first {
                let account = shaped && self.store.staff_named(name).await?.is_some();
                self.audit_failure("sign_in_throttled", name, account, now)
                    .await?;
            }
            return Err(StaffError::Throttled(name.to_owned()));
        }
        // No account has a name of another shape: nothing to check.
        let opened = if shaped {
            self.open_session(username, password).await?
        } else {
            Opened::NoAccount
        };
        let now = now_ms();
        match opened {
            Opened::Session(signed_in) => {
                let session = &signed_in.session;
                let actor = Actor::staff(&session.username);
                self.store
                    .audit(actor.as_str(), "sign_in", &session.username, "", now)
                    .await?;
                Ok(Some(signed_in))
            }
            Opened::Refused => {
                self.audit_failure("sign_in_failed", name, true, now)
                    .await?;
                Ok(None)
            }
            Opened::NoAccount => {
                self.audit_failure("sign_in_failed", name, false, now)
                    .await?;
                Ok(None)
            }
        }
    }

    /// Audit a failed or refused sign-in at `name`: always at an account's, within the
    /// budget at a name of no account's. The same statements run either way (an account's
    /// budget has no end; past a budget its note is written to), so that the answer's timing
    /// does not tell which names are accounts.
    async fn audit_failure(
        &self,
        action: &'static str,
        name: &str,
        account: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        let budget = no_account_budget(now);
        let (detail, budget) = if account {
            let unbounded = AuditBudget {
                max: i64::MAX,
                ..budget
            };
            ("", unbounded)
        } else {
            (NO_ACCOUNT, budget)
        };
        self.store
            .audit_within("console", action, name, detail, now, budget)
            .await
            .map(drop)
    }

    async fn open_session(&self, username: &str, password: &str) -> Result<Opened, StaffError> {
        let named = self.store.staff_named(username).await?;
        let exists = named.is_some();
        let account = named.filter(|s| s.disabled_at.is_none());
        let hash = account.as_ref().map(|a| a.password_hash.clone());
        let matches = self.checks.matches(hash, password).await;
        let Some(account) = account else {
            return Ok(if exists {
                Opened::Refused
            } else {
                Opened::NoAccount
            });
        };
        if !matches {
            return Ok(Opened::Refused);
        }
        self.store.forget_sign_ins(username).await?;
        let token = random_token("cvs_", 32);
        let csrf_token = random_token("", 32);
        let now = now_ms();
        let expires = now + i64::try_from(self.session_length.as_millis()).unwrap_or(i64::MAX / 2);
        self.store
            .insert_staff_session(&token_hash(&token), &account.id, &csrf_token, now, expires)
            .await?;
        Ok(Opened::Session(SignedIn {
            token,
            session: StaffSession {
                staff_id: account.id,
                username: account.username,
                csrf_token,
                role: account.role,
                time_zone: account.time_zone,
            },
        }))
    }

    /// Give an account a role and a time zone (an IANA name; none: the support line's).
    pub async fn set(
        &self,
        username: &str,
        role: StaffRole,
        time_zone: Option<&str>,
    ) -> Result<(), StaffError> {
        if let Some(zone) = time_zone {
            check_zone(zone)?;
        }
        if !self
            .store
            .set_staff(username, role, time_zone.map(str::to_owned))
            .await?
        {
            return Err(StaffError::Unknown(username.to_owned()));
        }
        let detail = format!("role={role} time_zone={}", time_zone.unwrap_or("support"));
        self.store
            .audit(ACCOUNTS_ACTOR, "staff_set", username, &detail, now_ms())
            .await?;
        Ok(())
    }

    /// The session a cookie names, if current.
    pub async fn session(&self, token: &str) -> Result<Option<StaffSession>, StoreError> {
        if !token.starts_with("cvs_") || token.len() > 64 {
            return Ok(None);
        }
        self.store.staff_session(&token_hash(token), now_ms()).await
    }

    /// End `session` (its cookie's `token`, when the request still carries it), audited.
    pub async fn sign_out(
        &self,
        session: &StaffSession,
        token: Option<&str>,
    ) -> Result<(), StoreError> {
        if let Some(token) = token {
            self.store.delete_staff_session(&token_hash(token)).await?;
        }
        let actor = Actor::staff(&session.username);
        self.store
            .audit(actor.as_str(), "sign_out", &session.username, "", now_ms())
            .await
    }
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(session: &StaffSession, presented: &str) -> bool {
    !presented.is_empty() && bool::from(session.csrf_token.as_bytes().ct_eq(presented.as_bytes()))
}
