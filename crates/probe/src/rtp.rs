//! One call's media: a sender that keeps a steady 20 ms pace (audio or silence, and RFC 4733
//! key presses in between), and a receiver that puts packets through the jitter buffer,
//! decodes them into the recording, finds prompts in them and reports received key presses.

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
        let sender = tokio::spawn(send_loop(
            socket.clone(),
            config.clone(),
            transcoder_tx,
            command_rx,
            negotiated_rx.clone(),
            stop.clone(),
        ));
        let receiver = tokio::spawn(receive_loop(
            socket,
            config,
            transcoder_rx,
            event_tx,
            negotiated_rx,
            stop.clone(),
        ));
        Self {
            commands,
            negotiated,
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
    negotiated: watch::Receiver<Negotiated>,
    stop: CancellationToken,
) -> SendCounters {
    let ticks = config.negotiated.codec.ticks_per_frame();
    let mut out = Outgoing {
        ssrc: rand::random(),
        seq: rand::random(),
        timestamp: rand::random(),
    };
    let mut counters = SendCounters::default();
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
                let remote = n.remote_rtp;
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
    /// Milliseconds since the epoch at which the recording starts (first audio packet).
    recording_start_ms: Option<u64>,
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
            recording_start_ms: None,
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
    fn follow_stream(&mut self, ssrc: u32, seq: u16) -> bool {
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.resync();
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
            self.resync();
            return true;
        }
        self.bad_seq = Some(seq.wrapping_add(1));
        false
    }

    /// A new stream: what is held is played out, the old stream's expected count kept for the
    /// loss, and the sequence, timestamp and jitter state start afresh, so the new stream's
    /// packets are not taken for late ones of the old.
    fn resync(&mut self) {
        let rest = self.jitter_buffer.drain();
        self.play_out(rest);
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
        if !self.follow_stream(rtp.ssrc(), u16::from(rtp.sequence_number())) {
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
        self.play_out(due)
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

    fn play_out(&mut self, due: Vec<Queued>) -> Vec<MediaEvent> {
        let clock = self.config.negotiated.codec.clock_rate();
        for packet in due {
            if self.recording_start_ms.is_none() {
                self.recording_start_ms = Some(self.now_ms());
            }
            if let Some(expected) = self.next_timestamp {
                let gap = packet.timestamp.wrapping_sub(expected);
                // Lost packets (or a key press, whose time the sender skipped) leave a gap;
                // anything larger than a minute is a new timestamp base, not a gap.
                if gap > 0 && gap < clock * 60 {
                    let samples = gap as u64 * SAMPLE_RATE as u64 / clock as u64;
                    let filler = self.transcoder.conceal(samples as usize);
                    self.recording.extend(filler);
                }
            }
            let samples = self.transcoder.decode(&packet.payload);
            let ticks = samples.len() as u64 * clock as u64 / SAMPLE_RATE as u64;
            self.next_timestamp = Some(packet.timestamp.wrapping_add(ticks as u32));
            self.recording.extend(samples);
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
        self.play_out(rest);
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
    events: mpsc::Sender<MediaEvent>,
    mut negotiated: watch::Receiver<Negotiated>,
    stop: CancellationToken,
) -> Received {
    let mut rx = Receiver::new(config.clone(), transcoder);
    let mut buf = vec![0u8; 2048];
    let mut last_packet = Instant::now();
    let mut timed_out = false;
    let mut check = tokio::time::interval(Duration::from_millis(100));
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
                // Held or resumed: the RTP timeout counts from now.
                last_packet = Instant::now();
                timed_out = false;
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _from)) = received else { continue };
                last_packet = Instant::now();
                for event in rx.on_datagram(&buf[..len], last_packet) {
                    if !deliver(event).await && stop.is_cancelled() {
                        break 'receiving;
                    }
                }
            }
            _ = check.tick() => {
                // On hold (sendonly or inactive) the peer may well send nothing, music or not.
                let held = rx.config.negotiated.direction != Direction::SendRecv;
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
}
