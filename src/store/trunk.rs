//! The trunk's calls in progress and its pace, which every daemon on the store shares
//! (`trunk_calls`, `trunks`): a dialer call counts from its claim until it ends.

use super::sql::{query, Conn};

use super::StoreError;

/// The trunk a dialer calls through, and its caps, which hold for every daemon together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trunk {
    /// What names it (the dialer's channel template).
    pub name: String,
    /// Calls in progress at most (`dialer.max_concurrent`).
    pub max_calls: i64,
    /// The least time between two Originates (`1 s / dialer.max_per_second`), in ms.
    pub gap_ms: i64,
    /// A call in progress since before this no longer counts (its end was never heard).
    pub calls_since: i64,
}

/// How many more calls the trunk takes now: none before its next Originate is due, else
/// its cap less the calls in progress.
pub(super) async fn trunk_room(c: &mut Conn, trunk: &Trunk, now: i64) -> Result<i64, StoreError> {
    let row = query(
        "SELECT (SELECT COUNT(*) FROM trunk_calls WHERE trunk = $1 AND since >= $2) AS calls, \
         (SELECT next_dial_at FROM trunks WHERE trunk = $1) AS next_dial_at",
    )
    .bind(&trunk.name)
    .bind(trunk.calls_since)
    .fetch_one(&mut *c)
    .await?;
    if row
        .try_get::<Option<i64>>("next_dial_at")?
        .is_some_and(|at| now < at)
    {
        return Ok(0);
    }
    Ok(trunk.max_calls - row.try_get::<i64>("calls")?)
}

/// The trunk call with this ChannelId is over.
pub(super) async fn end_trunk_call(c: &mut Conn, channel_id: &str) -> Result<(), StoreError> {
    query("DELETE FROM trunk_calls WHERE channel_id = $1")
        .bind(channel_id)
        .execute(c)
        .await?;
    Ok(())
}

/// The statement of [`end_attempts_trunk_call`], the attempt's id as `$1`.
pub(super) const END_ATTEMPTS_TRUNK_CALL: &str = "DELETE FROM trunk_calls \
     WHERE channel_id = (SELECT uniqueid FROM call_attempts WHERE id = $1)";

/// The trunk call of call attempt `attempt` (its ChannelId is the attempt's uniqueid) is over.
pub(super) async fn end_attempts_trunk_call(c: &mut Conn, attempt: i64) -> Result<(), StoreError> {
    query(END_ATTEMPTS_TRUNK_CALL)
        .bind(attempt)
        .execute(c)
        .await?;
    Ok(())
}
