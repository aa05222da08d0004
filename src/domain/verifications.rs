//! The verification service: creation (number policy, lockouts, the code), status, and
//! what a call may do to it (start, check an entered code, end). Flows and the CLI call these;
//! only this module decides state changes.

use std::sync::Arc;
use std::time::Duration;

use super::callback::{self, CallbackError};
use super::clock::{millis, now_ms};
use super::codes::{self, CodeHasher};
use super::ids::{new_verification_id, valid_id};
use super::metrics::Metrics;
use super::phone::{CallBackRefused, PhoneError, PhoneNumber, PhonePolicy};
use super::sealed::CodeSealer;
use super::status::{CallOutcome, EntryMethod, Mode, Status};
use super::verification::{
    validate_locale, validate_user_ref, Call, CallStart, CodeCheck, DialJob, NewVerification,
    Policy, Started, TrunkCaps, Verification, VerifyError, View,
};
use crate::store::{
    Begun, Checked, Checker, Created, Creation, Earlier, IdempotencyKey, Limits, RateSubject,
    Recovered, Store, StrikeRule, Trunk,
};

mod cluster;
mod read_backs;
use cluster::Registration;
pub use cluster::{migrate, Heartbeat, Migration};

/// Verifications a purge of the history deletes at most in one transaction (every few
/// seconds), so that it never holds the store for long.
const PURGE_BATCH: i64 = 500;

/// How long a call attempt can possibly last: an attempt open longer was left by a daemon
/// that is gone, and recovery closes it whoever owned it.
const STALE_ATTEMPT: Duration = Duration::from_secs(3600);

pub struct Verifications {
    store: Store,
    hasher: CodeHasher,
    sealer: CodeSealer,
    phones: PhonePolicy,
    policy: Policy,
    /// Which daemon this is (host and FastAGI address), recorded on each call attempt: the
    /// name it registered under ([`Verifications::register`]), else the configured one.
    daemon: String,
    registration: std::sync::OnceLock<Registration>,
    /// When this daemon started (wall clock): its claims from before are an earlier run's.
    started_at: i64,
    metrics: Arc<Metrics>,
}

