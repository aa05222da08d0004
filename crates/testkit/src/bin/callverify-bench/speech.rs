//! `callverify-bench --speech`: the spoken-code recogniser on the Allison corpus.
//!
//! 1. Calls: each clip through the endpointer and the recogniser as a call hears it
//!    (`hear_code`), one at a time: recognition time, recognitions per code, and the latency
//!    the caller lives from the end of their speech to the result.
//! 2. Capacity: whole-clip recognitions with 1, 2, 4... in flight (one model replica each):
//!    recognitions per second and the time each takes, waiting included.
//! 3. Load: calls that start at random (Poisson arrivals, 120 a minute...) and speak in real
//!    time, 20 ms frames on the clock, many at once, through the configured recogniser
//!    (`speech.max_concurrent` turns): each caller's wait from the end of their speech to
//!    the result, by the wall clock.

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
    /// The corpus's seed: 2026 is the suite's accuracy corpus, 7 the README's second one
    #[arg(long, default_value_t = 2026)]
    speech_seed: u64,
    /// Recognitions in flight in the speech capacity runs
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    speech_concurrency: Vec<usize>,
    /// Spoken codes a minute in the real-time load runs (0: none)
    #[arg(long, value_delimiter = ',', default_value = "120")]
    speech_load: Vec<f64>,
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
    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _};

    use callverify::config::Config;
    use callverify_speech::{hear_code, Recognise, Recogniser, RecogniserSettings, Sound, Window};
    use callverify_testkit::corpus::{Clip, Voice, ALLISON_DIGITS};

    use super::SpeechBenchArgs;

    /// One AudioSocket frame: 20 ms of 8 kHz audio.
    const FRAME: Duration = Duration::from_millis(20);

    pub async fn run(config: &Config, args: &SpeechBenchArgs) -> anyhow::Result<ExitCode> {
        let settings = config.recogniser_settings().context(
            "the speech benchmark needs a model: set speech.model or CALLVERIFY_SPEECH_MODEL \
             (./scripts/fetch-speech-model prints one)",
        )?;
        let clips =
            Voice::load(Path::new(ALLISON_DIGITS))?.clips(args.speech_clips, args.speech_seed);
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
        for &per_minute in args.speech_load.iter().filter(|&&r| r > 0.0) {
            load_run(config, &settings, &clips, per_minute).await?;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The wait a caller is promised at the 95th percentile (issue 15).
    const PROMISED: Duration = Duration::from_millis(1500);

    async fn load_run(
        config: &Config,
        settings: &RecogniserSettings,
        clips: &[Clip],
        per_minute: f64,
    ) -> anyhow::Result<()> {
        let recogniser = load(settings, settings.max_concurrent)?;
        let endpoint = config.endpoint_settings();
        // Poisson arrivals: exponential gaps, seeded so that runs compare.
        let mut rng = StdRng::seed_from_u64(2026);
        let mut at = Duration::ZERO;
        let starts: Vec<Duration> = clips
            .iter()
            .map(|_| {
                let start = at;
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                at += Duration::from_secs_f64(-u.ln() * 60.0 / per_minute);
                start
            })
            .collect();
        let began = tokio::time::Instant::now() + Duration::from_millis(100);
        let calls = clips.iter().zip(&starts).map(|(clip, &offset)| {
            let recogniser = &recogniser;
            let endpoint = &endpoint;
            async move {
                let start = began + offset;
                tokio::time::sleep_until(start).await;
                // The caller's audio as a channel delivers it: a frame every 20 ms, and
                // silence after the clip, as a live call goes on.
                let mut frames: Vec<Vec<i16>> =
                    clip.audio.chunks(160).map(<[i16]>::to_vec).collect();
                frames.extend(std::iter::repeat_n(vec![0; 160], 250));
                let paced = futures::stream::iter(frames.into_iter().enumerate()).then(
                    move |(i, frame)| async move {
                        tokio::time::sleep_until(start + FRAME * i as u32).await;
                        Sound::Audio(frame)
                    },
                );
                let heard =
                    hear_code(recogniser, endpoint, clip.code.len(), Box::pin(paced)).await?;
                let wait = heard
                    .speech_end
                    .map(|end| tokio::time::Instant::now().saturating_duration_since(start + end));
                anyhow::Ok((heard.digits == clip.code, wait, heard.recognitions))
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let took = began.elapsed();
        let right = results.iter().filter(|r| r.0).count();
        let recognitions: u32 = results.iter().map(|r| r.2).sum();
        let mut waits: Vec<Duration> = results.iter().filter_map(|r| r.1).collect();
        let late = waits.iter().filter(|&&w| w > PROMISED).count();
        println!(
            "load: {per_minute:.0} spoken codes a minute offered (Poisson), {} calls in {:.1} s, \
             {} turns of {} thread(s): {right} of {} right, {:.2} recognitions per code; end of \
             speech to result {}; {late} callers waited over {:.1} s",
            clips.len(),
            took.as_secs_f64(),
            settings.max_concurrent,
            settings.threads,
            clips.len(),
            f64::from(recognitions) / clips.len() as f64,
            spread(&mut waits),
            PROMISED.as_secs_f64()
        );
        Ok(())
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
