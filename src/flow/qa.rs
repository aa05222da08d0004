//! The QA line (`agi://HOST/qa`): a throw-away test verification, then the normal call.
//! With `qa.code` configured a scripted caller keys that code; otherwise the call says a
//! random one first, for a person at a softphone. And the gate of the QA call-backs
//! (`agi://HOST/qa-callback`), which the dialplan asks before it rings a number.

use tokio::io::{AsyncRead, AsyncWrite};

use super::prompts::Prompt;
use super::{play, verify, FlowError, FlowSettings, Hearing};
use crate::domain::phone::masked;
use crate::domain::Verifications;
use callverify_pbx::agi::Session;

/// The channel variable the call-back extensions read after the gate: only `allowed` lets
/// the dialplan ring the number (unset, as when the daemon is down, refuses).
pub const CALLBACK_VARIABLE: &str = "CALLVERIFY_QA_CALLBACK";

pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    settings: &FlowSettings,
    hearing: &Hearing,
) -> Result<(), FlowError> {
    let uniqueid = session.env().uniqueid().to_owned();
    let test = service
        .start_test(&uniqueid, settings.qa_code.as_deref())
        .await?;
    tracing::Span::current().record("verification", test.id.as_str());
    tracing::info!("QA test verification created");
    if settings.qa_code.is_none() {
        session.answer().await?;
        play(session, Prompt::TestCodeIs).await?;
        session
            .say_digits(test.code.as_deref().unwrap_or_default(), "")
            .await?;
    }
    verify::run(session, service, settings, hearing, &test.id).await
}

/// The QA call-back gate (`agi://HOST/qa-callback,NUMBER`): tells the dialplan whether the
/// trunk may ring NUMBER ([`Verifications::may_call_back`]). It plays nothing; the dialplan
/// says the rest.
pub async fn call_back<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    service: &Verifications,
    settings: &FlowSettings,
) -> Result<(), FlowError> {
    let asked = session.env().arg(1).unwrap_or_default();
    let verdict = match service.may_call_back(asked, &settings.qa_callback_numbers) {
        Ok(number) => {
            tracing::info!(number = %number.masked(), "QA call-back allowed");
            "allowed"
        }
        Err(reason) => {
            // What Asterisk passed is a number only if the dialplan was edited to say so.
            let asked: String = asked.chars().take(32).collect();
            tracing::warn!(number = %masked(&asked), %reason, "QA call-back refused");
            "refused"
        }
    };
    session.set_variable(CALLBACK_VARIABLE, verdict).await?;
    Ok(())
}