impl Verifications {
    pub fn new(
        store: Store,
        hasher: CodeHasher,
        phones: PhonePolicy,
        policy: Policy,
        daemon: String,
    ) -> Self {
        Self {
            store,
            sealer: hasher.sealer(),
            hasher,
            phones,
            policy,
            daemon,
            registration: std::sync::OnceLock::new(),
            started_at: now_ms(),
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// At start, or after a stop's grace cut calls off: close the call attempts this daemon
    /// (an earlier run of it, or this one) left open.
    pub async fn recover_interrupted(&self) -> Result<Recovered, VerifyError> {
        let now = now_ms();
        Ok(self
            .store
            .recover_interrupted(self.daemon(), now - millis(STALE_ATTEMPT), now)
            .await?)
    }

    /// Create a verification and its code. In `enter_code` mode the code is returned here and
    /// never again; in `read_code` mode only the call says it.
    pub async fn start(&self, new: NewVerification) -> Result<Started, VerifyError> {
        let phone = self.phones.parse(&new.phone)?;
        let user_ref = validate_user_ref(&new.user_ref)?;
        let code_length = new.code_length.unwrap_or(self.policy.code_length);
        if !codes::LENGTHS.contains(&code_length) {
            return Err(VerifyError::InvalidCodeLength(code_length));
        }
        let locale = validate_locale(new.locale.as_deref())?;
        let callback_url = new
            .callback_url
            .map(|url| {
                callback::validate(&url, self.policy.allow_private_callbacks).map_err(|e| match e {
                    CallbackError::Invalid => VerifyError::InvalidCallbackUrl,
                    CallbackError::Internal => VerifyError::PrivateCallbackUrl,
                })
            })
            .transpose()?;
        // Its webhooks could never be sent: each is signed with the secret.
        if callback_url.is_some() && !self.policy.signs_webhooks {
            return Err(VerifyError::UnsignedCallbacks);
        }
        // u32::MAX means no limit: no need to count.
        let limit = |max: u32| (max != u32::MAX).then_some(i64::from(max));
        let limits = Limits {
            per_number: limit(self.policy.per_number_per_hour),
            per_user: limit(self.policy.per_user_per_hour),
            per_api_key: limit(self.policy.per_key_per_hour),
        };
        let code = codes::generate(code_length);
        let mode = new.mode.unwrap_or(Mode::EnterCode);
        let mut row = self.new_row(phone.as_str(), user_ref, &code, locale, false);
        if mode == Mode::ReadCode {
            row.sealed_code = Some(self.sealer.seal(&row.id, &code));
        }
        row.mode = mode;
        row.api_key_id = new.api_key_id.clone();
        row.callback_url = callback_url;
        let idempotency = match (&new.api_key_id, &new.idempotency) {
            (Some(api_key_id), Some((key, request_hash))) => Some(IdempotencyKey {
                api_key_id: api_key_id.clone(),
                key: key.clone(),
                request_hash: request_hash.clone(),
            }),
            _ => None,
        };
        let hour = 3_600_000;
        // A retry with a used Idempotency-Key gets the first answer, not a rate limit: the
        // store looks the key up before it checks lockouts and limits.
        let created = self
            .store
            .create_verification(Creation {
                window_start: row.created_at - hour,
                strikes_since: self.strikes_since(row.created_at),
                verification: row.clone(),
                idempotency,
                limits,
            })
            .await?;
        let strikes = match created {
            Created::Inserted { strikes } => strikes,
            Created::Existing(earlier) => {
                let request_hash = new.idempotency.as_ref().map_or("", |(_, h)| h.as_str());
                return self.replay(earlier, request_hash).await;
            }
            Created::LockedOut(retry_at) => return Err(VerifyError::LockedOut { retry_at }),
            Created::Limited { subject, oldest } => {
                return Err(VerifyError::RateLimited {
                    subject: match subject {
                        RateSubject::Phone => "number",
                        RateSubject::User => "user",
                        RateSubject::ApiKey => "API key",
                    },
                    retry_at: oldest.unwrap_or(row.created_at) + hour,
                })
            }
        };
        tracing::info!(verification = %row.id, phone = %phone.masked(), %mode, "verification created");
        self.metrics.verification_created();
        let mut view = row.view(strikes);
        view.code = (mode == Mode::EnterCode).then_some(code);
        Ok(Started {
            view,
            replayed: false,
        })
    }

    /// The answer to a retried request: the verification the key made, if the request is
    /// the same.
    async fn replay(&self, earlier: Earlier, request_hash: &str) -> Result<Started, VerifyError> {
        if earlier.request_hash != request_hash {
            return Err(VerifyError::IdempotencyConflict);
        }
        Ok(Started {
            view: self.get(&earlier.verification_id).await?,
            replayed: true,
        })
    }

    /// A throw-away verification for a QA test call on `channel_id` (its uniqueid), with
    /// `code` (e.g. from `qa.code`, so a scripted caller can key it) or a random one. It is
    /// marked as a test and its number and user are the call's own, so that its lockouts
    /// touch no real user.
    pub async fn start_test(
        &self,
        channel_id: &str,
        code: Option<&str>,
    ) -> Result<View, VerifyError> {
        let code = match code {
            Some(c) if codes::is_valid_code(c) => c.to_owned(),
            Some(c) => return Err(VerifyError::InvalidCodeLength(c.len() as u32)),
            None => codes::generate(self.policy.code_length),
        };
        let subject = format!("qa:{}", channel_id.chars().take(64).collect::<String>());
        let row = self.new_row(&subject, &subject, &code, "en".into(), true);
        self.store.insert_verification(&row).await?;
        let mut view = row.view(0);
        view.code = Some(code);
        Ok(view)
    }

    fn new_row(
        &self,
        phone: &str,
        user_ref: &str,
        code: &str,
        locale: String,
        is_test: bool,
    ) -> Verification {
        let now = now_ms();
        let id = new_verification_id(now);
        Verification {
            code_hash: self.hasher.hash(&id, code),
            id,
            phone: phone.to_owned(),
            user_ref: user_ref.to_owned(),
            code_length: code.len() as i64,
            status: Status::Pending,
            attempts_used: 0,
            max_attempts: self.policy.max_attempts.into(),
            locale,
            is_test,
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(millis(self.policy.code_ttl)),
            verified_at: None,
            api_key_id: None,
            callback_url: None,
            mode: Mode::EnterCode,
            sealed_code: None,
            code_delivered_at: None,
        }
    }

    /// The verification as it stands; one past its expiry while waiting becomes `expired`.
    pub async fn get(&self, id: &str) -> Result<View, VerifyError> {
        let mut row = self.row(id).await?;
        let now = now_ms();
        if row.status == Status::Pending
            && now >= row.expires_at
            && self
                .store
                .transition(id, &[Status::Pending], Status::Expired, now)
                .await?
        {
            row.status = Status::Expired;
        }
        // An open verification's tries are its number's and user's: count theirs.
        let strikes = if !row.status.is_final() {
            self.store
                .standing(&row.phone, &row.user_ref, now, self.strikes_since(now))
                .await?
                .strikes
        } else {
            0
        };
        Ok(row.view(strikes))
    }

    /// Wrong codes from before this are forgotten: the lockout's window.
    fn strikes_since(&self, now: i64) -> i64 {
        now - millis(self.policy.lockout)
    }

    /// The API key that made verification `id` (none: made with the CLI).
    pub async fn owner(&self, id: &str) -> Result<Option<String>, VerifyError> {
        Ok(self.row(id).await?.api_key_id)
    }

    /// Cancel a verification that has not ended.
    pub async fn cancel(&self, id: &str) -> Result<View, VerifyError> {
        let current = self.get(id).await?;
        let canceled = self
            .store
            .transition(
                id,
                &[Status::Pending, Status::Calling],
                Status::Canceled,
                now_ms(),
            )
            .await?;
        if !canceled {
            return Err(VerifyError::NotCancelable(current.status));
        }
        self.get(id).await
    }

    async fn row(&self, id: &str) -> Result<Verification, VerifyError> {
        if !valid_id(id) {
            return Err(VerifyError::NotFound(id.chars().take(64).collect()));
        }
        self.store
            .verification(id)
            .await?
            .ok_or_else(|| VerifyError::NotFound(id.to_owned()))
    }

    /// A call for verification `id` has reached the daemon on `channel`: the attempt opens,
    /// or the refusal says why, from what the store read in the same operation (a verification
    /// waiting past its expiry becomes `expired` here).
    pub async fn begin_call(
        &self,
        id: &str,
        channel: &str,
        uniqueid: &str,
    ) -> Result<CallStart, VerifyError> {
        if !valid_id(id) {
            return Err(VerifyError::NotFound(id.chars().take(64).collect()));
        }
        let now = now_ms();
        let begun = self
            .store
            .begin_attempt(id, channel, uniqueid, self.daemon(), now)
            .await?;
        let (verification, locked_out) = match begun {
            Begun::Started {
                attempt_id,
                verification,
            } => {
                return Ok(CallStart::Ready(Box::new(Call {
                    attempt_id,
                    verification,
                })))
            }
            Begun::Refused {
                verification: None, ..
            } => return Err(VerifyError::NotFound(id.to_owned())),
            Begun::Refused {
                verification: Some(v),
                locked_out,
            } => (v, locked_out),
        };
        // Waiting, or ended by the lockout (its own last try or a sibling's): say so.
        if locked_out && matches!(verification.status, Status::Pending | Status::Failed) {
            return Ok(CallStart::LockedOut);
        }
        if verification.status != Status::Pending {
            return Ok(CallStart::NotCallable(verification.status));
        }
        if now >= verification.expires_at {
            // Expired: by this call, or by the queue upkeep at the same moment.
            self.store
                .transition(id, &[Status::Pending], Status::Expired, now)
                .await?;
            return Ok(CallStart::NotCallable(Status::Expired));
        }
        Ok(CallStart::NotCallable(verification.status))
    }

    /// Whether `entered` is the code, without using an attempt (a spoken code is checked so
    /// before a wrong one is read back: see `read_backs`).
    pub fn code_matches(&self, call: &Call, entered: &str) -> bool {
        let v = &call.verification;
        self.hasher.matches(&v.id, entered, &v.code_hash)
    }

    /// Check a code the callee entered. The three tries belong to the number and the user,
    /// across all their verifications: every check sees a lockout any sibling caused, and
    /// wrong entries are counted in the store at once, so a crash cannot give a try back.
    pub async fn check_code(
        &self,
        call: &Call,
        entered: &str,
        method: EntryMethod,
    ) -> Result<CodeCheck, VerifyError> {
        let v = &call.verification;
        let now = now_ms();
        if now >= v.expires_at {
            self.store
                .transition(&v.id, &[Status::Calling], Status::Expired, now)
                .await?;
            return Ok(CodeCheck::Expired);
        }
        let by = Checker::Call {
            attempt: call.attempt_id,
            method,
        };
        let checked = if self.hasher.matches(&v.id, entered, &v.code_hash) {
            // Verified and the attempt closed in one go: the common end of a call.
            self.store.verify_code(v, by, now).await?
        } else {
            let rule = self.strike_rule(v, now);
            self.store.count_wrong_code(v, by, rule, now).await?
        };
        let masked = || {
            PhoneNumber::from_stored(v.phone.clone())
                .masked()
                .to_string()
        };
        Ok(match checked {
            Checked::Verified => {
                tracing::info!("code correct: verified");
                CodeCheck::Verified
            }
            Checked::Wrong { strikes } => {
                let remaining = (v.max_attempts - strikes).max(0);
                tracing::info!(remaining, "wrong code entered");
                CodeCheck::Wrong { remaining }
            }
            Checked::LockedOut => {
                tracing::warn!(phone = %masked(), "attempts used up: number and user locked out");
                CodeCheck::LockedOut
            }
            // Another verification of this number or user used up the tries (which failed
            // this one too): the call says so.
            Checked::AlreadyLockedOut | Checked::Ended(Status::Failed) => {
                tracing::warn!(phone = %masked(), "number or user locked out by another verification");
                CodeCheck::LockedOut
            }
            Checked::Fenced => {
                tracing::error!("this call was taken over by another daemon: it stops here");
                CodeCheck::TakenOver
            }
            // Canceled or expired meanwhile (the other two are the web app's only).
            Checked::Ended(_) | Checked::NotDelivered | Checked::Repeated => CodeCheck::Expired,
        })
    }

    /// How a wrong code of `v` checked at `now` counts.
    fn strike_rule(&self, v: &Verification, now: i64) -> StrikeRule {
        StrikeRule {
            max: v.max_attempts,
            forget_before: self.strikes_since(now),
            lock_until: now.saturating_add(millis(self.policy.lockout)),
        }
    }

    /// The code a read-code call is to say, noted as delivered before it is said (the web
    /// app's checks are accepted from then on); `None` when the verification left the call
    /// meanwhile (canceled, expired) or has no code to say: nothing is to be said then.
    pub async fn code_to_say(&self, call: &Call) -> Result<Option<String>, VerifyError> {
        let v = &call.verification;
        let Some(sealed) = &v.sealed_code else {
            return Ok(None);
        };
        let code = self.sealer.open(&v.id, sealed)?;
        let delivered = self
            .store
            .code_delivered(&v.id, call.attempt_id, now_ms())
            .await?;
        if !delivered {
            return Ok(None);
        }
        Ok(Some(code))
    }

    /// The web app checks the code its user typed in (read-code mode), with the rules of a
    /// keyed code: three wrong codes lock the number and the user out, the code compares in
    /// constant time, an expired verification cannot be checked. Allowed once a call began
    /// to say the code, also while that call goes on. A retried identical check gets the
    /// same answer: the right code again once verified, the last wrong code again without
    /// counting it twice. Answers the verification as it now stands.
    pub async fn check(&self, id: &str, entered: &str) -> Result<View, VerifyError> {
        let v = self.row(id).await?;
        if v.mode != Mode::ReadCode {
            return Err(VerifyError::WrongMode);
        }
        if entered.len() != v.code_length as usize || !entered.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifyError::InvalidCode(v.code_length));
        }
        let right = self.hasher.matches(&v.id, entered, &v.code_hash);
        if right && v.status == Status::Verified {
            return self.get(id).await;
        }
        let now = now_ms();
        if !v.status.is_final() && now >= v.expires_at {
            let open = [Status::Pending, Status::Calling];
            self.store
                .transition(id, &open, Status::Expired, now)
                .await?;
            return Err(VerifyError::NotCheckable(Status::Expired));
        }
        let by = Checker::WebApp {
            entered_hash: self.hasher.hash(&v.id, entered),
        };
        let checked = if right {
            self.store.verify_code(&v, by, now).await?
        } else {
            let rule = self.strike_rule(&v, now);
            self.store.count_wrong_code(&v, by, rule, now).await?
        };
        let masked = || {
            PhoneNumber::from_stored(v.phone.clone())
                .masked()
                .to_string()
        };
        match checked {
            Checked::Verified => {
                tracing::info!(verification = %v.id, "code checked by the web app: verified")
            }
            Checked::Wrong { strikes } => tracing::info!(
                verification = %v.id,
                remaining = (v.max_attempts - strikes).max(0),
                "wrong code checked by the web app"
            ),
            Checked::LockedOut => tracing::warn!(
                verification = %v.id,
                phone = %masked(),
                "attempts used up: number and user locked out"
            ),
            Checked::Repeated => {}
            Checked::AlreadyLockedOut => {
                let standing = self.store.standing(&v.phone, &v.user_ref, now, now).await?;
                return Err(VerifyError::LockedOut {
                    retry_at: standing.locked_until.unwrap_or(now),
                });
            }
            Checked::NotDelivered => return Err(VerifyError::CodeNotDelivered),
            // (Fenced is a call's only.)
            Checked::Ended(status) => return Err(VerifyError::NotCheckable(status)),
            Checked::Fenced => return Err(VerifyError::NotCheckable(v.status)),
        }
        self.get(id).await
    }

