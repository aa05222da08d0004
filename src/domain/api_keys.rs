//! API keys for the web app: shown once at creation, stored as a SHA-256 hash (the keys
//! carry 160 random bits, so a plain hash cannot be reversed by guessing).

use super::clock::now_ms;
use super::ids::{random_token, token_hash};
use crate::store::{Store, StoreError};

/// An API key (the key itself is not kept: only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key name: use 1 to 64 letters, digits, spaces, '-', '_' or '.'")]
    InvalidName,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ApiKeys {
    store: Store,
}

impl ApiKeys {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Make a key; the returned secret is shown once and not kept.
    pub async fn create(&self, name: &str) -> Result<(ApiKey, String), KeyError> {
        let valid = (1..=64).contains(&name.chars().count())
            && name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.'));
        if !valid {
            return Err(KeyError::InvalidName);
        }
        let secret = random_token("cvk_", 32);
        let row = ApiKey {
            id: random_token("key_", 12),
            name: name.to_owned(),
            created_at: now_ms(),
            revoked_at: None,
        };
        self.store
            .insert_api_key(&row, &token_hash(&secret))
            .await?;
        Ok((row, secret))
    }

    /// The live key matching `presented`, if any.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<ApiKey>, StoreError> {
        if !presented.starts_with("cvk_") || presented.len() > 64 {
            return Ok(None);
        }
        let found = self.store.api_key_by_hash(&token_hash(presented)).await?;
        Ok(found.filter(|k| k.revoked_at.is_none()))
    }

    pub async fn list(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.store.api_keys().await
    }

    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        self.store.revoke_api_key(id, now_ms()).await
    }
}
