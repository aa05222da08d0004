//! Silence the frames do not carry. A channel that sends no audio while its caller is silent
//! (a Local channel; a SIP leg with silence suppression or VAD) leaves gaps in the stream: a
//! gap is silence that lasted as long as the wall clock says, and listening must be able to
//! end on it. [`with_gaps`] turns a stream of received audio into one of [`Sound`]s, with a
//! [`Sound::Gap`] whenever no audio came for a tick.

use std::time::Duration;

use callverify_audio::SAMPLE_RATE;
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::Instant;

/// What the caller's side sent, or did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sound {
    /// Received samples (8 kHz mono).
    Audio(Vec<i16>),
    /// No audio came for this long beyond what was received: silence.
    Gap(Duration),
}

/// How long no audio must come before a gap is reported: well over the 20 ms between frames
/// and the jitter of a LAN between Asterisk and the daemon, well under the pauses that end
/// listening (0.7 s, 1.6 s).
pub const GAP_TICK: Duration = Duration::from_millis(200);

/// `audio` with the gaps in it, measured from now. Audio is accounted at its own length, so a
/// burst (frames that waited in the socket while a recognition ran, read without waiting) is
/// no gap. Time the audio does not account for is a gap when nothing came for a tick, and
/// when audio had to be waited for and came more than a tick after what was heard before:
/// frames far shorter than the time between them (empty ones, say) carry silence too, or a
/// peer sending them would keep listening open for ever.
pub fn with_gaps<S>(audio: S, tick: Duration) -> impl Stream<Item = Sound> + Unpin
where
    S: Stream<Item = Vec<i16>> + Unpin,
{
    let heard_until = Instant::now();
    let waiting: Option<Vec<i16>> = None;
    Box::pin(futures::stream::unfold(
        (audio, heard_until, waiting),
        move |(mut audio, mut heard_until, waiting)| async move {
            if let Some(samples) = waiting {
                heard_until += length(&samples);
                return Some((Sound::Audio(samples), (audio, heard_until, None)));
            }
            let (next, waited) = match audio.next().now_or_never() {
                Some(next) => (Ok(next), false),
                None => (tokio::time::timeout(tick, audio.next()).await, true),
            };
            match next {
                Ok(Some(samples)) => {
                    let now = Instant::now();
                    let unaccounted = now.saturating_duration_since(heard_until);
                    if waited && unaccounted > tick {
                        // The silence first, then the audio that ended it.
                        return Some((Sound::Gap(unaccounted), (audio, now, Some(samples))));
                    }
                    heard_until += length(&samples);
                    Some((Sound::Audio(samples), (audio, heard_until, None)))
                }
                Ok(None) => None,
                Err(_) => {
                    let now = Instant::now();
                    let gap = now.saturating_duration_since(heard_until);
                    Some((Sound::Gap(gap), (audio, heard_until.max(now), None)))
                }
            }
        },
    ))
}

/// How long `samples` last.
fn length(samples: &[i16]) -> Duration {
    Duration::from_micros(samples.len() as u64 * 1_000_000 / u64::from(SAMPLE_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// 20 ms frames at the pace given, as a real channel sends them.
    fn paced(frames: usize, every: Duration) -> impl Stream<Item = Vec<i16>> + Unpin {
        Box::pin(futures::stream::iter(0..frames).then(move |_| async move {
            tokio::time::sleep(every).await;
            vec![1; 160]
        }))
    }

    fn gaps(sounds: &[Sound]) -> Duration {
        sounds
            .iter()
            .map(|s| match s {
                Sound::Gap(d) => *d,
                Sound::Audio(_) => Duration::ZERO,
            })
            .sum()
    }

    #[tokio::test(start_paused = true)]
    async fn frames_in_real_time_have_no_gaps() {
        let sounds: Vec<Sound> = with_gaps(paced(100, FRAME), GAP_TICK).collect().await;
        assert_eq!(sounds.len(), 100);
        assert_eq!(gaps(&sounds), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_in_the_frames_is_a_gap_as_long_as_the_clock_says() {
        // 1 s of audio, 3 s of nothing, 1 s of audio.
        let audio = paced(50, FRAME)
            .chain(paced(1, Duration::from_secs(3) + FRAME))
            .chain(paced(49, FRAME));
        let sounds: Vec<Sound> = with_gaps(Box::pin(audio), GAP_TICK).collect().await;
        let audio = sounds
            .iter()
            .filter(|s| matches!(s, Sound::Audio(_)))
            .count();
        assert_eq!(audio, 100);
        let gap = gaps(&sounds);
        assert!(
            gap >= Duration::from_millis(2800) && gap <= Duration::from_secs(3),
            "{gap:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_frames_carry_the_silence_between_them() {
        // An empty frame every 100 ms for 3 s: no audio, 3 s of silence all the same.
        let empty = Box::pin(futures::stream::iter(0..30).then(|_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Vec::new()
        }));
        let sounds: Vec<Sound> = with_gaps(empty, GAP_TICK).collect().await;
        let gap = gaps(&sounds);
        assert!(
            gap >= Duration::from_millis(2700) && gap <= Duration::from_secs(3),
            "{gap:?}"
        );
        // Each gap comes before the frame that ended it; no frame is lost.
        let frames = sounds
            .iter()
            .filter(|s| matches!(s, Sound::Audio(_)))
            .count();
        assert_eq!(frames, 30);
    }

    /// A recogniser that is never asked: no speech comes.
    struct Deaf;

    impl crate::Recognise for Deaf {
        async fn recognise(
            &self,
            _audio: Vec<i16>,
            _window: crate::Window,
        ) -> Result<crate::Recognition, crate::SpeechError> {
            panic!("no speech was sent")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_of_empty_frames_ends_on_its_silence() {
        // A peer that sends an empty frame every 100 ms, for ever.
        let empty = Box::pin(futures::stream::repeat(()).then(|()| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Vec::new()
        }));
        let settings = crate::EndpointSettings::default();
        let turn = crate::listen_for_code(&Deaf, &settings, 6, with_gaps(empty, GAP_TICK));
        let turn = tokio::time::timeout(Duration::from_secs(60), turn).await;
        assert!(
            turn.is_ok(),
            "still listening after a minute of empty frames"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_after_a_wait_is_no_gap() {
        // 2 s of frames that waited in the socket come at once: audio, no silence.
        let burst = futures::stream::iter(vec![vec![1; 160]; 100]);
        let mut sounds = with_gaps(burst, GAP_TICK);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut got = Vec::new();
        while let Some(sound) = sounds.next().await {
            got.push(sound);
        }
        assert_eq!(got.len(), 100);
        assert_eq!(gaps(&got), Duration::ZERO);
    }
}
