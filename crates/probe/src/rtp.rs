//! One call's media: a sender that keeps a steady 20 ms pace (audio or silence, and RFC 4733
//! key presses in between) towards where the peer's RTP comes from (or the SDP says), and a
//! receiver that takes packets from the peer only, puts them through the jitter buffer,
//! decodes them into the recording (which never runs ahead of the wall clock), finds prompts
//! in them and reports received key presses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::Transcoder;
use super::dtmf;
use super::jitter::{JitterBuffer, Queued};
use super::sdp::{Direction, Negotiated};
use super::vad::{Endpointer, SpeechEdge, VadConfig};
use callverify_audio::{SAMPLES_PER_20MS, SAMPLE_RATE};

const PACKET_INTERVAL: Duration = Duration::from_millis(20);
const JITTER_DEPTH: usize = 3;

/// The longest timestamp gap concealed as lost audio (the codec's concealment: Opus's PLC,
/// silence for G.711): 10 packets. Concealment bridges a burst of loss, or the audio a peer
/// skipped for a key press (160 ms for the probe's own 100 ms keys); past some 100 ms there
/// is nothing left to extrapolate (Opus's PLC has faded to silence by then) and each
/// concealed Opus frame costs a decode. A longer gap is a pause or a new timestamp base.
const MAX_CONCEALED: Duration = Duration::from_millis(200);

/// How far the recording may run ahead of the time since its first packet arrived: the
/// audio of the packets the jitter buffer holds, a packet's own (Opus: up to 120 ms), a
/// first packet that came late, and loss concealed at a jitter peak, with room to spare.
const RECORDING_SLACK: Duration = Duration::from_secs(2);
/// And one part in this many of that time, for a sender whose clock runs fast.
const CLOCK_DRIFT_PARTS: u32 = 100;

/// How the media of a call behaves.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub negotiated: Negotiated,
    /// Played once from the start of the call, then silence.
    pub play: Option<Arc<Vec<i16>>>,
    pub vad: VadConfig,
    /// How long each key is held, in 20 ms packets.
    pub key_frames: u32,
    /// Silence after the peer's RTP stops (or never starts) before the call is given up.
    pub rtp_timeout: Option<Duration>,
    /// The instant times in events are measured from (the answer).
    pub epoch: Instant,
    /// Whether the sender starts at once; if not, it waits for [`Media::start_sending`] (the
    /// UAS: until the caller's ACK confirms the answer).
    pub send_from_start: bool,
    /// The SIP peer's host (where the INVITE went, or came from). RTP from it may be the
    /// peer's as well as from the SDP's host, and our RTP then goes back there: see
    /// [`Sources`].
    pub peer_host: IpAddr,
}

/// Something the receiver noticed, with its time in milliseconds since the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    SpeechStarted {
        at_ms: u64,
    },
    SpeechEnded {
        at_ms: u64,
    },
    KeyReceived {
        key: char,
        at_ms: u64,
        duration_ms: u64,
    },
    RtpTimeout {
        silent_ms: u64,
    },
}

/// Counters of one direction or both, as the JSON report shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RtpStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub events_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    pub events_received: u64,
    /// Expected (from sequence numbers) minus received, RFC 3550 §6.4.1.
    pub packets_lost: u64,
    pub loss_percent: f64,
    /// Interarrival jitter of the audio packets, RFC 3550 §6.4.1, in milliseconds.
    pub jitter_ms: f64,
    /// Reordered beyond the jitter buffer, or duplicated.
    pub packets_dropped_late: u64,
    /// Datagrams from an address other than the negotiated one, dropped and not counted above.
    pub packets_ignored: u64,
}

/// What the media left when it stopped.
pub struct MediaResult {
    pub stats: RtpStats,
    pub recording: Vec<i16>,
}

enum Command {
    Press {
        keys: String,
        done: oneshot::Sender<()>,
    },
}

/// A running media session; dropped or stopped, its tasks end.
pub struct Media {
    commands: mpsc::Sender<Command>,
    /// What both loops send and expect: address, payload types, direction.
    negotiated: watch::Sender<Negotiated>,
    /// Whether the sender may send (see [`MediaConfig::send_from_start`]).
    sending: watch::Sender<bool>,
    pub events: mpsc::Receiver<MediaEvent>,
    stop: CancellationToken,
    sender: JoinHandle<SendCounters>,
    receiver: JoinHandle<Received>,
}

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the media session has ended")]
    Ended,
}

impl Media {
    pub fn start(
        socket: UdpSocket,
        config: MediaConfig,
        transcoder_tx: Transcoder,
        transcoder_rx: Transcoder,
    ) -> Self {
        let socket = Arc::new(socket);
        let stop = CancellationToken::new();
        let (commands, command_rx) = mpsc::channel(16);
        let (event_tx, events) = mpsc::channel(64);
        let (negotiated, negotiated_rx) = watch::channel(config.negotiated);
        let (sending, sending_rx) = watch::channel(config.send_from_start);
        // The receiver's latched source (see [`Sources`]), which the sender sends to.
        let (latched, latched_rx) = watch::channel(None::<Latch>);
        let sender = tokio::spawn(send_loop(
            socket.clone(),
            config.clone(),
            transcoder_tx,
            command_rx,
            (negotiated_rx.clone(), sending_rx, latched_rx),
            stop.clone(),
        ));
        let receiver = tokio::spawn(receive_loop(
            socket,
            config,
            transcoder_rx,
            (event_tx, latched),
            negotiated_rx,
            stop.clone(),
        ));
        Self {
            commands,
            negotiated,
            sending,
            events,
            stop,
            sender,
            receiver,
        }
    }

    /// Queues the keys as RFC 4733 events; the receiver resolves once the last end packet
    /// (and the pause after it) is out.
    pub fn press(&self, keys: &str) -> Result<oneshot::Receiver<()>, MediaError> {
        let (done, sent) = oneshot::channel();
        self.commands
            .try_send(Command::Press {
                keys: keys.to_string(),
                done,
            })
            .map_err(|_| MediaError::Ended)?;
        Ok(sent)
    }

    /// Lets a sender that waited (see [`MediaConfig::send_from_start`]) start.
    pub fn start_sending(&self) {
        self.sending.send_replace(true);
    }

