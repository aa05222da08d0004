//! Spoken codes end to end, as the call flow hears them: Allison's digits joined into 4-8
//! digit codes with human gaps, through mu-law, half with line noise, fed in 20 ms frames
//! through the endpointer and the Whisper recogniser (`hear_code`).
//!
//! Needs the `speech` feature and the model: `./scripts/test` fetches it and sets
//! CALLVERIFY_TEST_SPEECH_MODEL; without it these tests fail, they do not skip.
#![cfg(feature = "speech")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use callverify_speech::{
    hear_code, Ending, EndpointSettings, Recognise, Recogniser, RecogniserSettings, Sound, Window,
};
use callverify_testkit::corpus::{Voice, ALLISON_DIGITS};

const MODEL_ENV: &str = "CALLVERIFY_TEST_SPEECH_MODEL";

fn recogniser() -> Recogniser {
    recogniser_with_turns(2)
}

fn recogniser_with_turns(max_concurrent: usize) -> Recogniser {
    let model = std::env::var_os(MODEL_ENV).unwrap_or_else(|| {
        panic!(
            "{MODEL_ENV} is not set: the recognition tests need the Whisper model. Run \
             ./scripts/test, or {MODEL_ENV}=$(./scripts/fetch-speech-model) cargo test \
             --features speech"
        )
    });
    Recogniser::load(&RecogniserSettings {
        model: PathBuf::from(model),
        max_concurrent,
        threads: 1,
    })
    .expect("load the speech model")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_98_percent_of_spoken_codes_are_heard_whole_and_of_the_noisy_ones() {
    let recogniser = recogniser();
    let voice = Voice::load(Path::new(ALLISON_DIGITS))
        .unwrap_or_else(|e| panic!("the spoken-digit corpus: {e}"));
    let clips = voice.clips(50, 2026);
    let settings = EndpointSettings::default();
    let started = Instant::now();
    // Two calls at a time, as many as the recogniser runs at once.
    let results: Vec<_> = futures::stream::iter(clips.iter().enumerate())
        .map(|(i, clip)| {
            let recogniser = &recogniser;
            let settings = &settings;
            async move {
                let frames = clip
                    .audio
                    .chunks(160)
                    .map(<[i16]>::to_vec)
                    .collect::<Vec<_>>();
                let heard = hear_code(
                    recogniser,
                    settings,
                    clip.code.len(),
                    futures::stream::iter(frames).map(Sound::Audio),
                )
                .await
                .expect("recognition runs");
                (i, heard)
            }
        })
        .buffer_unordered(2)
        .collect()
        .await;

    let (mut right, mut noisy, mut noisy_right) = (0, 0, 0);
    let mut latencies = Vec::new();
    for (i, heard) in &results {
        let clip = &clips[*i];
        let ok = heard.digits == clip.code;
        right += usize::from(ok);
        noisy += usize::from(clip.noisy);
        noisy_right += usize::from(clip.noisy && ok);
        latencies.push(heard.latency().unwrap_or(Duration::MAX));
        println!(
            "clip {i:2}: {:8} heard {:9} {} noisy={} group_pause={} {:?}, {} recognitions, latency {:?}",
            clip.code,
            heard.digits,
            if ok { "ok   " } else { "WRONG" },
            clip.noisy,
            clip.group_pause,
            heard.ending,
            heard.recognitions,
            heard.latency()
        );
        assert_ne!(
            heard.ending,
            Ending::InputEnded,
            "clip {i}: the clip ends in silence"
        );
    }
    latencies.sort();
    println!(
        "{right} of {} codes right; latency from end of speech p50 {:?} max {:?}; {:.1} s in all",
        results.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap(),
        started.elapsed().as_secs_f32()
    );
    assert!(
        right * 100 >= results.len() * 98,
        "{right} of {} codes heard whole, under 98 %",
        results.len()
    );
    assert!(
        noisy_right * 100 >= noisy * 98,
        "{noisy_right} of {noisy} codes over line noise heard whole, under 98 %"
    );
}

/// More calls speaking at once than there are turns: the ones that wait run together as one
/// batch, and each caller gets its own code back, not a neighbour's; a caller who hangs up
/// while waiting (or while its batch runs) costs the others nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_speaking_at_once_share_batches_and_each_hears_its_own_code() {
    let recogniser = recogniser_with_turns(1);
    let voice = Voice::load(Path::new(ALLISON_DIGITS))
        .unwrap_or_else(|e| panic!("the spoken-digit corpus: {e}"));
    let clips: Vec<_> = voice
        .clips(40, 7)
        .into_iter()
        .filter(|c| !c.noisy)
        .take(7)
        .collect();
    assert_eq!(clips.len(), 7);
    let settings = EndpointSettings::default();
    // The first caller hangs up at once: its recognition is queued, or already running.
    let gone = tokio::time::timeout(
        Duration::from_millis(5),
        recogniser.recognise(clips[0].audio.clone(), Window::Heard),
    )
    .await;
    assert!(gone.is_err(), "a recognition takes longer than 5 ms");
    let heard = futures::future::join_all(clips[1..].iter().map(|clip| {
        let frames: Vec<Vec<i16>> = clip.audio.chunks(160).map(<[i16]>::to_vec).collect();
        hear_code(
            &recogniser,
            &settings,
            clip.code.len(),
            futures::stream::iter(frames).map(Sound::Audio),
        )
    }))
    .await;
    for (clip, heard) in clips[1..].iter().zip(heard) {
        assert_eq!(heard.expect("recognition runs").digits, clip.code);
    }
}

#[tokio::test]
async fn a_quiet_line_gives_no_digits() {
    let recogniser = recogniser();
    // 3 s of faint hiss, as if the endpointer had taken a noise burst for speech.
    let mut seed = 1u32;
    let hiss = (0..24_000)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 16) as i16 >> 8) / 2
        })
        .collect();
    let recognition = recogniser.recognise(hiss, Window::Heard).await.unwrap();
    assert_eq!(recognition.digits, "", "{recognition:?}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let error = Recogniser::load(&RecogniserSettings {
        model: PathBuf::from("/nonexistent/whisper"),
        max_concurrent: 1,
        threads: 1,
    })
    .err()
    .expect("no model there")
    .to_string();
    assert!(error.contains("/nonexistent/whisper"), "{error}");
}