    /// Whether the store answers (for `/healthz`).
    pub async fn check_store(&self) -> Result<(), VerifyError> {
        self.store.verification("vf_healthcheck").await?;
        Ok(())
    }

    /// Verifications due a call now, and webhooks not yet delivered (for `/metrics`).
    pub async fn backlog(&self) -> Result<(i64, i64), VerifyError> {
        Ok(self.store.backlog(now_ms()).await?)
    }

    /// Periodic upkeep of the queue: stale dialer claims released, overdue verifications
    /// expired (which sends their `expired` webhook), dead daemons' calls taken over.
    pub async fn maintain(&self) -> Result<(), VerifyError> {
        let now = now_ms();
        let stale = millis(self.policy.ring_timeout * 2 + Duration::from_secs(5));
        let stranded = millis(self.policy.ring_timeout + self.policy.longest_call);
        let (released, expired) = self
            .store
            .maintain(
                now - stale,
                self.daemon(),
                self.started_at,
                now - stranded,
                now,
            )
            .await?;
        if released > 0 {
            tracing::warn!(
                released,
                "dialer calls nobody answered for released (a daemon, or an earlier run of \
                 this one, died)"
            );
        }
        if expired > 0 {
            tracing::info!(expired, "verifications expired");
        }
        let taken = self
            .store
            .take_over(
                self.daemon(),
                now - millis(self.policy.dead_after),
                self.policy.max_dials.into(),
                now,
            )
            .await?;
        if !taken.daemons.is_empty() {
            tracing::warn!(
                daemons = ?taken.daemons,
                attempts = taken.attempts,
                released = taken.released,
                webhooks = taken.events,
                "daemons unheard for longer than database.takeover_after_secs declared dead: \
                 their calls closed as interrupted, their verifications queued again and \
                 the webhooks they were sending made due"
            );
        }
        Ok(())
    }