    /// A re-INVITE or UPDATE was accepted: the sender and the receiver both take its address,
    /// payload types and direction (on hold the sender is quiet and the RTP timeout paused).
    pub fn renegotiate(&self, negotiated: Negotiated) {
        self.negotiated.send_replace(negotiated);
    }

    /// Stops both directions; returns the counters and what was heard. Events nobody read
    /// are dropped: a receiver blocked on a full event queue is released.
    pub async fn stop(self) -> MediaResult {
        let Self {
            events,
            stop,
            sender,
            receiver,
            ..
        } = self;
        drop(events);
        stop.cancel();
        let sent = sender.await.unwrap_or_default();
        let received = receiver.await.unwrap_or_default();
        let mut stats = received.stats;
        stats.packets_sent = sent.packets;
        stats.bytes_sent = sent.bytes;
        stats.events_sent = sent.events;
        MediaResult {
            stats,
            recording: received.recording,
        }
    }
}

#[derive(Debug, Default)]
struct SendCounters {
    packets: u64,
    bytes: u64,
    events: u64,
}

/// The outgoing stream's header fields.
struct Outgoing {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
}

impl Outgoing {
    fn packet(&mut self, pt: u8, marker: bool, timestamp: u32, payload: &[u8]) -> Vec<u8> {
        let packet = RtpPacketBuilder::new()
            .payload_type(pt)
            .ssrc(self.ssrc)
            .sequence(Seq::from(self.seq))
            .timestamp(timestamp)
            .marked(marker)
            .payload(payload)
            .build()
            .expect("payload types and payloads the probe builds are valid");
        self.seq = self.seq.wrapping_add(1);
        packet
    }
}

async fn send_loop(
    socket: Arc<UdpSocket>,
    config: MediaConfig,
    mut transcoder: Transcoder,
    mut commands: mpsc::Receiver<Command>,
    (negotiated, mut sending, latched): (
        watch::Receiver<Negotiated>,
        watch::Receiver<bool>,
        watch::Receiver<Option<Latch>>,
    ),
    stop: CancellationToken,
) -> SendCounters {
    let mut counters = SendCounters::default();
    tokio::select! {
        _ = stop.cancelled() => return counters,
        started = sending.wait_for(|&go| go) => if started.is_err() {
            return counters; // the media was dropped before it started
        },
    }
    let ticks = config.negotiated.codec.ticks_per_frame();
    let mut out = Outgoing {
        ssrc: rand::random(),
        seq: rand::random(),
        timestamp: rand::random(),
    };
    let mut play_at = 0usize;
    // The key press under way: its packets left, the event's timestamp, and who waits for it.
    let mut pressing: Option<(std::collections::VecDeque<dtmf::EventPacket>, u32)> = None;
    let mut keys_left: std::collections::VecDeque<char> = Default::default();
    let mut gap_frames = 0u32;
    let mut waiter: Option<oneshot::Sender<()>> = None;
    let mut first_audio = true;
    let mut pace = tokio::time::interval(PACKET_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::Press { keys, done }) => {
                    keys_left.extend(keys.chars());
                    waiter = Some(done);
                }
                None => break,
            },
            _ = pace.tick() => {
                let n = *negotiated.borrow();
                if n.event_pt.is_none() {
                    // Renegotiated without telephone-event: the press cannot go on.
                    pressing = None;
                    keys_left.clear();
                }
                if pressing.is_none() && gap_frames == 0 {
                    // The session presses keys only when the peer takes telephone-event.
                    if let (Some(key), Some(_)) = (keys_left.pop_front(), n.event_pt) {
                        let code = dtmf::event_code(key).expect("keys are checked when the script is read");
                        pressing = Some((dtmf::key_press(code, config.key_frames, ticks).into(), out.timestamp));
                    }
                }
                let packet = if let Some((packets, event_ts)) = &mut pressing {
                    let p = packets.pop_front().expect("a press under way has packets left");
                    let bytes = p.payload.to_bytes();
                    let packet = out.packet(n.event_pt.expect("a press stops without it"), p.marker, *event_ts, &bytes);
                    counters.events += 1;
                    if packets.is_empty() {
                        // Media time went on while the event played.
                        out.timestamp = event_ts.wrapping_add((config.key_frames + dtmf::END_PACKETS as u32) * ticks);
                        pressing = None;
                        gap_frames = config.key_frames;
                    }
                    packet
                } else {
                    gap_frames = gap_frames.saturating_sub(1);
                    let frame = next_frame(config.play.as_deref(), &mut play_at);
                    let payload = transcoder.encode(&frame);
                    let packet = out.packet(n.audio_pt, first_audio, out.timestamp, &payload);
                    first_audio = false;
                    out.timestamp = out.timestamp.wrapping_add(ticks);
                    packet
                };
                if keys_left.is_empty() && pressing.is_none() && gap_frames == 0 {
                    if let Some(done) = waiter.take() {
                        let _ = done.send(());
                    }
                }
                if !n.direction.sends() {
                    continue; // on hold: media time goes on, nothing is sent
                }
                let Some(remote) = destination(&n, *latched.borrow()) else {
                    continue; // no address yet: likewise
                };
                counters.packets += 1;
                counters.bytes += packet.len() as u64 - 12;
                if let Err(e) = socket.send_to(&packet, remote).await {
                    tracing::debug!("RTP send to {remote} failed: {e}");
                }
            }
        }
    }
    counters
}

/// Where the sender sends: where the peer's RTP comes from once the receiver has latched
/// that address under the SDP's address now in force (symmetric RTP: the way back through
/// the peer's NAT), else the SDP's address, unless it is unspecified (c=0.0.0.0 or ::, an
/// offer or answer without an address yet, or RFC 2543's hold, during which the receiver
/// publishes no latch): then nowhere until the peer's RTP shows where. A latch made under
/// an earlier SDP is not followed: after a re-INVITE moved the stream, the sender may see
/// the new SDP before the receiver has dropped the old latch, and not one packet goes to the
/// old address. (Sent to 0.0.0.0, RTP would reach this very host.)
fn destination(negotiated: &Negotiated, latch: Option<Latch>) -> Option<SocketAddr> {
    let remote = canonical(negotiated.remote_rtp);
    latch
        .filter(|l| l.under == remote)
        .map(|l| l.from)
        .or(Some(remote).filter(|a| !a.ip().is_unspecified()))
}

