//! Argon2id password checks on a fixed pair of threads. Each check takes 19 MiB and tens of
//! milliseconds of a core; run on tokio's blocking pool, a flood of sign-ins would spread
//! them over many threads, each keeping its own allocator arena (memory that stays taken
//! after the flood). Here at most [`CHECKERS`] checks run at once, always on the same
//! threads, and the rest queue.

use std::sync::{Arc, Mutex};
use std::thread;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use tokio::sync::{mpsc, oneshot};

use crate::domain::ids::random_token;

/// Threads checking passwords.
pub const CHECKERS: usize = 2;
/// Checks waiting at most; more wait to be queued.
const QUEUE: usize = 64;

struct Check {
    /// The account's hash; none: a name without an account, checked against a dummy hash
    /// so that it costs as long as a wrong password.
    hash: Option<String>,
    password: String,
    verdict: oneshot::Sender<bool>,
}

/// The checking threads; they end when this is dropped.
pub struct PasswordChecks {
    queue: mpsc::Sender<Check>,
}

impl PasswordChecks {
    pub fn start() -> Self {
        let (queue, checks) = mpsc::channel::<Check>(QUEUE);
        let checks = Arc::new(Mutex::new(checks));
        for n in 0..CHECKERS {
            let checks = checks.clone();
            thread::Builder::new()
                .name(format!("password-check-{n}"))
                .spawn(move || loop {
                    let next = checks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .blocking_recv();
                    let Some(check) = next else { return };
                    let hash = check.hash.as_deref().unwrap_or_else(|| dummy_hash());
                    let matches = Argon2::default()
                        .verify_password(check.password.as_bytes(), hash)
                        .is_ok();
                    let _ = check.verdict.send(matches);
                })
                .expect("starting a password-check thread");
        }
        Self { queue }
    }

    /// Whether `password` matches `hash` (none: no account, never a match).
    pub async fn matches(&self, hash: Option<String>, password: &str) -> bool {
        let (verdict, answer) = oneshot::channel();
        let check = Check {
            hash: hash.clone(),
            password: password.to_owned(),
            verdict,
        };
        if self.queue.send(check).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false) && hash.is_some()
    }
}

/// Verified when no account matches, so that a wrong name costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(random_token("", 32).as_bytes())
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_and_wrong_passwords_and_unknown_names() {
        let checks = PasswordChecks::start();
        let hash = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(checks.matches(Some(hash.clone()), "correct horse").await);
        assert!(!checks.matches(Some(hash), "wrong").await);
        assert!(!checks.matches(None, "anything").await);
    }
}