    /// Delete a batch of the ended history past the retention period (see
    /// [`Policy::retention`]), and the wrong codes and read-backs of wrong spoken codes that
    /// no longer count: the verifications deleted, fewer than a batch once none are left.
    pub async fn purge_history(&self) -> Result<u64, VerifyError> {
        let now = now_ms();
        let before = self
            .policy
            .retention
            .map(|retention| now.saturating_sub(millis(retention)));
        let strikes_before = self.strikes_since(now);
        Ok(self
            .store
            .purge_history(before, strikes_before, now, PURGE_BATCH)
            .await?)
    }

    /// Claim up to `limit` verifications due a call, for this daemon's dialer, within the
    /// trunk's caps (for all daemons on the store together).
    pub async fn claim_calls(
        &self,
        trunk: &TrunkCaps,
        limit: i64,
    ) -> Result<Vec<DialJob>, VerifyError> {
        let now = now_ms();
        let trunk = Trunk {
            name: trunk.name.clone(),
            max_calls: trunk.max_calls.into(),
            gap_ms: 1000 / i64::from(trunk.per_second.max(1)),
            calls_since: now - millis(trunk.longest_call),
        };
        Ok(self
            .store
            .claim_due(self.daemon(), &trunk, limit, now)
            .await?)
    }

    /// Give back a claimed call that was never placed (it waits for the next claim, and the
    /// dial is not counted).
    pub async fn unclaim(&self, job: &DialJob) -> Result<bool, VerifyError> {
        Ok(self.store.unclaim(job, now_ms()).await?)
    }