/// Whether the stream is on hold: sendonly, recvonly or inactive, or a re-INVITE's RFC 2543
/// hold (c=0.0.0.0, which says sendrecv; a call whose first SDP had no address yet is not
/// held): the peer may well send nothing then, and the RTP timeout waits.
fn on_hold(negotiated: &Negotiated, sources: &Sources) -> bool {
    negotiated.direction != Direction::SendRecv || sources.held
}

/// A latched source (see [`Sources`]): where the peer's RTP comes `from`, taken while the SDP
/// named `under`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Latch {
    under: SocketAddr,
    from: SocketAddr,
}

/// The next 20 ms of the played file, or silence after its end.
fn next_frame(play: Option<&Vec<i16>>, at: &mut usize) -> Vec<i16> {
    let mut frame = vec![0i16; SAMPLES_PER_20MS];
    if let Some(samples) = play {
        let end = (*at + SAMPLES_PER_20MS).min(samples.len());
        if *at < end {
            frame[..end - *at].copy_from_slice(&samples[*at..end]);
            *at = end;
        }
    }
    frame
}

#[derive(Default)]
struct Received {
    stats: RtpStats,
    recording: Vec<i16>,
}

/// Receive-side state: counters, jitter estimate, playout into the recording.
struct Receiver {
    config: MediaConfig,
    transcoder: Transcoder,
    jitter_buffer: JitterBuffer,
    endpointer: Endpointer,
    detector: dtmf::Detector,
    stats: RtpStats,
    recording: Vec<i16>,
    /// When the packet whose arrival played out the first audio arrived, and that in
    /// milliseconds since the epoch: where the recording starts.
    recording_started: Option<Instant>,
    recording_start_ms: Option<u64>,
    /// Samples left out because the recording would have run ahead of the clock.
    samples_cut: u64,
    /// The latest arrival: the time of what is left in the jitter buffer at the end.
    last_arrival: Option<Instant>,
    vad_fed: usize,
    first_ext_seq: Option<u64>,
    highest_ext_seq: u64,
    /// Packets expected in the streams before the current one (after an SSRC change or a
    /// restart of the sequence numbers).
    expected_before: u64,
    /// The stream's SSRC, and the sequence number that confirms a jump (RFC 3550 A.1).
    ssrc: Option<u32>,
    bad_seq: Option<u16>,
    next_timestamp: Option<u32>,
    last_transit: Option<i64>,
    jitter: f64,
    key_started_ms: u64,
}

/// RFC 3550 A.1: a sequence number further than this ahead of (or `MAX_MISORDER` behind)
/// the highest is a jump; a second packet in sequence after it confirms a restarted stream.
const MAX_DROPOUT: i64 = 3000;
const MAX_MISORDER: i64 = 100;

impl Receiver {
    fn new(config: MediaConfig, transcoder: Transcoder) -> Self {
        Self {
            endpointer: Endpointer::new(config.vad),
            config,
            transcoder,
            jitter_buffer: JitterBuffer::new(JITTER_DEPTH),
            detector: dtmf::Detector::default(),
            stats: RtpStats::default(),
            recording: Vec::new(),
            recording_started: None,
            recording_start_ms: None,
            samples_cut: 0,
            last_arrival: None,
            vad_fed: 0,
            first_ext_seq: None,
            highest_ext_seq: 0,
            expected_before: 0,
            ssrc: None,
            bad_seq: None,
            next_timestamp: None,
            last_transit: None,
            jitter: 0.0,
            key_started_ms: 0,
        }
    }

