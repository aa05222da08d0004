//! The `selftest` script: `callverify doctor`'s call through Asterisk
//! (`agi://HOST/selftest,<token>` from the `callverify-selftest` context). It looks at the
//! running dialplan from inside a call, as only a call can: the contexts, the trunk's device
//! state, every sound the flows play in every language, and AudioSocket back to this
//! daemon; then it stores the report under the doctor's token and hangs up.

use tokio::io::{AsyncRead, AsyncWrite};

use super::listen::{listen, Listened, Why};
use super::prompts::{sound_files, LANGUAGES};
use super::FlowError;
use crate::doctor::selftest::{AudioSocketCheck, Report, Selftests};
use callverify_pbx::agi::{AgiError, Session};
use callverify_pbx::audiosocket::Hub;

pub async fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    session: &mut Session<S>,
    selftests: &Selftests,
    hub: &Hub,
    token: &str,
) -> Result<(), FlowError> {
    // Only a doctor's fresh token: nobody else gets a tour of the prompts.
    let Some(plan) = selftests.take(token).await? else {
        tracing::warn!("selftest called with an unknown, used or expired token");
        session.hangup().await?;
        return Ok(());
    };
    let mut report = Report {
        agi_host: session.get_variable("CALLVERIFY_AGI_HOST").await?,
        ..Report::default()
    };
    for context in plan.contexts {
        let found = session
            .get_variable(&format!("DIALPLAN_EXISTS({context})"))
            .await?;
        report
            .contexts
            .push((context, found.as_deref() == Some("1")));
    }
    if let Some(device) = plan.trunk {
        // No value: func_devstate is not loaded, which tells as little as INVALID.
        let state = session
            .get_variable(&format!("DEVICE_STATE({device})"))
            .await?
            .unwrap_or_else(|| "INVALID".into());
        report.trunk = Some((device, state));
    }
    let language = session.get_variable("CHANNEL(language)").await?;
    for lang in LANGUAGES {
        session.set_variable("CHANNEL(language)", lang).await?;
        for file in sound_files() {
            report.prompts_checked += 1;
            if !session.sound_exists(file).await? {
                report
                    .prompts_missing
                    .push((lang.to_string(), file.to_owned()));
            }
        }
    }
    if let Some(language) = language {
        session.set_variable("CHANNEL(language)", &language).await?;
    }
    let address = hub.advertise().to_owned();
    report.audiosocket = match listen(session, hub, |stream| stream.hang_up()).await? {
        Listened::Heard(()) => AudioSocketCheck::Reached { address },
        Listened::Unavailable(Why::NoApplication) => AudioSocketCheck::NoModule,
        Listened::Unavailable(Why::NotReached) => AudioSocketCheck::NotReached { address },
        Listened::HungUp(_) => return Err(AgiError::Hangup.into()),
    };
    if !selftests.report(token, &report).await? {
        tracing::warn!("the doctor gave up on this self-test before its report");
    }
    tracing::info!(
        missing_prompts = report.prompts_missing.len(),
        "self-test call done"
    );
    session.hangup().await?;
    Ok(())
}
