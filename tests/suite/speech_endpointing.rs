//! The endpointer on a real voice: Allison's digits (Debian's asterisk-core-sounds-en-wav)
//! joined into codes with human gaps, through mu-law, clean and with line noise. No model
//! needed: this checks where listening stops, not what was said.

use std::path::Path;
use std::time::Duration;

use callverify_speech::{EndReason, Endpoint, EndpointSettings, Endpointer};
use callverify_testkit::corpus::{Voice, ALLISON_DIGITS};

fn voice() -> Voice {
    Voice::load(Path::new(ALLISON_DIGITS)).unwrap_or_else(|e| {
        panic!("the spoken-digit corpus needs Debian's asterisk-core-sounds-en-wav: {e}")
    })
}

#[test]
fn listening_ends_after_the_last_digit_never_inside_a_code() {
    let settings = EndpointSettings::default();
    for (i, clip) in voice().clips(60, 11).iter().enumerate() {
        let mut endpointer = Endpointer::new(&settings);
        // As `hear_code` does while interim recognitions hear too few digits.
        endpointer.set_hangover(settings.incomplete_hangover);
        // Mostly AudioSocket's 20 ms frames, sometimes a short last frame of a file.
        let mut events = Vec::new();
        for (n, chunk) in clip.audio.chunks(160).enumerate() {
            let (a, b) = chunk.split_at(if n % 37 == 36 {
                72.min(chunk.len())
            } else {
                chunk.len()
            });
            events.extend(endpointer.push(a));
            events.extend(endpointer.push(b));
        }
        let what = format!(
            "clip {i} ({} digits, noisy {})",
            clip.code.len(),
            clip.noisy
        );
        assert_eq!(
            events.last(),
            Some(&Endpoint::End(EndReason::Hangover)),
            "{what}: {events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Endpoint::End(_)))
                .count(),
            1,
            "{what}"
        );
        let speech_end = endpointer.speech_end().expect("speech heard");
        let end_secs = speech_end.as_secs_f32();
        // Under noise a digit's fading end is lost in it; never more than its last sounds.
        assert!(
            end_secs > clip.speech_secs - 0.3 && end_secs < clip.speech_secs + 0.05,
            "{what}: speech ended at {end_secs:.2} s, the last digit at {:.2} s",
            clip.speech_secs
        );
        assert_eq!(
            endpointer.received(),
            speech_end + settings.incomplete_hangover,
            "{what}: the hangover is counted in received audio"
        );
        assert!(endpointer.received() < clip_duration(&clip.audio));
    }
}

#[test]
fn pauses_come_at_group_pauses_and_at_the_end_not_between_digits() {
    let settings = EndpointSettings::default();
    let clips = voice().clips(60, 12);
    let (mut grouped, mut noisy, mut extra) = (0, 0, 0);
    for (i, clip) in clips.iter().enumerate() {
        let mut endpointer = Endpointer::new(&settings);
        endpointer.set_hangover(settings.incomplete_hangover);
        let pauses = clip
            .audio
            .chunks(160)
            .filter_map(|c| endpointer.push(c))
            .filter(|e| *e == Endpoint::Pause)
            .count();
        // The corpus's group pauses are 1.0-1.4 s, digit gaps 0.2-0.6 s; the pause is 0.7 s.
        let expected = 1 + usize::from(clip.group_pause);
        grouped += usize::from(clip.group_pause);
        let what = format!(
            "clip {i} ({} digits, noisy {})",
            clip.code.len(),
            clip.noisy
        );
        if clip.noisy {
            // Line noise hides the soft ends of some digits, and then a 0.6 s gap reads as
            // a pause: one more interim recognition, nothing worse.
            assert!(pauses >= expected, "{what}: {pauses} pauses");
            noisy += 1;
            extra += pauses - expected;
        } else {
            assert_eq!(pauses, expected, "{what}");
        }
    }
    assert!(grouped >= 10, "the corpus has group pauses ({grouped})");
    assert!(
        extra <= noisy,
        "{extra} pauses between digits in {noisy} noisy clips: interim recognitions to spare"
    );
}

fn clip_duration(audio: &[i16]) -> Duration {
    Duration::from_secs_f32(audio.len() as f32 / 8000.0)
}