    /// Whether the packet starts (or confirms) a new stream: another SSRC, or sequence
    /// numbers that jumped and went on from there. Returns false for a packet to discard: the
    /// first after a jump, until the next one confirms it (RFC 3550 A.1).
    fn follow_stream(&mut self, ssrc: u32, seq: u16, arrival: Instant) -> bool {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.resync(arrival);
            }
            self.ssrc = Some(ssrc);
            return true;
        }
        if self.first_ext_seq.is_none() {
            return true;
        }
        let delta = self.jitter_buffer.extend(seq) as i64 - self.highest_ext_seq as i64;
        if (-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
            self.bad_seq = None;
            return true;
        }
        if self.bad_seq == Some(seq) {
            self.resync(arrival);
            return true;
        }
        self.bad_seq = Some(seq.wrapping_add(1));
        false
    }

    /// A new stream: what is held is played out, the old stream's expected count kept for the
    /// loss, and the sequence, timestamp and jitter state start afresh, so the new stream's
    /// packets are not taken for late ones of the old.
    fn resync(&mut self, arrival: Instant) {
        let rest = self.jitter_buffer.drain();
        self.play_out(rest, arrival);
        self.expected_before += self.expected();
        self.stats.packets_dropped_late += self.jitter_buffer.dropped;
        self.jitter_buffer = JitterBuffer::new(JITTER_DEPTH);
        self.first_ext_seq = None;
        self.highest_ext_seq = 0;
        self.bad_seq = None;
        self.next_timestamp = None;
        self.last_transit = None;
    }

    /// Packets expected in the current stream, from its sequence numbers.
    fn expected(&self) -> u64 {
        self.first_ext_seq
            .map_or(0, |first| self.highest_ext_seq - first + 1)
    }

    fn now_ms(&self) -> u64 {
        self.config.epoch.elapsed().as_millis() as u64
    }

    /// One datagram that arrived at `arrival`.
    fn on_datagram(&mut self, data: &[u8], arrival: Instant) -> Vec<MediaEvent> {
        let Ok(rtp) = RtpReader::new(data) else {
            tracing::debug!("ignored a datagram that is not RTP ({} bytes)", data.len());
            return Vec::new();
        };
        self.last_arrival = Some(arrival);
        if !self.follow_stream(rtp.ssrc(), u16::from(rtp.sequence_number()), arrival) {
            return Vec::new();
        }
        let n = self.config.negotiated;
        let ext = self.jitter_buffer.extend(u16::from(rtp.sequence_number()));
        self.first_ext_seq.get_or_insert(ext);
        self.highest_ext_seq = self.highest_ext_seq.max(ext);
        self.stats.packets_received += 1;
        self.stats.bytes_received += rtp.payload().len() as u64;
        let pt = rtp.payload_type();
        if Some(pt) == n.event_pt {
            self.stats.events_received += 1;
            return self.on_event(rtp.timestamp(), rtp.payload());
        }
        if pt != n.audio_pt {
            return Vec::new(); // comfort noise and the like
        }
        self.update_jitter(rtp.timestamp(), arrival);
        let due = self.jitter_buffer.push(
            u16::from(rtp.sequence_number()),
            Queued {
                timestamp: rtp.timestamp(),
                payload: rtp.payload().to_vec(),
            },
        );
        self.play_out(due, arrival)
    }

    fn on_event(&mut self, timestamp: u32, payload: &[u8]) -> Vec<MediaEvent> {
        let clock = self.config.negotiated.codec.clock_rate() as u64;
        let mut events = Vec::new();
        for detected in self.detector.on_packet(timestamp, payload) {
            match detected {
                dtmf::Detected::Began { .. } => self.key_started_ms = self.now_ms(),
                dtmf::Detected::Ended { key, duration } => events.push(MediaEvent::KeyReceived {
                    key,
                    at_ms: self.key_started_ms,
                    duration_ms: duration as u64 * 1000 / clock,
                }),
            }
        }
        events
    }

    /// RFC 3550 §6.4.1 interarrival jitter, in timestamp units.
    fn update_jitter(&mut self, timestamp: u32, arrival: Instant) {
        let clock = self.config.negotiated.codec.clock_rate() as f64;
        let since_epoch = arrival.saturating_duration_since(self.config.epoch);
        let arrival = (since_epoch.as_secs_f64() * clock) as i64;
        let transit = arrival - timestamp as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            // A timestamp wrap shows as a huge jump: skip it rather than poison the estimate.
            if d < clock * 10.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
    }

    /// Samples of 8 kHz audio in `d`.
    fn samples_in(d: Duration) -> usize {
        (d.as_micros() * SAMPLE_RATE as u128 / 1_000_000) as usize
    }

    /// Plays out the packets due at `at` into the recording. A gap in their timestamps up to
    /// [`MAX_CONCEALED`] is concealed as lost audio; a longer one (a pause, a long key press,
    /// timestamps that jumped) is silence, only as long as the time that has really passed
    /// allows. And the recording never runs ahead of the clock by more than the slack: no
    /// stream of packets, however their timestamps jump or however long they are, makes it
    /// longer than the call.
    fn play_out(&mut self, due: Vec<Queued>, at: Instant) -> Vec<MediaEvent> {
        let clock = self.config.negotiated.codec.clock_rate() as u64;
        for packet in due {
            let started = *self.recording_started.get_or_insert(at);
            if self.recording_start_ms.is_none() {
                let since_epoch = started.saturating_duration_since(self.config.epoch);
                self.recording_start_ms = Some(since_epoch.as_millis() as u64);
            }
            let elapsed = at.saturating_duration_since(started);
            // Where this packet's audio starts in a steady stream: as long ago as the
            // recording's first packet's arrival (both played out as the jitter buffer fills).
            let on_time = Self::samples_in(elapsed);
            let limit = Self::samples_in(elapsed + elapsed / CLOCK_DRIFT_PARTS + RECORDING_SLACK);
            if let Some(expected) = self.next_timestamp {
                let gap = packet.timestamp.wrapping_sub(expected);
                // Half the timestamp space or more ahead is behind: overlapping audio, no gap.
                if gap > 0 && gap < 1 << 31 {
                    let samples = (gap as u64 * SAMPLE_RATE as u64 / clock) as usize;
                    if samples <= Self::samples_in(MAX_CONCEALED) {
                        let fill = samples.min(limit.saturating_sub(self.recording.len()));
                        let filler = self.transcoder.conceal(fill);
                        self.recording.extend(filler);
                    } else {
                        let fill = samples.min(on_time.saturating_sub(self.recording.len()));
                        self.recording.resize(self.recording.len() + fill, 0);
                    }
                }
            }
            let samples = self.transcoder.decode(&packet.payload);
            let ticks = samples.len() as u64 * clock / SAMPLE_RATE as u64;
            self.next_timestamp = Some(packet.timestamp.wrapping_add(ticks as u32));
            let keep = samples
                .len()
                .min(limit.saturating_sub(self.recording.len()));
            if keep < samples.len() {
                if self.samples_cut == 0 {
                    tracing::warn!(
                        "the peer's RTP holds more audio than the time that has passed \
                         (timestamps jumping, oversized packets, or a sender clock far too \
                         fast): the recording leaves out what runs ahead of the clock"
                    );
                }
                self.samples_cut += (samples.len() - keep) as u64;
            }
            self.recording.extend_from_slice(&samples[..keep]);
        }
        self.run_endpointer()
    }

    /// Feeds the new whole frames of the recording to the endpointer.
    fn run_endpointer(&mut self) -> Vec<MediaEvent> {
        let start = self.recording_start_ms.unwrap_or(0);
        let frame_ms = |frame: u64| start + frame * 20;
        let mut events = Vec::new();
        while self.vad_fed + SAMPLES_PER_20MS <= self.recording.len() {
            let frame = &self.recording[self.vad_fed..self.vad_fed + SAMPLES_PER_20MS];
            self.vad_fed += SAMPLES_PER_20MS;
            match self.endpointer.push(frame) {
                Some(SpeechEdge::Started { first_loud }) => {
                    events.push(MediaEvent::SpeechStarted {
                        at_ms: frame_ms(first_loud),
                    })
                }
                Some(SpeechEdge::Ended { last_loud }) => events.push(MediaEvent::SpeechEnded {
                    at_ms: frame_ms(last_loud + 1),
                }),
                None => {}
            }
        }
        events
    }

    fn finish(mut self) -> Received {
        let rest = self.jitter_buffer.drain();
        let now = Instant::now();
        self.play_out(rest, self.last_arrival.map_or(now, |last| last.max(now)));
        if self.samples_cut > 0 {
            tracing::debug!("{} samples left out of the recording", self.samples_cut);
        }
        let clock = self.config.negotiated.codec.clock_rate() as f64;
        let expected = self.expected_before + self.expected();
        self.stats.packets_lost = expected.saturating_sub(self.stats.packets_received);
        if expected > 0 {
            self.stats.loss_percent =
                (self.stats.packets_lost as f64 * 10000.0 / expected as f64).round() / 100.0;
        }
        self.stats.jitter_ms = (self.jitter * 1000.0 / clock * 100.0).round() / 100.0;
        self.stats.packets_dropped_late += self.jitter_buffer.dropped;
        Received {
            stats: self.stats,
            recording: self.recording,
        }
    }
}

