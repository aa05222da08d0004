//! An established call, UAC or UAS alike: runs the script against the media, answers the
//! peer's in-dialog requests (BYE, re-INVITE, UPDATE, OPTIONS, INFO), and ends the call.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::codec::Codec;
use super::finish_media;
use super::report::{Hangup, KeyReceived, KeysSent, Prompt, Report};
use super::rtp::{Media, MediaEvent};
use super::script::Action;
use super::sdp;
use super::sip::message::{acknowledges, cseq, response};
use super::sip::{transaction, Dialog, Endpoint, Inbound, Timers};

/// How the established call is run.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub actions: Vec<Action>,
    pub prompt_timeout: Duration,
    /// Hang up this long after the answer whatever the script is doing.
    pub hangup_after: Option<Duration>,
    /// After the script, listen this long for what comes back (or the peer's BYE).
    pub linger: Duration,
    pub timers: Timers,
    /// Show a progress line on stderr (a terminal, one call at a time).
    pub progress: bool,
}

/// What the media needs to answer a re-INVITE or UPDATE with the same stream.
pub struct LocalMedia {
    pub rtp: SocketAddr,
    pub codec: Codec,
    pub session_id: u64,
    /// telephone-event's payload type, if the peer takes RFC 4733 events.
    pub event_pt: Option<u8>,
}

impl LocalMedia {
    pub fn new(rtp: SocketAddr, negotiated: &sdp::Negotiated, session_id: u64) -> Self {
        Self {
            rtp,
            codec: negotiated.codec,
            session_id,
            event_pt: negotiated.event_pt,
        }
    }
}

enum Step {
    Next,
    Prompt { until: Instant },
    Pause { until: Instant },
    Pressing(oneshot::Receiver<()>),
    Lingering { until: Instant },
}

enum End {
    Local(&'static str),
    Peer,
    Failed {
        reason: &'static str,
        kind: &'static str,
        message: String,
    },
}

/// An answered call: its SIP side, its media, and what re-INVITEs are answered with.
pub struct Established<'a> {
    pub endpoint: &'a mut Endpoint,
    pub dialog: &'a mut Dialog,
    pub media: Media,
    pub local: LocalMedia,
    pub answered: Instant,
    /// The UAC's ACK, sent again if the peer retransmits its 2xx.
    pub ack: Option<rsip::Request>,
}

impl<'a> Established<'a> {
    pub fn new(
        endpoint: &'a mut Endpoint,
        dialog: &'a mut Dialog,
        media: Media,
        local: LocalMedia,
        answered: Instant,
    ) -> Self {
        Self {
            endpoint,
            dialog,
            media,
            local,
            answered,
            ack: None,
        }
    }

    /// The UAC's ACK, to repeat when the peer retransmits its 2xx.
    pub fn with_ack(self, ack: rsip::Request) -> Self {
        Self {
            ack: Some(ack),
            ..self
        }
    }
}

