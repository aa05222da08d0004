//! Counters for `GET /metrics` (Prometheus text format): calls in progress, how calls
//! ended, the AMI connection, the dialer's queue and the webhook backlog.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::status::{CallOutcome, Room};

#[derive(Default)]
pub struct Metrics {
    calls_in_progress: AtomicI64,
    outcomes: [AtomicU64; 16],
    verifications_created: AtomicU64,
    /// Support messages not taken, by the limit reached (indexed as [`Room::ALL`]).
    support_refused: [AtomicU64; Room::ALL.len()],
}

/// Keeps a call counted as in progress while it lives.
pub struct InProgress<'a>(&'a Metrics);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.calls_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gauges read at scrape time from elsewhere.
pub struct Snapshot {
    pub ami_state: Option<&'static str>,
    pub queue_due: i64,
    pub webhooks_undelivered: i64,
}

impl Metrics {
    pub fn call_started(&self) -> InProgress<'_> {
        self.calls_in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(self)
    }

    pub fn call_ended(&self, outcome: CallOutcome) {
        if let Some(i) = CallOutcome::ALL.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn verification_created(&self) {
        self.verifications_created.fetch_add(1, Ordering::Relaxed);
    }

    /// A support message not taken: the line had no `room` for it.
    pub fn support_message_refused(&self, room: Room) {
        if let Some(i) = Room::ALL.iter().position(|r| *r == room) {
            self.support_refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP callverify_calls_in_progress FastAGI calls being handled.\n# TYPE callverify_calls_in_progress gauge\ncallverify_calls_in_progress {}",
            self.calls_in_progress.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP callverify_calls_total Calls handled, by how they ended.\n# TYPE callverify_calls_total counter"
        );
        for (i, outcome) in CallOutcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "callverify_calls_total{{outcome=\"{outcome}\"}} {}",
                self.outcomes[i].load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP callverify_verifications_created_total Verifications started through this daemon.\n# TYPE callverify_verifications_created_total counter\ncallverify_verifications_created_total {}",
            self.verifications_created.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP callverify_support_messages_refused_total Support messages not taken, by the limit reached.\n# TYPE callverify_support_messages_refused_total counter"
        );
        for (i, room) in Room::ALL.iter().enumerate() {
            if *room != Room::Open {
                let _ = writeln!(
                    out,
                    "callverify_support_messages_refused_total{{limit=\"{room}\"}} {}",
                    self.support_refused[i].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP callverify_dialer_queue_due Verifications due a call now.\n# TYPE callverify_dialer_queue_due gauge\ncallverify_dialer_queue_due {}",
            snapshot.queue_due
        );
        let _ = writeln!(
            out,
            "# HELP callverify_webhooks_undelivered Status changes not yet delivered.\n# TYPE callverify_webhooks_undelivered gauge\ncallverify_webhooks_undelivered {}",
            snapshot.webhooks_undelivered
        );
        let _ = writeln!(
            out,
            "# HELP callverify_ami_connected 1 when the dialer's AMI connection is up.\n# TYPE callverify_ami_connected gauge"
        );
        let state = snapshot.ami_state.unwrap_or("not_configured");
        let _ = writeln!(
            out,
            "callverify_ami_connected{{state=\"{state}\"}} {}",
            i32::from(state == "connected")
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        let guard = m.call_started();
        m.call_ended(CallOutcome::Verified);
        m.call_ended(CallOutcome::Verified);
        m.verification_created();
        m.support_message_refused(Room::LineFull);
        m.support_message_refused(Room::RecordingFull);
        m.support_message_refused(Room::RecordingFull);
        let text = m.render(&Snapshot {
            ami_state: Some("connected"),
            queue_due: 4,
            webhooks_undelivered: 2,
        });
        assert!(text.contains("callverify_calls_in_progress 1\n"), "{text}");
        assert!(text.contains("callverify_calls_total{outcome=\"verified\"} 2\n"));
        assert!(text.contains("callverify_calls_total{outcome=\"busy\"} 0\n"));
        assert!(text.contains("callverify_dialer_queue_due 4\n"));
        assert!(text.contains("callverify_support_messages_refused_total{limit=\"line_full\"} 1\n"));
        assert!(
            text.contains("callverify_support_messages_refused_total{limit=\"caller_full\"} 0\n")
        );
        assert!(text
            .contains("callverify_support_messages_refused_total{limit=\"recording_full\"} 2\n"));
        assert!(!text.contains("limit=\"open\""));
        assert!(text.contains("callverify_ami_connected{state=\"connected\"} 1\n"));
        drop(guard);
        let text = m.render(&Snapshot {
            ami_state: None,
            queue_due: 0,
            webhooks_undelivered: 0,
        });
        assert!(text.contains("callverify_calls_in_progress 0\n"));
    }
}
