//! The dialer: claims verifications due a call and originates each through AMI into the
//! `callverify-outbound` context; learns from `OriginateResponse` and `Hangup` events the
//! calls that never reached the daemon (busy, no answer, failed) and schedules retries.
//! Calls that are answered reach the daemon over FastAGI, whose flow records them. The
//! trunk's caps (`max_concurrent`, `max_per_second`) are kept in the store for every daemon
//! on it together; this daemon's own count and pace come on top.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use callverify_pbx::ami::{Ami, AmiError, AmiState, EventFilter, Message};
use callverify_pbx::redact::mask_digit_runs;

use crate::domain::{CallOutcome, DialJob, TrunkCaps, Verifications};

#[derive(Debug, Clone)]
pub struct DialerConfig {
    /// `PJSIP/{number}@callverify-trunk`.
    pub channel: String,
    pub caller_id: String,
    pub ring_timeout: Duration,
    pub max_concurrent: usize,
    pub max_per_second: u32,
}

/// Where Originate sends the answered call (DESIGN.md).
pub const CONTEXT: &str = "callverify-outbound";

/// The AMI events this dialer and `callverify doctor`'s self-test call read, with the
/// fields they read: [`Ami::events`] passes on nothing else.
pub const AMI_EVENTS: EventFilter = EventFilter {
    events: &["OriginateResponse", "Hangup"],
    fields: &["ActionID", "Response", "Reason", "Uniqueid", "Cause"],
};

struct InFlight {
    job: DialJob,
    channel: String,
    since: Instant,
    /// OriginateResponse said Reason 0 (failed), which a busy callee also gives; the
    /// Hangup that follows, if any, tells busy from failed.
    failed_at: Option<Instant>,
    /// Answered: the call is the daemon's now, and counts against the cap until its Hangup.
    answered: bool,
}

/// An answered call whose Hangup never came stops counting against the cap after this.
const MAX_CALL: Duration = Duration::from_secs(30 * 60);

/// How long a failed call waits for its Hangup event to say why.
const HANGUP_GRACE: Duration = Duration::from_secs(2);

pub struct Dialer {
    config: DialerConfig,
    /// The caps of the trunk, which the daemons on the store share.
    trunk: TrunkCaps,
    service: Arc<Verifications>,
    ami: Ami,
    calls: HashMap<String, InFlight>,
    /// Calls that ended unanswered but could not be recorded (the store failed): tried
    /// again at each sweep, as the queue upkeep leaves this run's claims to the dialer.
    unrecorded: Vec<(DialJob, String, CallOutcome)>,
}

impl Dialer {
    pub fn new(config: DialerConfig, service: Arc<Verifications>, ami: Ami) -> Self {
        let trunk = TrunkCaps {
            name: config.channel.clone(),
            max_calls: u32::try_from(config.max_concurrent).unwrap_or(u32::MAX),
            per_second: config.max_per_second,
            longest_call: MAX_CALL,
        };
        Self {
            config,
            trunk,
            service,
            ami,
            calls: HashMap::new(),
            unrecorded: Vec::new(),
        }
    }

    /// Run until `stopped` turns true; place no more calls once `closing` does (a stop's
    /// grace: the calls placed are still followed, their ends and failures recorded).
    pub async fn run(mut self, closing: watch::Receiver<bool>, mut stopped: watch::Receiver<bool>) {
        // Only the events and fields of AMI_EVENTS arrive: what this reads is listed there.
        let mut events = self.ami.events();
        let mut state = self.ami.state();
        // Ticks of 1/max_per_second: one new call per tick at most keeps the rate.
        let per_call = Duration::from_secs(1) / self.config.max_per_second.max(1);
        let mut tick = tokio::time::interval(per_call.min(Duration::from_millis(250)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_call = Instant::now();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                event = events.recv() => match event {
                    Ok(m) => self.on_event(&m).await,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "dialer fell behind AMI events; stale calls are swept");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = tick.tick() => {
                    self.sweep().await;
                    let may_dial = !*closing.borrow()
                        && *state.borrow_and_update() == AmiState::Connected
                        && self.calls.len() < self.config.max_concurrent
                        && Instant::now() >= next_call;
                    if may_dial && self.dial_one().await {
                        next_call = Instant::now() + per_call;
                    }
                }
            }
        }
    }

