//! Support staff: accounts with Argon2id password hashes (memory-hard, so a stolen table
//! resists guessing), and console sessions: a random token in an HttpOnly cookie, stored
//! hashed, with its own CSRF token for forms.

use std::time::Duration;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use subtle::ConstantTimeEq;

use crate::keys::token_hash;
use crate::store::{StaffRow, StaffSession, Store, StoreError};
use crate::verifications::{now_ms, random_token};

#[derive(Debug, thiserror::Error)]
pub enum StaffError {
    #[error("invalid staff name: use 1 to 64 letters, digits, '-', '_' or '.'")]
    InvalidName,
    #[error("the password must be 12 to 1024 characters")]
    WeakPassword,
    #[error("a staff member named {0:?} exists already")]
    Exists(String),
    #[error("no active staff member named {0:?}")]
    Unknown(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A console session as the browser holds it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The cookie value (shown once; only its hash is stored).
    pub token: String,
    pub session: StaffSession,
}

pub struct Staff {
    store: Store,
    session_length: Duration,
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

impl Staff {
    pub fn new(store: Store, session_length: Duration) -> Self {
        Self {
            store,
            session_length,
        }
    }

    pub async fn add(&self, username: &str, password: &str) -> Result<StaffRow, StaffError> {
        let valid = (1..=64).contains(&username.len())
            && username
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(StaffError::InvalidName);
        }
        if !(12..=1024).contains(&password.chars().count()) {
            return Err(StaffError::WeakPassword);
        }
        let password = password.to_owned();
        // Argon2 takes tens of milliseconds of CPU: off the async threads.
        let password_hash = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await
        .map_err(|e| StaffError::Hash(e.to_string()))?
        .map_err(|e| StaffError::Hash(e.to_string()))?;
        let row = StaffRow {
            id: random_token("stf_", 12),
            username: username.to_owned(),
            password_hash,
            created_at: now_ms(),
            disabled_at: None,
        };
        if !self.store.insert_staff(row.clone()).await? {
            return Err(StaffError::Exists(username.to_owned()));
        }
        Ok(row)
    }

    /// How long a sign-in lasts, for the cookie's Max-Age.
    pub fn session_secs(&self) -> u64 {
        self.session_length.as_secs()
    }

    pub async fn list(&self) -> Result<Vec<StaffRow>, StoreError> {
        self.store.staff().await
    }

    pub async fn disable(&self, username: &str) -> Result<(), StaffError> {
        if self.store.disable_staff(username, now_ms()).await? {
            Ok(())
        } else {
            Err(StaffError::Unknown(username.to_owned()))
        }
    }

    /// Check a password and open a session; `None` for a wrong name or password.
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<SignedIn>, StaffError> {
        let account = self
            .store
            .staff_named(username)
            .await?
            .filter(|s| s.disabled_at.is_none());
        let hash = account.as_ref().map(|a| a.password_hash.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || {
            let hash: &str = match &hash {
                Some(hash) => hash,
                None => dummy_hash(),
            };
            Argon2::default()
                .verify_password(password.as_bytes(), hash)
                .is_ok()
        })
        .await
        .map_err(|e| StaffError::Hash(e.to_string()))?;
        let Some(account) = account.filter(|_| matches) else {
            return Ok(None);
        };
        let token = random_token("cvs_", 32);
        let csrf_token = random_token("", 32);
        let now = now_ms();
        let expires = now + i64::try_from(self.session_length.as_millis()).unwrap_or(i64::MAX / 2);
        self.store
            .insert_staff_session(&token_hash(&token), &account.id, &csrf_token, now, expires)
            .await?;
        Ok(Some(SignedIn {
            token,
            session: StaffSession {
                staff_id: account.id,
                username: account.username,
                csrf_token,
            },
        }))
    }

    /// The session a cookie names, if current.
    pub async fn session(&self, token: &str) -> Result<Option<StaffSession>, StoreError> {
        if !token.starts_with("cvs_") || token.len() > 64 {
            return Ok(None);
        }
        self.store.staff_session(&token_hash(token), now_ms()).await
    }

    pub async fn sign_out(&self, token: &str) -> Result<(), StoreError> {
        self.store.delete_staff_session(&token_hash(token)).await
    }
}

/// Whether a form's CSRF token is the session's, compared in constant time.
pub fn csrf_matches(session: &StaffSession, presented: &str) -> bool {
    !presented.is_empty() && bool::from(session.csrf_token.as_bytes().ct_eq(presented.as_bytes()))
}