/// Runs the call to its end; fills the report's prompts, keys, media counters, hangup and
/// error, and writes the recording.
pub async fn run(
    call: Established<'_>,
    options: &SessionOptions,
    report: &mut Report,
    record: Option<&Path>,
) -> anyhow::Result<()> {
    let Established {
        endpoint,
        dialog,
        mut media,
        mut local,
        answered,
        ack,
    } = call;
    let ack = ack.as_ref();
    let since_answer = || answered.elapsed().as_millis() as u64;
    let hangup_at = options.hangup_after.map(|d| answered + d);
    let mut actions = options.actions.iter();
    let mut step = Step::Next;
    let mut progress = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        if let Step::Next = step {
            step = match actions.next() {
                None => Step::Lingering {
                    until: Instant::now() + options.linger,
                },
                Some(Action::WaitPrompt) => Step::Prompt {
                    until: Instant::now() + options.prompt_timeout,
                },
                Some(Action::Pause(d)) => Step::Pause {
                    until: Instant::now() + *d,
                },
                Some(Action::Hangup) => break End::Local("script_done"),
                Some(Action::Press(_)) if local.event_pt.is_none() => break End::Failed {
                    reason: "failure",
                    kind: "no_telephone_event",
                    message:
                        "the peer takes no RFC 4733 telephone-event, so the probe cannot press keys"
                            .into(),
                },
                Some(Action::Press(keys)) => match media.press(keys) {
                    Ok(done) => {
                        report.keys_sent.push(KeysSent {
                            keys: keys.clone(),
                            at_ms: since_answer(),
                        });
                        Step::Pressing(done)
                    }
                    Err(e) => {
                        break End::Failed {
                            reason: "failure",
                            kind: "network",
                            message: e.to_string(),
                        }
                    }
                },
            };
            continue;
        }
        let step_deadline = match &step {
            Step::Prompt { until } | Step::Pause { until } | Step::Lingering { until } => {
                Some(*until)
            }
            _ => None,
        };
        let far = Instant::now() + Duration::from_secs(3600);
        let wake = [step_deadline, hangup_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(far);
        tokio::select! {
            inbound = endpoint.next(far) => {
                if let Some(inbound) = inbound {
                    if handle_inbound(endpoint, dialog, &media, &mut local, inbound, ack).await {
                        break End::Peer;
                    }
                }
            }
            event = media.events.recv() => match event {
                Some(MediaEvent::SpeechStarted { at_ms }) => report.prompts.push(Prompt { start_ms: at_ms, end_ms: None }),
                Some(MediaEvent::SpeechEnded { at_ms }) => {
                    if let Some(p) = report.prompts.last_mut() {
                        p.end_ms = Some(at_ms);
                    }
                    if let Step::Prompt { .. } = step {
                        step = Step::Next;
                    }
                }
                Some(MediaEvent::KeyReceived { key, at_ms, duration_ms }) => {
                    report.keys_received.push(KeyReceived { key, at_ms, duration_ms })
                }
                Some(MediaEvent::RtpTimeout { silent_ms }) => break End::Failed {
                    reason: "failure",
                    kind: "rtp_timeout",
                    message: format!("no RTP from the peer for {:.1} s", silent_ms as f64 / 1000.0),
                },
                None => break End::Failed { reason: "failure", kind: "network", message: "the media session ended".into() },
            },
            _ = async { if let Step::Pressing(done) = &mut step { let _ = done.await; } else { std::future::pending::<()>().await } } => {
                step = Step::Next;
            }
            _ = tokio::signal::ctrl_c() => break End::Failed {
                reason: "interrupted",
                kind: "interrupted",
                message: "interrupted (ctrl-c); the probe hung up".into(),
            },
            _ = progress.tick(), if options.progress => {
                let sent: String = report.keys_sent.iter().map(|k| k.keys.as_str()).collect();
                let heard: String = report.keys_received.iter().map(|k| k.key).collect();
                eprint!(
                    "\r{:6.1} s in call: {} prompts heard, keys sent {sent:?}, keys heard {heard:?}  ",
                    answered.elapsed().as_secs_f64(),
                    report.prompts.len(),
                );
            }
            _ = tokio::time::sleep_until(wake) => {
                if hangup_at.is_some_and(|h| Instant::now() >= h) {
                    break End::Local("hangup_after");
                }
                match step {
                    Step::Prompt { .. } => break End::Failed {
                        reason: "failure",
                        kind: "no_prompt",
                        message: format!("no prompt ended within {} s", options.prompt_timeout.as_secs_f64()),
                    },
                    Step::Lingering { .. } => break End::Local(if options.actions.is_empty() { "linger_over" } else { "script_done" }),
                    _ => step = Step::Next,
                }
            }
        }
    };
    if options.progress {
        eprintln!();
    }
    let (by, reason) = match &end {
        End::Local(reason) => ("probe", *reason),
        End::Peer => ("peer", "peer_bye"),
        End::Failed { reason, .. } => ("probe", *reason),
    };
    if let End::Failed { kind, message, .. } = end {
        report.fail(kind, message);
    } else if by == "peer" && !matches!(step, Step::Lingering { .. }) {
        report.fail(
            "peer_hung_up",
            "the peer hung up before the script finished",
        );
    }
    let bye_code = if by == "probe" {
        send_bye(endpoint, dialog, options.timers).await
    } else {
        None
    };
    report.hangup = Some(Hangup {
        by,
        reason,
        bye_code,
    });
    report.duration_ms = Some(since_answer());
    finish_media(media, report, record).await
}