    /// Claim one due verification and originate it; false if none was due.
    async fn dial_one(&mut self) -> bool {
        let jobs = match self.service.claim_calls(&self.trunk, 1).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::error!(error = %e, "dialer cannot read the queue");
                return false;
            }
        };
        let dialed = !jobs.is_empty();
        for job in jobs {
            self.originate(job).await;
        }
        dialed
    }

    async fn originate(&mut self, job: DialJob) {
        let channel = self.config.channel.replace("{number}", &job.phone);
        let span = tracing::info_span!("dial", verification = %job.verification_id,
            channel = %mask_digit_runs(&channel), attempt = job.dial_attempts);
        // The destination policy is checked again at dial time: it may have been
        // tightened since the verification was made.
        if let Err(e) = self.service.may_call(&job.phone) {
            span.in_scope(|| tracing::warn!(error = %e, "number no longer allowed: not called"));
            self.failed(&job, &channel, CallOutcome::DestinationRefused)
                .await;
            return;
        }
        self.originate_in(job, channel).instrument(span).await;
    }

    async fn originate_in(&mut self, job: DialJob, channel: String) {
        let mut originate = Message::action("Originate", &job.channel_id);
        originate
            .push("Channel", channel.as_str())
            .push("Context", CONTEXT)
            .push("Exten", "s")
            .push("Priority", "1")
            .push("Async", "true")
            .push("ChannelId", job.channel_id.as_str())
            .push("Timeout", self.config.ring_timeout.as_millis().to_string())
            .push("Variable", format!("CALLVERIFY_ID={}", job.verification_id))
            .push("Variable", format!("CALLVERIFY_LANG={}", job.locale));
        if !self.config.caller_id.is_empty() {
            originate.push("CallerID", self.config.caller_id.as_str());
        }
        let may_ring = match self.ami.send(originate).await {
            Ok(_) => {
                tracing::info!("call originated");
                true
            }
            // Never sent: the claim is given back, and the dial not counted.
            Err(AmiError::NotConnected) => {
                tracing::info!("AMI went down before the Originate; the call waits");
                if let Err(e) = self.service.unclaim(&job).await {
                    tracing::error!(error = %e, "cannot give back a claim (released later)");
                }
                false
            }
            // Refused: no call was placed.
            Err(e @ (AmiError::Refused { .. } | AmiError::Codec(_))) => {
                tracing::warn!(error = %e, "Originate refused");
                self.failed(&job, &channel, CallOutcome::DialFailed).await;
                false
            }
            // Sent, but the answer was lost: the call may be ringing. It stays in flight
            // until its events come or the sweep releases it; calling again now could ring
            // the phone twice.
            Err(e) => {
                tracing::warn!(error = %e, "Originate sent but unanswered; waiting for its events");
                true
            }
        };
        if may_ring {
            self.calls.insert(
                job.channel_id.clone(),
                InFlight {
                    job,
                    channel,
                    since: Instant::now(),
                    failed_at: None,
                    answered: false,
                },
            );
        }
    }

    async fn on_event(&mut self, m: &Message) {
        match m.event() {
            // Correlated by ActionID: on failure its Uniqueid is `<unknown>`.
            Some("OriginateResponse") => {
                let Some(id) = m.action_id() else { return };
                if m.get("Response") == Some("Success") {
                    if let Some(call) = self.calls.get_mut(id) {
                        call.answered = true;
                        tracing::info!(verification = %call.job.verification_id, "call answered");
                    }
                    return;
                }
                // Reason 3: no answer; 5: busy; 0: failed, which a 486 Busy Here also
                // gives: then the Hangup that follows says which.
                let outcome = match m.get("Reason") {
                    Some("3") => CallOutcome::NoAnswer,
                    Some("5") => CallOutcome::Busy,
                    _ => {
                        if let Some(call) = self.calls.get_mut(id) {
                            call.failed_at = Some(Instant::now());
                        }
                        return;
                    }
                };
                let Some(call) = self.calls.remove(id) else {
                    return;
                };
                tracing::info!(verification = %call.job.verification_id,
                    reason = m.get("Reason").unwrap_or_default(), %outcome, "call not answered");
                self.failed(&call.job, &call.channel, outcome).await;
            }
            Some("Hangup") => {
                let Some(call) = m.get("Uniqueid").and_then(|u| self.calls.remove(u)) else {
                    return;
                };
                // An answered call that reached a daemon was recorded by its flow, and the
                // failure is not applied to it; one that never did (FastAGI full or
                // unreachable, or the callee gone before the dialplan's AGI step) is
                // released here like a call that was not answered, to be called again.
                let outcome = match m.get("Cause") {
                    _ if call.answered => CallOutcome::DialFailed,
                    Some("17") => CallOutcome::Busy,
                    Some("18" | "19") => CallOutcome::NoAnswer,
                    _ => CallOutcome::DialFailed,
                };
                if self.failed(&call.job, &call.channel, outcome).await && call.answered {
                    tracing::warn!(verification = %call.job.verification_id,
                        "an answered call never reached a FastAGI session: the daemon was \
                         full (agi.max_sessions) or the dialplan could not reach it \
                         (CALLVERIFY_AGI_HOST), or the callee hung up at once");
                }
            }
            _ => {}
        }
    }

    /// Failed calls whose Hangup did not come (no channel was made), and calls whose events
    /// were lost (AMI dropped, events missed): after twice the ring timeout and a margin,
    /// by the monotonic clock, they are released, unless the daemon has them. Failures that
    /// could not be recorded are tried again first.
    async fn sweep(&mut self) {
        for (job, channel, outcome) in std::mem::take(&mut self.unrecorded) {
            self.failed(&job, &channel, outcome).await;
        }
        let limit = self.config.ring_timeout * 2 + Duration::from_secs(5);
        let stale: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                if c.answered {
                    c.since.elapsed() > MAX_CALL
                } else {
                    c.since.elapsed() > limit
                        || c.failed_at.is_some_and(|t| t.elapsed() > HANGUP_GRACE)
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(call) = self.calls.remove(&id) {
                self.failed(&call.job, &call.channel, CallOutcome::DialFailed)
                    .await;
            }
        }
    }

    /// Whether it applied: not applied (the call reached the daemon after all, or moved on)
    /// is fine too. Either way the call no longer counts on the trunk.
    async fn failed(&mut self, job: &DialJob, channel: &str, outcome: CallOutcome) -> bool {
        match self.service.dial_failed(job, channel, outcome).await {
            Ok(applied) => applied,
            Err(e) => {
                tracing::error!(verification = %job.verification_id, error = %e,
                    "cannot record a failed call (tried again shortly)");
                self.unrecorded
                    .push((job.clone(), channel.to_owned(), outcome));
                false
            }
        }
    }
}
