//! `callverify-bench --speech`: the spoken-code recogniser on the Allison corpus.
//!
//! 1. Calls: each clip through the endpointer and the recogniser as a call hears it
//!    (`hear_code`), one at a time: recognition time, recognitions per code, and the latency
//!    the caller lives from the end of their speech to the result.
//! 2. Capacity: whole-clip recognitions with 1, 2, 4... in flight (one model replica each):
//!    recognitions per second and the time each takes, waiting included.

use clap::Args;

#[derive(Args)]
// The default build only reads `speech`, to say that it has no recogniser.
#[cfg_attr(not(feature = "speech"), allow(dead_code))]
pub struct SpeechBenchArgs {
    /// Run the spoken-code benchmark instead (build with --features speech; model from
    /// speech.model / CALLVERIFY_SPEECH_MODEL)
    #[arg(long)]
    pub speech: bool,
    /// Spoken codes per run of the speech benchmark
    #[arg(long, default_value_t = 20)]
    speech_clips: usize,
    /// Recognitions in flight in the speech capacity runs
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    speech_concurrency: Vec<usize>,
}

#[cfg(not(feature = "speech"))]
pub async fn run(
    _config: &callverify::config::Config,
    _args: &SpeechBenchArgs,
) -> anyhow::Result<std::process::ExitCode> {
    Err(callverify_speech::SpeechError::NotBuilt.into())
}

#[cfg(feature = "speech")]
pub use measured::run;

#[cfg(feature = "speech")]
mod measured {
    use std::path::Path;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use anyhow::Context as _;
    use futures::StreamExt;

    use callverify::config::Config;
    use callverify_speech::{hear_code, Recognise, Recogniser, RecogniserSettings, Sound, Window};
    use callverify_testkit::corpus::{Clip, Voice, ALLISON_DIGITS};

    use super::SpeechBenchArgs;

    pub async fn run(config: &Config, args: &SpeechBenchArgs) -> anyhow::Result<ExitCode> {
        let settings = config.recogniser_settings().context(
            "the speech benchmark needs a model: set speech.model or CALLVERIFY_SPEECH_MODEL \
             (./scripts/fetch-speech-model prints one)",
        )?;
        let clips = Voice::load(Path::new(ALLISON_DIGITS))?.clips(args.speech_clips, 2026);
        let speech: f32 = clips.iter().map(|c| c.speech_secs).sum();
        println!(
            "callverify bench --speech: {} codes of 4-8 digits ({:.1} s of speech each on \
             average), model {}, threads per recognition: {}, {} cores",
            clips.len(),
            speech / clips.len() as f32,
            settings.model.display(),
            settings.threads,
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        let per_code = calls_run(config, &settings, &clips).await?;
        for &in_flight in &args.speech_concurrency {
            capacity_run(&settings, &clips, in_flight.max(1), per_code).await?;
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn calls_run(
        config: &Config,
        settings: &RecogniserSettings,
        clips: &[Clip],
    ) -> anyhow::Result<f64> {
        let recogniser = load(settings, 1)?;
        let endpoint = config.endpoint_settings();
        let (mut right, mut noisy, mut noisy_right, mut recognitions) = (0, 0, 0, 0);
        let (mut waits, mut latencies) = (Vec::new(), Vec::new());
        for clip in clips {
            let frames: Vec<Vec<i16>> = clip.audio.chunks(160).map(<[i16]>::to_vec).collect();
            let heard = hear_code(
                &recogniser,
                &endpoint,
                clip.code.len(),
                futures::stream::iter(frames).map(Sound::Audio),
            )
            .await?;
            let ok = heard.digits == clip.code;
            right += usize::from(ok);
            noisy += usize::from(clip.noisy);
            noisy_right += usize::from(clip.noisy && ok);
            recognitions += heard.recognitions;
            waits.push(heard.result_wait);
            latencies.extend(heard.latency());
        }
        println!(
            "calls: {right} of {} codes right ({noisy_right} of the {noisy} over line noise); \
             {:.2} recognitions per code; wait for the result after listening stopped {}; end \
             of speech to result {}",
            clips.len(),
            recognitions as f32 / clips.len() as f32,
            spread(&mut waits),
            spread(&mut latencies)
        );
        Ok(f64::from(recognitions) / clips.len() as f64)
    }

    async fn capacity_run(
        settings: &RecogniserSettings,
        clips: &[Clip],
        in_flight: usize,
        recognitions_per_code: f64,
    ) -> anyhow::Result<()> {
        let recogniser = load(settings, in_flight)?;
        let started = Instant::now();
        let mut took: Vec<Duration> = futures::stream::iter(clips)
            .map(|clip| recogniser.recognise(clip.audio.clone(), Window::Heard))
            .buffer_unordered(in_flight)
            .map(|r| r.map(|r| r.took))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let per_sec = clips.len() as f64 / started.elapsed().as_secs_f64();
        println!(
            "capacity: {in_flight} in flight: {per_sec:.2} recognitions/s (about {:.0} spoken \
             codes a minute); each {}",
            per_sec * 60.0 / recognitions_per_code,
            spread(&mut took)
        );
        Ok(())
    }

    fn load(settings: &RecogniserSettings, max_concurrent: usize) -> anyhow::Result<Recogniser> {
        Ok(Recogniser::load(&RecogniserSettings {
            max_concurrent,
            ..settings.clone()
        })?)
    }

    /// "p50 .. p95 .. max ..".
    fn spread(values: &mut [Duration]) -> String {
        values.sort_unstable();
        let at = |p: f64| values[((values.len() as f64 * p) as usize).min(values.len() - 1)];
        if values.is_empty() {
            return "(none)".into();
        }
        format!(
            "p50 {:.2?} p95 {:.2?} max {:.2?}",
            at(0.5),
            at(0.95),
            at(1.0)
        )
    }
}
