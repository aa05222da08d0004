//! The self-test call's contract between `callverify doctor` and the daemon: the doctor
//! stores a [`Plan`] under a random token and originates a call into `callverify-selftest`;
//! the daemon that Asterisk reaches takes the plan once, runs the checks on the call (the
//! `selftest` flow) and stores a [`Report`], which the doctor reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::clock::{millis, now_ms};
use crate::store::{SelftestRow, Store, StoreError};

/// A token is good for this long after the doctor created it.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(120);

/// The channel variable the doctor's `Originate` sets and the self-test context passes to
/// the FastAGI script.
pub const TOKEN_VARIABLE: &str = "CALLVERIFY_SELFTEST";

/// What the call is to check, beyond the prompts and AudioSocket (always checked).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Dialplan contexts that must exist.
    pub contexts: Vec<String>,
    /// The trunk as a device (`PJSIP/callverify-trunk`), when the dialer's channel names one.
    pub trunk: Option<String>,
}

/// What the call found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `CALLVERIFY_AGI_HOST` as the dialplan has it.
    pub agi_host: Option<String>,
    /// Each planned context and whether `DIALPLAN_EXISTS` found it.
    pub contexts: Vec<(String, bool)>,
    /// The trunk device and its `DEVICE_STATE` (`NOT_INUSE`, `UNAVAILABLE`, `INVALID`...).
    pub trunk: Option<(String, String)>,
    /// Sound files streamed, per language.
    pub prompts_checked: usize,
    /// (language, file) of each sound Asterisk could not find.
    pub prompts_missing: Vec<(String, String)>,
    pub audiosocket: AudioSocketCheck,
}

/// How `AudioSocket` to the daemon's advertised address went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioSocketCheck {
    /// Not run (the call ended first).
    #[default]
    NotRun,
    /// The daemon's AudioSocket listener got the call's stream.
    Reached { address: String },
    /// Asterisk has no `AudioSocket` application (`EXEC` answered -2).
    NoModule,
    /// The application ran but the stream never reached this daemon.
    NotReached { address: String },
}

/// The self-test rows, for the doctor (create, poll, delete) and the flow (take, report).
#[derive(Clone)]
pub struct Selftests {
    store: Store,
}

impl Selftests {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Store `plan` under a new token, which the self-test call carries.
    pub async fn create(&self, plan: &Plan) -> Result<String, StoreError> {
        let token = crate::domain::ids::random_token("st_", 24);
        let plan = serde_json::to_string(plan).expect("plans serialize");
        self.store.insert_selftest(&token, &plan, now_ms()).await?;
        Ok(token)
    }

    /// The plan of `token`, once, while it is fresh; `None` for any other token.
    pub async fn take(&self, token: &str) -> Result<Option<Plan>, StoreError> {
        let now = now_ms();
        let plan = self
            .store
            .reach_selftest(token, now, now - millis(TOKEN_LIFETIME))
            .await?;
        Ok(plan.and_then(|p| serde_json::from_str(&p).ok()))
    }

    pub async fn report(&self, token: &str, report: &Report) -> Result<bool, StoreError> {
        let report = serde_json::to_string(report).expect("reports serialize");
        self.store.finish_selftest(token, &report).await
    }

    /// Where the self-test stands: reached or not, and its report once written.
    pub async fn state(&self, token: &str) -> Result<Progress, StoreError> {
        Ok(match self.store.selftest(token).await? {
            None
            | Some(SelftestRow {
                reached_at: None, ..
            }) => Progress::Waiting,
            Some(SelftestRow { report: None, .. }) => Progress::Reached,
            Some(SelftestRow {
                report: Some(report),
                ..
            }) => match serde_json::from_str(&report) {
                Ok(report) => Progress::Done(Box::new(report)),
                Err(_) => Progress::Reached,
            },
        })
    }

    pub async fn delete(&self, token: &str) -> Result<(), StoreError> {
        self.store.delete_selftest(token).await
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No daemon has taken the token yet.
    Waiting,
    /// A daemon runs the checks.
    Reached,
    Done(Box<Report>),
}