async fn receive_loop(
    socket: Arc<UdpSocket>,
    config: MediaConfig,
    transcoder: Transcoder,
    (events, latched): (mpsc::Sender<MediaEvent>, watch::Sender<Option<Latch>>),
    mut negotiated: watch::Receiver<Negotiated>,
    stop: CancellationToken,
) -> Received {
    let mut sources = Sources::new(config.negotiated.remote_rtp, config.peer_host);
    let mut rx = Receiver::new(config.clone(), transcoder);
    let mut buf = vec![0u8; 2048];
    let mut last_packet = Instant::now();
    let mut timed_out = false;
    let mut check = tokio::time::interval(Duration::from_millis(100));
    // Tells the sender where the peer's RTP now comes from, when that changed.
    let publish = |sources: &Sources| {
        let latch = sources.latch();
        latched.send_if_modified(|to| std::mem::replace(to, latch) != latch);
    };
    // An event waits for room in the queue without holding up stop: nobody may be reading
    // while the session sends its BYE.
    let deliver = |event| {
        let (events, stop) = (&events, &stop);
        async move {
            tokio::select! {
                sent = events.send(event) => sent.is_ok(),
                _ = stop.cancelled() => false,
            }
        }
    };
    'receiving: loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Ok(()) = negotiated.changed() => {
                rx.config.negotiated = *negotiated.borrow_and_update();
                sources.renegotiated(rx.config.negotiated.remote_rtp);
                publish(&sources);
                // Held or resumed: the RTP timeout counts from now.
                last_packet = Instant::now();
                timed_out = false;
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                if !sources.admits(from) {
                    if rx.stats.packets_ignored == 0 {
                        tracing::warn!(
                            "ignored RTP from {from}: the SDP negotiated {}; RTP from \
                             elsewhere is dropped (the report's rtp.packets_ignored)",
                            sources.negotiated
                        );
                    }
                    rx.stats.packets_ignored += 1;
                    continue;
                }
                publish(&sources);
                last_packet = Instant::now();
                for event in rx.on_datagram(&buf[..len], last_packet) {
                    if !deliver(event).await && stop.is_cancelled() {
                        break 'receiving;
                    }
                }
            }
            _ = check.tick() => {
                // On hold the peer may well send nothing, music or not.
                let held = on_hold(&rx.config.negotiated, &sources);
                if let (Some(limit), false) = (config.rtp_timeout, held) {
                    let silent = last_packet.elapsed();
                    if silent >= limit && !timed_out {
                        timed_out = true;
                        deliver(MediaEvent::RtpTimeout { silent_ms: silent.as_millis() as u64 }).await;
                    }
                }
            }
        }
    }
    rx.finish()
}

/// Where the receiver takes RTP from: the address the SDP negotiated and, as long as nothing
/// has come from exactly there, the first other address of the peer's hosts (the SDP's or
/// the SIP peer's), latched for the rest of the stream. Symmetric RTP (RFC 4961) needs only
/// the first; the latch is for a peer that cannot show its real source in its SDP: one bound
/// to every address, whose packets leave from the address its route picks (baresip, when
/// its SDP names the machine's main address and it sends over loopback), one behind a NAT
/// that keeps the address but not the port, or one sending from another socket. Nothing else
/// is taken: a third party cannot put audio or key presses into the call, nor keep a dead
/// call alive past the RTP timeout. The sender follows the latch (see [`destination`]), as
/// behind a NAT the SDP's address may well be unreachable: RTP goes back where the peer's
/// came from, and no third party can steer it elsewhere.
#[derive(Debug)]
struct Sources {
    negotiated: SocketAddr,
    peer_host: IpAddr,
    latched: Option<SocketAddr>,
    heard_negotiated: bool,
    /// On RFC 2543's hold: a re-INVITE or UPDATE said c=0.0.0.0.
    held: bool,
}

/// The address with an IPv4-mapped IPv6 address as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

impl Sources {
    fn new(negotiated: SocketAddr, peer_host: IpAddr) -> Self {
        Self {
            negotiated: canonical(negotiated),
            peer_host: peer_host.to_canonical(),
            latched: None,
            heard_negotiated: false,
            held: false,
        }
    }

    /// The SDP moved the stream (re-INVITE, UPDATE). An unspecified address (RFC 2543's hold,
    /// c=0.0.0.0) keeps the sources as they are (music on hold comes from where RTP came)
    /// until the stream resumes, to where it was or elsewhere.
    fn renegotiated(&mut self, remote: SocketAddr) {
        if remote.ip().is_unspecified() {
            self.held = true;
        } else if canonical(remote) != self.negotiated {
            *self = Self::new(remote, self.peer_host);
        } else {
            self.held = false;
        }
    }

    /// The latched source, and the SDP address it was latched under, for the sender: none on
    /// hold.
    fn latch(&self) -> Option<Latch> {
        self.latched.filter(|_| !self.held).map(|from| Latch {
            under: self.negotiated,
            from,
        })
    }

