//! Staff accounts of the support console and their console sessions.

use super::sql::{query, Query};

use super::verifications::parse_column;
use super::{op, Store, StoreError};
use crate::domain::status::StaffRole;
use crate::support::account::{StaffAccount, StaffSession};

impl Store {
    /// Add a staff account; false if the name is taken.
    pub async fn insert_staff(&self, staff: StaffAccount) -> Result<bool, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done = query(
                        "INSERT INTO staff (id, username, password_hash, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (username) DO NOTHING",
                    )
                    .bind(&staff.id)
                    .bind(&staff.username)
                    .bind(&staff.password_hash)
                    .bind(staff.created_at)
                    .execute(&mut *c)
                    .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    pub async fn staff(&self) -> Result<Vec<StaffAccount>, StoreError> {
        self.staff_where("1 = 1", String::new()).await
    }

    pub async fn staff_named(&self, username: &str) -> Result<Option<StaffAccount>, StoreError> {
        let mut found = self
            .staff_where("username = $1", username.to_owned())
            .await?;
        Ok(found.pop())
    }

    async fn staff_where(
        &self,
        condition: &'static str,
        value: String,
    ) -> Result<Vec<StaffAccount>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT id, username, password_hash, created_at, disabled_at, role, \
                         time_zone FROM staff WHERE {condition} ORDER BY username"
                    );
                    let mut query = query(&sql);
                    if condition.contains("$1") {
                        query = query.bind(&value);
                    }
                    let rows = query.fetch_all(&mut *c).await?;
                    rows.iter()
                        .map(|r| {
                            let role: String = r.try_get("role")?;
                            Ok(StaffAccount {
                                id: r.try_get("id")?,
                                username: r.try_get("username")?,
                                password_hash: r.try_get("password_hash")?,
                                created_at: r.try_get("created_at")?,
                                disabled_at: r.try_get("disabled_at")?,
                                role: parse_column("role", &role)?,
                                time_zone: r.try_get("time_zone")?,
                            })
                        })
                        .collect()
                })
            }))
            .await
    }

    /// Set an account's role and time zone (`None`: the support line's); false if there is
    /// no such account.
    pub async fn set_staff(
        &self,
        username: &str,
        role: StaffRole,
        time_zone: Option<String>,
    ) -> Result<bool, StoreError> {
        let username = username.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let done =
                        query("UPDATE staff SET role = $1, time_zone = $2 WHERE username = $3")
                            .bind(role.as_str())
                            .bind(&time_zone)
                            .bind(&username)
                            .execute(&mut *c)
                            .await?;
                    Ok(done.rows_affected() == 1)
                })
            }))
            .await
    }

    /// Disable an account and end its sessions; false if there is no such active account.
    pub async fn disable_staff(&self, username: &str, now: i64) -> Result<bool, StoreError> {
        let change =
            query("UPDATE staff SET disabled_at = $1 WHERE username = $2 AND disabled_at IS NULL")
                .bind(now)
                .bind(username);
        self.change_staff_ending_sessions(username, change).await
    }

    /// Give an account a new password hash and end its sessions; false if there is no such
    /// active account.
    pub async fn set_staff_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let change = query(
            "UPDATE staff SET password_hash = $1 WHERE username = $2 AND disabled_at IS NULL",
        )
        .bind(password_hash)
        .bind(username);
        self.change_staff_ending_sessions(username, change).await
    }

    /// Make a disabled account active again (it signs in anew); false if there is no such
    /// disabled account.
    pub async fn enable_staff(&self, username: &str) -> Result<bool, StoreError> {
        let change = query(
            "UPDATE staff SET disabled_at = NULL WHERE username = $1 AND disabled_at IS NOT NULL",
        )
        .bind(username);
        self.change_staff_ending_sessions(username, change).await
    }

    /// Run `change` to an account and, if it changed it, end its console sessions, in one
    /// transaction; whether it changed the account.
    async fn change_staff_ending_sessions(
        &self,
        username: &str,
        change: Query<'static>,
    ) -> Result<bool, StoreError> {
        let username = username.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    if change.execute(&mut tx).await?.rows_affected() != 1 {
                        return Ok(false);
                    }
                    query(
                        "DELETE FROM staff_sessions WHERE staff_id IN \
                         (SELECT id FROM staff WHERE username = $1)",
                    )
                    .bind(&username)
                    .execute(&mut tx)
                    .await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }))
            .await
    }

    pub async fn insert_staff_session(
        &self,
        token_hash: &str,
        staff_id: &str,
        csrf_token: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let (token_hash, staff_id, csrf_token) = (
            token_hash.to_owned(),
            staff_id.to_owned(),
            csrf_token.to_owned(),
        );
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(
                        "INSERT INTO staff_sessions (token_hash, staff_id, csrf_token, \
                         created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(&token_hash)
                    .bind(&staff_id)
                    .bind(&csrf_token)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// The signed-in staff member of a session, if it is current and the account active.
    pub async fn staff_session(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<StaffSession>, StoreError> {
        let token_hash = token_hash.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(
                        "SELECT s.staff_id, f.username, s.csrf_token, f.role, f.time_zone \
                         FROM staff_sessions s \
                         JOIN staff f ON f.id = s.staff_id WHERE s.token_hash = $1 \
                         AND s.expires_at > $2 AND f.disabled_at IS NULL",
                    )
                    .bind(&token_hash)
                    .bind(now)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| {
                        let role: String = r.try_get("role")?;
                        Ok(StaffSession {
                            staff_id: r.try_get("staff_id")?,
                            username: r.try_get("username")?,
                            csrf_token: r.try_get("csrf_token")?,
                            role: parse_column("role", &role)?,
                            time_zone: r.try_get("time_zone")?,
                        })
                    })
                    .transpose()
                })
            }))
            .await
    }

    pub async fn delete_staff_session(&self, token_hash: &str) -> Result<(), StoreError> {
        let token_hash = token_hash.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query("DELETE FROM staff_sessions WHERE token_hash = $1")
                        .bind(&token_hash)
                        .execute(&mut *c)
                        .await?;
                    Ok(())
                })
            }))
            .await
    }
}
