//! Call flows: what each FastAGI script says and does. Flows speak typed AGI calls and the
//! verification rules; they never touch sockets or the store directly.

pub mod entry;
pub mod listen;
pub mod manual;
pub mod prompts;
pub mod qa;
pub mod read_code;
pub mod selftest;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::doctor::selftest::Selftests;
use crate::domain::ids::valid_id;
use crate::domain::{Verifications, VerifyError};
use crate::store::StoreError;
use crate::support::Support;
use callverify_pbx::agi::{AgiError, Handler, Session};
use callverify_pbx::audiosocket::Hub;
use callverify_speech::{CodeRecogniser, EndpointSettings};
use prompts::Prompt;

/// The FastAGI scripts the daemon serves (`agi://HOST:PORT/<script>`).
pub const SCRIPTS: &[&str] = &["verify", "manual", "qa", "qa-callback", "selftest"];

/// Timing and patience of the flows.
#[derive(Debug, Clone)]
pub struct FlowSettings {
    /// How often "press #" is asked after the greeting.
    pub ack_prompts: u32,
    /// How long to wait for `#` after "press #" has played.
    pub ack_wait: Duration,
    /// Silent code prompts before the call ends (silence never uses up an attempt).
    pub entry_silences: u32,
    /// GET DATA's wait for each key.
    pub digit_timeout: Duration,
    /// The QA line's fixed test code, if configured.
    pub qa_code: Option<String>,
    /// The numbers QA call-backs may ring (`qa.callback_numbers`), in E.164.
    pub qa_callback_numbers: Vec<String>,
}

/// Time each prompt may take in [`FlowSettings::longest_call`] (the kit's longest plays 6 s).
const PROMPT_ALLOWANCE: Duration = Duration::from_secs(15);

impl FlowSettings {
    /// The longest a verification call can last once answered, with these settings: every
    /// "press #" prompt and its wait, then every code entry the call allows (each silence and
    /// each wrong code: the longest code keyed at the slowest, or `listen` of speech, and
    /// their prompts). A verification still `calling` this long (and a ring) after its code
    /// expired has lost the daemon that called.
    pub fn longest_call(&self, max_attempts: u32, listen: Duration) -> Duration {
        let ack = (self.ack_wait + PROMPT_ALLOWANCE) * self.ack_prompts;
        let entry = self.digit_timeout * *crate::domain::codes::LENGTHS.end()
            + listen
            + PROMPT_ALLOWANCE * 3;
        ack + entry * (self.entry_silences + max_attempts)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Agi(#[from] AgiError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Routes each FastAGI session to its flow by script name.
pub struct Router {
    service: Arc<Verifications>,
    settings: FlowSettings,
    support: Arc<Support>,
    hearing: Hearing,
    selftests: Selftests,
}

/// How the flows hear the caller beyond keys: the AudioSocket listener's hub, and spoken
/// codes when a recogniser is loaded.
#[derive(Clone)]
pub struct Hearing {
    pub audio: Hub,
    pub speech: Option<Arc<SpokenCodes>>,
}

impl Hearing {
    /// Whether a callee of `locale` may say the code: the recogniser is asked for English
    /// and maps English words to digits, so other languages are asked for keys only.
    pub fn understands(&self, locale: &str) -> bool {
        self.speech.is_some()
            && locale
                .get(..2)
                .is_some_and(|l| l.eq_ignore_ascii_case("en"))
    }
}

/// The recogniser and when to stop listening.
pub struct SpokenCodes {
    pub recogniser: CodeRecogniser,
    pub endpoint: EndpointSettings,
}

impl Router {
    pub fn new(
        service: Arc<Verifications>,
        settings: FlowSettings,
        support: Arc<Support>,
        hearing: Hearing,
        selftests: Selftests,
    ) -> Self {
        Self {
            service,
            settings,
            support,
            hearing,
            selftests,
        }
    }
}

impl Handler for Router {
    async fn handle<S: AsyncRead + AsyncWrite + Unpin + Send>(&self, session: &mut Session<S>) {
        let _in_progress = self.service.metrics().call_started();
        let span = tracing::Span::current();
        let result = match session.env().script() {
            "verify" => match session.env().arg(1).map(str::to_owned) {
                Some(id) => {
                    // What Asterisk passed is on every line of the call only when it is
                    // shaped like an id (anything else is unknown, and up to 8 KiB long).
                    if valid_id(&id) {
                        span.record("verification", id.as_str());
                    }
                    verify::run(session, &self.service, &self.settings, &self.hearing, &id).await
                }
                None => {
                    tracing::warn!("verify called without a verification id (agi_arg_1)");
                    goodbye(session, Prompt::NotAvailable).await
                }
            },
            "qa" => qa::run(session, &self.service, &self.settings, &self.hearing).await,
            "qa-callback" => qa::call_back(session, &self.service, &self.settings).await,
            "manual" => {
                let metrics = self.service.metrics();
                manual::run(session, &self.support, &self.hearing.audio, metrics).await
            }
            "selftest" => {
                let token = session.env().arg(1).unwrap_or_default().to_owned();
                selftest::run(session, &self.selftests, &self.hearing.audio, &token).await
            }
            other => {
                tracing::warn!(script = other, "unknown FastAGI script");
                let message = format!("callverify: unknown script {other}");
                session.verbose(&message, 1).await.map_err(FlowError::from)
            }
        };
        match result {
            Ok(()) => {}
            Err(FlowError::Agi(e)) if e.is_hangup() => tracing::info!("caller hung up"),
            Err(e) => {
                tracing::error!(error = %e, "call flow failed");
                // Say sorry rather than leave the caller in silence, when the connection
                // is still in step (a refused command or a store failure).
                let in_step = matches!(
                    e,
                    FlowError::Verify(_)
                        | FlowError::Store(_)
                        | FlowError::Agi(AgiError::Refused { .. })
                );
                if in_step && !session.hung_up() {
                    let _ = goodbye(session, Prompt::TechnicalProblem).await;
                }
            }
        }
    }
}

/// Say `prompt`, then goodbye, then hang up.
async fn goodbye<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    prompt: Prompt,
) -> Result<(), FlowError> {
    play(session, prompt).await?;
    play(session, Prompt::Goodbye).await?;
    session.hangup().await?;
    Ok(())
}

/// Play a prompt to its end, with no key interrupting it.
async fn play<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    prompt: Prompt,
) -> Result<(), AgiError> {
    session.stream_file(prompt.file(), "").await.map(drop)
}