    fn admits(&mut self, from: SocketAddr) -> bool {
        let from = canonical(from);
        if from == self.negotiated {
            self.heard_negotiated = true;
            return true;
        }
        let peers = from.ip() == self.negotiated.ip() || from.ip() == self.peer_host;
        if self.latched.is_none() && !self.heard_negotiated && peers {
            tracing::debug!(
                "RTP from {from}, not the negotiated {} but the peer's host: taken from there on",
                self.negotiated
            );
            self.latched = Some(from);
        }
        self.latched == Some(from)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::codec::Codec;

    fn config(remote_rtp: SocketAddr) -> MediaConfig {
        MediaConfig {
            negotiated: Negotiated {
                remote_rtp,
                codec: Codec::Pcmu,
                audio_pt: 0,
                event_pt: Some(101),
                direction: Direction::SendRecv,
            },
            play: None,
            vad: VadConfig {
                threshold_dbfs: -40.0,
                start_frames: 3,
                end_frames: 35,
            },
            key_frames: 5,
            rtp_timeout: None,
            epoch: Instant::now(),
            send_from_start: true,
            peer_host: "127.0.0.1".parse().unwrap(),
        }
    }

    /// Far more received key presses than the event queue holds, and nobody reading it (as
    /// while the session sends its BYE): stop must still return.
    #[tokio::test]
    async fn stop_returns_while_nobody_reads_the_events() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let media = Media::start(
            socket,
            config(peer.local_addr().unwrap()),
            Transcoder::new(Codec::Pcmu).unwrap(),
            Transcoder::new(Codec::Pcmu).unwrap(),
        );
        let mut out = Outgoing {
            ssrc: 7,
            seq: 0,
            timestamp: 0,
        };
        for i in 0..300u32 {
            // One end packet per press: each is a key received.
            let packet = out.packet(101, true, i * 1000, &[5, 0x8a, 3, 32]);
            peer.send_to(&packet, local).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let result = tokio::time::timeout(Duration::from_secs(5), media.stop())
            .await
            .expect("Media::stop hung on a full event queue");
        assert!(result.stats.events_received > 64, "{:?}", result.stats);
    }

    /// PCMU packets of one stream: `seqs` with timestamps 160 apart from `ts0`.
    fn stream(ssrc: u32, seqs: impl Iterator<Item = u16>, ts0: u32) -> Vec<(u16, Vec<u8>)> {
        seqs.enumerate()
            .map(|(i, seq)| {
                let mut out = Outgoing {
                    ssrc,
                    seq,
                    timestamp: 0,
                };
                let ts = ts0.wrapping_add(i as u32 * 160);
                (seq, out.packet(0, false, ts, &[0xff; 160]))
            })
            .collect()
    }

    fn receiver() -> Receiver {
        let addr = "127.0.0.1:9".parse().unwrap();
        Receiver::new(config(addr), Transcoder::new(Codec::Pcmu).unwrap())
    }

    /// Feeds packets sent 20 ms apart, each arriving `late_ms` later, or lost (None).
    fn feed(rx: &mut Receiver, packets: &[(u16, Vec<u8>)], late_ms: impl Fn(usize) -> Option<u64>) {
        let epoch = rx.config.epoch;
        for (i, (_, packet)) in packets.iter().enumerate() {
            if let Some(late) = late_ms(i) {
                let at = epoch + Duration::from_millis(i as u64 * 20 + late);
                rx.on_datagram(packet, at);
            }
        }
    }

    #[test]
    fn two_packets_missing_of_fifty_are_two_lost() {
        let mut rx = receiver();
        let packets = stream(7, 1000..1050, 0);
        feed(&mut rx, &packets, |i| (i != 10 && i != 31).then_some(0));
        let stats = rx.finish().stats;
        assert_eq!(stats.packets_received, 48);
        assert_eq!(stats.packets_lost, 2);
        assert_eq!(stats.loss_percent, 4.0);
        assert_eq!(stats.jitter_ms, 0.0, "steady arrival, no jitter");
    }

    /// RFC 3550 §6.4.1: J += (|D| - J) / 16. Transit alternating by 5 ms gives |D| = 5 ms for
    /// every packet, so J converges on 5 ms.
    #[test]
    fn jitter_follows_rfc_3550() {
        let mut rx = receiver();
        let packets = stream(7, 0..300, 0);
        feed(&mut rx, &packets, |i| Some(if i % 2 == 1 { 5 } else { 0 }));
        let jitter = rx.finish().stats.jitter_ms;
        assert!((4.8..=5.2).contains(&jitter), "{jitter}");
        // After the first step J is |D| / 16 exactly.
        let mut rx = receiver();
        feed(&mut rx, &packets[..2], |i| {
            Some(if i == 1 { 16 } else { 0 })
        });
        assert_eq!(rx.finish().stats.jitter_ms, 1.0);
    }

    /// A new SSRC with lower sequence numbers is a new stream, not 30 late packets.
    #[test]
    fn a_new_ssrc_starts_afresh() {
        let mut rx = receiver();
        let mut packets = stream(1, 100..130, 0);
        packets.extend(stream(2, 5..35, 777_000));
        feed(&mut rx, &packets, |_| Some(0));
        let result = rx.finish();
        assert_eq!(result.stats.packets_dropped_late, 0);
        assert_eq!(result.stats.packets_lost, 0);
        assert_eq!(
            result.recording.len(),
            60 * 160,
            "both streams were played out"
        );
    }

    /// Sequence numbers that jump (same SSRC) restart the stream once a second packet confirms
    /// the jump; the first is discarded (RFC 3550 A.1). Neither way counts as loss.
    #[test]
    fn a_sequence_jump_confirmed_by_the_next_packet_restarts_the_stream() {
        for jump in [20_000u16, 50] {
            let mut rx = receiver();
            let mut packets = stream(1, 1000..1030, 0);
            packets.extend(stream(1, jump..jump + 30, 5_000_000));
            feed(&mut rx, &packets, |_| Some(0));
            let result = rx.finish();
            assert_eq!(result.stats.packets_lost, 0, "jump to {jump}");
            assert_eq!(result.stats.packets_dropped_late, 0, "jump to {jump}");
            assert_eq!(result.stats.packets_received, 59, "jump to {jump}");
        }
    }

    /// A hostile peer's timestamps jump by 59 s a packet: each 13-byte packet asked for a
    /// minute of concealment (200 of them: 187 MB of recording). The recording stays as long
    /// as the packets' real time allows: 200 packets 20 ms apart are 4 s, plus the slack.
    #[test]
    fn timestamp_jumps_cannot_make_the_recording_longer_than_the_call() {
        let mut rx = receiver();
        let mut out = Outgoing {
            ssrc: 7,
            seq: 0,
            timestamp: 0,
        };
        let packets: Vec<(u16, Vec<u8>)> = (0..200u32)
            .map(|i| (i as u16, out.packet(0, false, i * 59 * 8000, &[0xff])))
            .collect();
        feed(&mut rx, &packets, |_| Some(0));
        let result = rx.finish();
        assert_eq!(result.stats.packets_received, 200);
        let bytes = result.recording.len() * 2;
        let seconds = result.recording.len() as f64 / SAMPLE_RATE as f64;
        assert!(
            seconds < 6.5,
            "{seconds} s ({bytes} bytes) of recording from 4 s of packets"
        );
    }

    /// 100 ms lost in a steady stream is concealed as before: the recording keeps its length.
    #[test]
    fn a_100_ms_loss_is_concealed() {
        let mut rx = receiver();
        let packets = stream(7, 0..50, 0);
        feed(&mut rx, &packets, |i| (!(20..25).contains(&i)).then_some(0));
        let result = rx.finish();
        assert_eq!(result.stats.packets_lost, 5);
        assert_eq!(
            result.recording.len(),
            50 * 160,
            "the lost 100 ms filled in"
        );
    }

    /// A peer that stops sending for 3 s (silence suppression, or Asterisk with nothing to
    /// play) and resumes with its timestamps moved on by as much: the pause is kept as
    /// silence, so prompts keep their times and the silence between them ends a prompt.
    #[test]
    fn a_pause_in_the_stream_is_kept_as_silence() {
        let mut rx = receiver();
        let mut packets = stream(7, 0..50, 0);
        packets.extend(stream(7, 50..100, 50 * 160 + 3 * 8000));
        let epoch = rx.config.epoch;
        for (i, (_, packet)) in packets.iter().enumerate() {
            let pause = if i >= 50 { 3000 } else { 0 };
            let at = epoch + Duration::from_millis(i as u64 * 20 + pause);
            rx.on_datagram(packet, at);
        }
        let result = rx.finish();
        assert_eq!(result.recording.len(), 100 * 160 + 3 * 8000);
        assert!(result.recording[50 * 160..50 * 160 + 3 * 8000]
            .iter()
            .all(|&s| s == 0));
    }

    /// RTP from anywhere but the address the SDP negotiated is dropped uncounted: audio and
    /// key presses of a third party (another port, another host) never reach the call.
    #[tokio::test]
    async fn rtp_from_another_address_is_not_counted() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let intruder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let media = Media::start(
            socket,
            config(peer.local_addr().unwrap()),
            Transcoder::new(Codec::Pcmu).unwrap(),
            Transcoder::new(Codec::Pcmu).unwrap(),
        );
        // Another host, first: nothing to latch onto there (Linux routes all of 127/8).
        let elsewhere = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        for (_, packet) in stream(9, 100..110, 0) {
            elsewhere.send_to(&packet, local).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (_, packet) in stream(7, 0..10, 0) {
            peer.send_to(&packet, local).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (_, packet) in stream(7, 10..20, 1600) {
            intruder.send_to(&packet, local).await.unwrap();
        }
        let mut out = Outgoing {
            ssrc: 7,
            seq: 20,
            timestamp: 0,
        };
        // A key press's end packet: "5" held 100 ms.
        let key = out.packet(101, true, 3200, &[5, 0x8a, 3, 32]);
        intruder.send_to(&key, local).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let result = media.stop().await;
        assert_eq!(result.stats.packets_received, 10, "{:?}", result.stats);
        assert_eq!(result.stats.events_received, 0, "{:?}", result.stats);
        assert_eq!(result.stats.packets_ignored, 21, "{:?}", result.stats);
        assert_eq!(result.recording.len(), 10 * 160);
    }

    /// Whether `socket` receives a datagram within `ms`.
    async fn receives_within(socket: &UdpSocket, ms: u64) -> bool {
        let mut buf = [0u8; 2048];
        tokio::time::timeout(Duration::from_millis(ms), socket.recv(&mut buf))
            .await
            .is_ok()
    }

    fn pcmu() -> Transcoder {
        Transcoder::new(Codec::Pcmu).unwrap()
    }

    /// Symmetric RTP: once the peer's RTP comes from another address of its host than the
    /// SDP's (its NAT's), the probe's goes back there; RTP from another host moves nothing.
    #[tokio::test]
    async fn rtp_goes_back_where_the_peers_comes_from() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let named = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let natted = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stranger = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let media = Media::start(socket, config(named.local_addr().unwrap()), pcmu(), pcmu());
        assert!(
            receives_within(&named, 500).await,
            "the SDP's address first"
        );
        for (_, packet) in stream(9, 0..5, 0) {
            stranger.send_to(&packet, local).await.unwrap();
        }
        assert!(
            !receives_within(&stranger, 300).await,
            "RTP to another host"
        );
        for (_, packet) in stream(7, 0..5, 0) {
            natted.send_to(&packet, local).await.unwrap();
        }
        assert!(
            receives_within(&natted, 500).await,
            "no RTP back where the peer's came from"
        );
        media.stop().await;
    }

    /// An unspecified SDP address (c=0.0.0.0) gets no RTP (sent to 0.0.0.0, it would reach
    /// this host: the socket on its port), until the peer's RTP shows where it is. A peer
    /// that sends only, or nothing, gets none even then.
    #[tokio::test]
    async fn no_rtp_goes_to_an_unspecified_address_nor_to_a_peer_that_does_not_want_it() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let this_host = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let unspecified = SocketAddr::new(
            "0.0.0.0".parse().unwrap(),
            this_host.local_addr().unwrap().port(),
        );
        let media = Media::start(socket, config(unspecified), pcmu(), pcmu());
        assert!(
            !receives_within(&this_host, 300).await,
            "RTP sent to 0.0.0.0"
        );
        for (_, packet) in stream(7, 0..5, 0) {
            peer.send_to(&packet, local).await.unwrap();
        }
        assert!(
            receives_within(&peer, 500).await,
            "no RTP once the peer's came"
        );
        media.stop().await;

        // The peer's a=sendonly or a=inactive, mirrored.
        for direction in [Direction::RecvOnly, Direction::Inactive] {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let local = socket.local_addr().unwrap();
            let mut config = config(peer.local_addr().unwrap());
            config.negotiated.direction = direction;
            let media = Media::start(socket, config, pcmu(), pcmu());
            for (_, packet) in stream(7, 0..5, 0) {
                peer.send_to(&packet, local).await.unwrap();
            }
            assert!(
                !receives_within(&peer, 300).await,
                "RTP to a {direction:?} probe's peer"
            );
            media.stop().await;
        }
    }