    /// A dialer call that never reached the daemon (busy, no answer, refused): recorded as
    /// an attempt with `outcome`, and the verification due again or ended as the retry rule
    /// says. False when the call reached the daemon after all, or the verification moved on.
    pub async fn dial_failed(
        &self,
        job: &DialJob,
        channel: &str,
        outcome: CallOutcome,
    ) -> Result<bool, VerifyError> {
        let now = now_ms();
        let applied = self
            .store
            .dial_failed(
                job,
                channel,
                self.daemon(),
                outcome,
                self.policy.next_call(outcome, now),
                self.policy.max_dials.into(),
                now,
            )
            .await?;
        if applied {
            self.metrics.call_ended(outcome);
        }
        Ok(applied)
    }

    /// Whether `phone` may be called under the destination policy in force now (it may
    /// have changed since the verification was made), in E.164 if it may.
    pub fn may_call(&self, phone: &str) -> Result<PhoneNumber, PhoneError> {
        self.phones.parse(phone)
    }

    /// Whether a QA call-back (the dialplan's 80/81 extensions, dialled from a softphone)
    /// may ring `phone`: only a number the admin listed (`qa.callback_numbers`, in E.164),
    /// and only while the destination policy allows it. Anyone holding a QA softphone's
    /// password dials these extensions: without the list, the trunk would call any number.
    pub fn may_call_back(
        &self,
        phone: &str,
        listed: &[String],
    ) -> Result<PhoneNumber, CallBackRefused> {
        let number = self.may_call(phone).map_err(CallBackRefused::Number)?;
        if !listed.iter().any(|l| l == number.as_str()) {
            return Err(CallBackRefused::NotListed);
        }
        Ok(number)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// This daemon's name on its call attempts and claims.
    pub fn daemon(&self) -> &str {
        self.registration
            .get()
            .map_or(self.daemon.as_str(), |r| r.name.as_str())
    }

    /// Record how the call ended.
    pub async fn end_call(&self, call: &Call, outcome: CallOutcome) -> Result<(), VerifyError> {
        self.metrics.call_ended(outcome);
        // A verified call's attempt was closed with the verification by check_code; this
        // ends its count on the trunk.
        let now = now_ms();
        // A test verification (the QA line's) is never dialled: none is called again.
        let next_call_at = if call.verification.is_test {
            None
        } else {
            self.policy.next_call(outcome, now)
        };
        self.store
            .finish_attempt(
                call.attempt_id,
                &call.verification.id,
                outcome,
                next_call_at,
                self.policy.max_dials.into(),
                now,
            )
            .await?;
        Ok(())
    }
}
