//! The outcome of a probe call: the `--json` report and its one-paragraph human form.

use serde::Serialize;

use super::codec::Codec;
use super::rtp::RtpStats;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// "uac" (probe call) or "uas" (probe answer).
    pub role: &'static str,
    /// The called URI, or the caller's address.
    pub peer: String,
    pub call_id: Option<String>,
    pub ok: bool,
    pub error: Option<Failure>,
    pub sip: SipTimings,
    pub codec: Option<Codec>,
    pub audio_payload_type: Option<u8>,
    pub event_payload_type: Option<u8>,
    pub rtp: Option<RtpStats>,
    /// Prompts heard, in ms since the answer.
    pub prompts: Vec<Prompt>,
    pub keys_sent: Vec<KeysSent>,
    pub keys_received: Vec<KeyReceived>,
    pub hangup: Option<Hangup>,
    /// From the answer to the end of the call.
    pub duration_ms: Option<u64>,
    pub recording: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Stable name for scripts: timeout, malformed_sip, forbidden, busy, unavailable,
    /// rejected, codec_mismatch, no_answer, no_ack, no_call, rtp_timeout, no_prompt,
    /// no_telephone_event, peer_hung_up, unreachable, interrupted, network.
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct SipTimings {
    /// Status and reason of the final response to the (last) INVITE.
    pub final_code: Option<u16>,
    pub final_reason: Option<String>,
    /// INVITE to the first 18x (post-dial delay).
    pub post_dial_delay_ms: Option<u64>,
    /// INVITE to the 2xx (UAC) or INVITE to ACK (UAS).
    pub answer_ms: Option<u64>,
    pub auth_challenges: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Prompt {
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeysSent {
    pub keys: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyReceived {
    pub key: char,
    pub at_ms: u64,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hangup {
    /// "probe" or "peer".
    pub by: &'static str,
    /// Why: script_done, hangup_after, linger_over, interrupted (ctrl-c), peer_bye, failure.
    pub reason: &'static str,
    /// The final response to the probe's BYE, when it sent one.
    pub bye_code: Option<u16>,
}

impl Report {
    pub fn fail(&mut self, kind: &'static str, message: impl Into<String>) {
        self.ok = false;
        self.error = Some(Failure {
            kind,
            message: message.into(),
        });
    }

    /// A few lines for a person at a terminal.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let verdict = if self.ok { "ok" } else { "FAILED" };
        out.push_str(&format!("{} {}: {verdict}", self.role, self.peer));
        if let Some(code) = self.sip.final_code {
            out.push_str(&format!(
                ", final {code} {}",
                self.sip.final_reason.as_deref().unwrap_or("")
            ));
        }
        if let Some(ms) = self.sip.post_dial_delay_ms {
            out.push_str(&format!(", post-dial delay {ms} ms"));
        }
        if let Some(ms) = self.sip.answer_ms {
            out.push_str(&format!(", answered after {ms} ms"));
        }
        if let Some(codec) = self.codec {
            out.push_str(&format!(", {codec}"));
        }
        out.push('\n');
        if let Some(rtp) = &self.rtp {
            out.push_str(&format!(
                "rtp: sent {} packets ({} events), received {} ({} events), lost {} ({}%), jitter {} ms\n",
                rtp.packets_sent, rtp.events_sent, rtp.packets_received, rtp.events_received, rtp.packets_lost, rtp.loss_percent, rtp.jitter_ms
            ));
        }
        for p in &self.prompts {
            let end = p
                .end_ms
                .map_or("(still playing)".to_string(), |e| format!("{e} ms"));
            out.push_str(&format!("prompt heard: {} ms to {end}\n", p.start_ms));
        }
        for k in &self.keys_sent {
            out.push_str(&format!("keys sent at {} ms: {}\n", k.at_ms, k.keys));
        }
        if !self.keys_received.is_empty() {
            let keys: String = self.keys_received.iter().map(|k| k.key).collect();
            out.push_str(&format!("keys received: {keys}\n"));
        }
        if let Some(h) = &self.hangup {
            out.push_str(&format!("hung up by {} ({})", h.by, h.reason));
            if let Some(code) = h.bye_code {
                out.push_str(&format!(", BYE answered {code}"));
            }
            out.push('\n');
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("error: {} ({})\n", e.message, e.kind));
        }
        out
    }
}