    /// The negotiated address always; another address of the peer's hosts (the SDP's, the
    /// SIP peer's) only while nothing came from the negotiated address, and then that one
    /// address; no other host ever. A re-INVITE's new address starts afresh, a hold's
    /// c=0.0.0.0 keeps what was.
    #[test]
    fn sources_are_the_negotiated_address_or_one_latched_address_of_the_peer() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let sip_peer: IpAddr = "192.0.2.5".parse().unwrap();
        let mut symmetric = Sources::new(addr("192.0.2.10:4000"), sip_peer);
        assert!(!symmetric.admits(addr("198.51.100.7:4000")), "another host");
        assert!(symmetric.admits(addr("192.0.2.10:4000")));
        assert!(
            !symmetric.admits(addr("192.0.2.10:4002")),
            "nothing to latch: the peer sends from its SDP address"
        );
        assert!(!symmetric.admits(addr("192.0.2.5:4000")));
        assert!(
            symmetric.admits(addr("[::ffff:192.0.2.10]:4000")),
            "IPv4-mapped"
        );

        let mut natted = Sources::new(addr("192.0.2.10:4000"), sip_peer);
        assert!(!natted.admits(addr("198.51.100.7:4000")));
        assert!(natted.admits(addr("192.0.2.10:31000")), "latched");
        assert!(natted.admits(addr("192.0.2.10:31000")));
        assert!(!natted.admits(addr("192.0.2.10:31002")), "one address only");
        assert!(!natted.admits(addr("192.0.2.5:4000")), "one address only");
        assert!(natted.admits(addr("192.0.2.10:4000")), "the SDP's still");

