//! The QA line (`agi://HOST/qa`): a throw-away test verification, then the normal call.
//! With `qa.code` configured a scripted caller keys that code; otherwise the call says a
//! random one first, for a person at a softphone.

use tokio::io::{AsyncRead, AsyncWrite};

use super::prompts::Prompt;
use super::{play, verify, FlowError, FlowSettings, Hearing};
use crate::domain::Verifications;
use callverify_pbx::agi::Session;

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