async fn send_bye(endpoint: &mut Endpoint, dialog: &mut Dialog, timers: Timers) -> Option<u16> {
    let bye = dialog.request(rsip::Method::Bye, None, None);
    match transaction::run(
        endpoint,
        &bye,
        dialog.remote_addr,
        timers,
        timers.timeout,
        |_| {},
    )
    .await
    {
        Ok(response) => Some(response.status_code.code()),
        Err(e) => {
            tracing::warn!("BYE: {e}");
            None
        }
    }
}

/// Answers one in-dialog message; true when the peer hung up. A request of another dialog
/// (another Call-ID, or not both tags of this one) gets 481, and changes nothing.
async fn handle_inbound(
    endpoint: &mut Endpoint,
    dialog: &mut Dialog,
    media: &Media,
    local: &mut LocalMedia,
    inbound: Inbound,
    ack: Option<&rsip::Request>,
) -> bool {
    let (request, from) = match inbound {
        Inbound::Request(request, from) => (request, from),
        Inbound::Response(response, _) => {
            // Our ACK was lost: the peer retransmits its 2xx to the INVITE. The ACK goes where
            // the first one went.
            let is_invite_ok = response.status_code.code() / 100 == 2
                && cseq(&response).is_some_and(|(_, m)| m == "INVITE");
            if let Some(ack) = ack.filter(|ack| is_invite_ok && acknowledges(ack, &response)) {
                let _ = endpoint.send(ack, dialog.remote_addr).await;
            }
            return false;
        }
        Inbound::Malformed { .. } => return false,
    };
    let reply = |code: u16, body: Option<String>| {
        response(&request, code, &dialog.local_tag, dialog.local_addr, body)
    };
    let (answer, hung_up) = match request.method {
        rsip::Method::Ack => return false,
        _ if !dialog.matches(&request) => (reply(481, None), false),
        rsip::Method::Bye => (reply(200, None), true),
        rsip::Method::Invite | rsip::Method::Update => {
            (renegotiate(&request, media, local, &reply), false)
        }
        rsip::Method::Options
        | rsip::Method::Info
        | rsip::Method::Notify
        | rsip::Method::Cancel => (reply(200, None), false),
        _ => (reply(501, None), false),
    };
    if let Err(e) = endpoint.send(answer, from).await {
        tracing::warn!("cannot answer the peer's {}: {e}", request.method);
    }
    hung_up
}

/// A re-INVITE or UPDATE: the same codec at a possibly new address, with possibly new payload
/// type numbers and direction (hold), is accepted and applied to both directions of the
/// media; anything else is refused with 488 (the probe does not switch codecs mid-call).
fn renegotiate(
    request: &rsip::Request,
    media: &Media,
    local: &mut LocalMedia,
    reply: &impl Fn(u16, Option<String>) -> rsip::Response,
) -> rsip::Response {
    if request.body.is_empty() && request.method == rsip::Method::Update {
        // A session refresh: a 200 to UPDATE cannot carry an offer (RFC 3311 §5.2).
        return reply(200, None);
    }
    if request.body.is_empty() {
        // An offerless re-INVITE: offer the stream as it is.
        return reply(
            200,
            Some(sdp::offer(local.rtp, &[local.codec], local.session_id)),
        );
    }
    let offer = String::from_utf8_lossy(&request.body);
    match sdp::parse(&offer).and_then(|d| d.negotiate(&[local.codec])) {
        Ok(negotiated) => {
            media.renegotiate(negotiated);
            local.event_pt = negotiated.event_pt;
            reply(
                200,
                Some(sdp::answer(local.rtp, &negotiated, local.session_id)),
            )
        }
        Err(e) => {
            tracing::warn!("refused the peer's {} with 488: {e}", request.method);
            reply(488, None)
        }
    }
}