        // Bound to every address, the SDP naming its main one, sending from another.
        let mut multihomed = Sources::new(addr("192.0.2.10:4000"), sip_peer);
        assert!(
            multihomed.admits(addr("192.0.2.5:4000")),
            "the SIP peer's host"
        );
        assert!(!multihomed.admits(addr("198.51.100.7:4000")));

        natted.renegotiated(addr("0.0.0.0:4000"));
        assert!(natted.admits(addr("192.0.2.10:31000")), "held: unchanged");
        natted.renegotiated(addr("192.0.2.20:5000"));
        assert!(!natted.admits(addr("192.0.2.10:31000")), "moved");
        assert!(natted.admits(addr("192.0.2.20:5000")));
    }

    /// The sender follows a latch only under the SDP address it was made under: after a
    /// re-INVITE moved the stream, a latch the receiver has not dropped yet sends nothing to
    /// the old address; on an RFC 2543 hold (c=0.0.0.0) nothing is sent, and an offer with
    /// no address yet is answered where the peer's RTP came from.
    #[test]
    fn the_sender_follows_a_latch_only_under_its_own_sdp() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let sip_peer: IpAddr = "192.0.2.5".parse().unwrap();
        let mut sources = Sources::new(addr("192.0.2.10:4000"), sip_peer);
        assert!(sources.admits(addr("192.0.2.10:31000")));
        let latch = sources.latch();
        let mut n = config(addr("192.0.2.10:4000")).negotiated;
        assert_eq!(destination(&n, latch), Some(addr("192.0.2.10:31000")));
        assert!(!on_hold(&n, &sources));
        // Moved: the old latch is still published, the new address is sent to.
        n.remote_rtp = addr("192.0.2.20:5000");
        assert_eq!(destination(&n, latch), Some(addr("192.0.2.20:5000")));
        // RFC 2543's hold: sendrecv on c=0.0.0.0; the receiver keeps its sources.
        n.remote_rtp = addr("0.0.0.0:4000");
        sources.renegotiated(n.remote_rtp);
        assert_eq!(destination(&n, sources.latch()), None);
        assert!(
            on_hold(&n, &sources),
            "the RTP timeout waits on an RFC 2543 hold"
        );
        assert!(sources.admits(addr("192.0.2.10:31000")), "music on hold");
        // Resumed where it was: the latch again.
        n.remote_rtp = addr("192.0.2.10:4000");
        sources.renegotiated(n.remote_rtp);
        assert_eq!(destination(&n, sources.latch()), latch.map(|l| l.from));
        assert!(!on_hold(&n, &sources));
        n.direction = Direction::SendOnly;
        assert!(on_hold(&n, &sources));
        // No address yet: not a hold (the RTP timeout runs); the peer's RTP shows where.
        let mut unaddressed = Sources::new(addr("0.0.0.0:4000"), sip_peer);
        let n = config(addr("0.0.0.0:4000")).negotiated;
        assert!(!on_hold(&n, &unaddressed));
        assert_eq!(destination(&n, unaddressed.latch()), None);
        assert!(unaddressed.admits(addr("192.0.2.5:4100")));
        assert_eq!(
            destination(&n, unaddressed.latch()),
            Some(addr("192.0.2.5:4100"))
        );
        // Then held with c=0.0.0.0 on that same port: nothing sent.
        unaddressed.renegotiated(n.remote_rtp);
        assert_eq!(destination(&n, unaddressed.latch()), None);
        assert!(on_hold(&n, &unaddressed));
    }

    /// With Opus each concealed 20 ms is a decode: a burst of packets whose timestamps skip
    /// just under the concealment limit conceals no more than the slack's worth in all.
    #[cfg(feature = "opus")]
    #[test]
    fn opus_concealment_is_bounded_by_the_clock_too() {
        let mut config = config("127.0.0.1:9".parse().unwrap());
        config.negotiated.codec = Codec::Opus;
        config.negotiated.audio_pt = 111;
        let mut rx = Receiver::new(config, Transcoder::new(Codec::Opus).unwrap());
        let mut encoder = Transcoder::new(Codec::Opus).unwrap();
        let frame = encoder.encode(&[0i16; SAMPLES_PER_20MS]);
        let mut out = Outgoing {
            ssrc: 7,
            seq: 0,
            timestamp: 0,
        };
        // 20 ms of audio, then 190 ms skipped: 210 ms of media time a packet.
        let at = rx.config.epoch;
        for i in 0..1000u32 {
            let packet = out.packet(111, false, i * 210 * 48, &frame);
            rx.on_datagram(&packet, at);
        }
        let result = rx.finish();
        let seconds = result.recording.len() as f64 / SAMPLE_RATE as f64;
        assert!(
            seconds < 2.5,
            "{seconds} s from a burst of packets: the slack, 2 s"
        );
    }
}
