//! The `api_keys` table: the web app's API keys, stored by the hash of the secret, and their
//! revocation.

use super::sql::{query, Row};

use super::{op, Store, StoreError};
use crate::domain::api_keys::ApiKey;

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        let (key, key_hash) = (key.clone(), key_hash.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(
                        "INSERT INTO api_keys (id, name, key_hash, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(&key.id)
                    .bind(&key.name)
                    .bind(&key_hash)
                    .bind(key.created_at)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// The key whose hash is `key_hash`, revoked or not.
    pub async fn api_key_by_hash(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let key_hash = key_hash.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(
                        "SELECT id, name, created_at, revoked_at FROM api_keys WHERE key_hash = $1",
                    )
                    .bind(&key_hash)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| api_key_from_row(&r)).transpose()
                })
            }))
            .await
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT id, name, created_at, revoked_at FROM api_keys ORDER BY created_at",
                    )
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(api_key_from_row).collect()
                })
            }))
            .await
    }

    /// Revoke a key; false if there is no such key or it was revoked already.
    pub async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(now)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }
}

fn api_key_from_row(r: &Row) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}
