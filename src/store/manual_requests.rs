//! The support line's requests: manual-verification requests (the callers' messages, their
//! recordings and transcripts, staff decisions on them) and the audit trail.

use super::lockouts::forget_strikes;
use super::sql::{placeholder_list, query, Conn, Query, Row};
use super::subject_locks;

use super::verifications::parse_column;
use super::{op, Store, StoreError};
use crate::domain::status::Room;
use crate::domain::status::{RequestStatus, Status};
use crate::support::request::{
    AuditEntry, AuditFilter, Cursor, Decided, Decision, ManualRequest, MessageQuota,
    NewManualRequest, RequestFilter, RequestPage, Search,
};

/// Statuses a verification can be approved from by hand.
const APPROVABLE: &str = "'pending', 'failed', 'unanswered', 'expired'";

/// The requests of the listing's key `key` (a placeholder), joined as `r` with their
/// verification `v`: as [`ManualRequest::visible_to`] says.
fn visible_to(key: &str) -> String {
    format!("(r.verification_id IS NULL OR v.api_key_id = {key})")
}

/// What a search finds, with its three values bound from `$first` on ([`bind_search`]): a
/// request or verification id, a user_ref (any case), transcript words, or the caller's or
/// the verification's number ending in the digits (so that a national number finds its
/// E.164 form).
fn searched(first: usize) -> String {
    let (text, words, digits) = (first, first + 1, first + 2);
    format!(
        "(${text} IS NULL OR r.id = ${text} OR r.verification_id = ${text} \
         OR LOWER(v.user_ref) = LOWER(${text}) \
         OR LOWER(COALESCE(r.transcript, '')) LIKE ${words} ESCAPE '\\' \
         OR (${digits} IS NOT NULL AND (r.caller LIKE ${digits} OR v.phone LIKE ${digits})))"
    )
}

/// The values of [`searched`]: the text, it as a LIKE pattern of lower case, a phone
/// number's digits as a suffix pattern.
fn bind_search<'q>(query: Query<'q>, search: Option<&Search>) -> Query<'q> {
    query
        .bind(search.map(|s| s.text.clone()))
        .bind(search.map(|s| format!("%{}%", like_escaped(&s.text.to_lowercase()))))
        .bind(
            search
                .and_then(|s| s.digits.as_ref())
                .map(|d| format!("%{d}")),
        )
}

const REQUEST_COLUMNS: &str = "r.id, r.created_at, r.caller, r.caller_match, r.verification_id, \
     v.user_ref, v.status AS verification_status, v.api_key_id, r.status, r.ended_by, \
     r.duration_ms, CASE WHEN r.recording IS NULL THEN 0 ELSE 1 END AS has_recording, \
     r.transcript, r.decided_at, r.decided_by, r.reason";

impl Store {
    /// The verification a support caller's number is about: the latest one that is pending,
    /// in a call, failed or unanswered, or that locked the number out (never one that was
    /// verified or canceled since).
    pub async fn support_match(&self, phone: &str, now: i64) -> Result<Option<String>, StoreError> {
        let phone = phone.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(
                        "SELECT id FROM verifications WHERE phone = $1 AND is_test = 0 AND \
                         (status IN ('pending', 'calling', 'failed', 'unanswered') OR id IN \
                          (SELECT verification_id FROM lockouts WHERE kind = 'phone' \
                           AND subject = $1 AND locked_until > $2)) \
                         ORDER BY created_at DESC LIMIT 1",
                    )
                    .bind(&phone)
                    .bind(now)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.map(|r| r.try_get("id")).transpose()
                })
            }))
            .await
    }

    /// Whether the support line takes a message from `caller` (`None`: withheld) at `now`.
    pub async fn message_room(
        &self,
        caller: Option<String>,
        quota: MessageQuota,
        now: i64,
    ) -> Result<Room, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move { room(c, caller.as_deref(), quota, now).await })
            }))
            .await
    }

    /// Keep `new` as an open request if `quota` still has room for it ([`Room::Open`]);
    /// the room is counted and the message inserted one after the other for all daemons.
    pub async fn keep_manual_request(
        &self,
        new: NewManualRequest,
        quota: MessageQuota,
    ) -> Result<Room, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock(&mut tx, [SUPPORT_LINE.to_owned()]).await?;
                    let room = room(&mut tx, new.caller.as_deref(), quota, new.created_at).await?;
                    if room == Room::Open {
                        insert_request(&mut tx, &new).await?;
                    }
                    tx.commit().await?;
                    Ok(room)
                })
            }))
            .await
    }

    /// Insert `new` as an open request, whatever the quota (tests, imports).
    pub async fn insert_manual_request(&self, new: NewManualRequest) -> Result<(), StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move { insert_request(c, &new).await })
            }))
            .await
    }

    /// A page of requests: open ones oldest first (the work queue), decided ones and all of
    /// them newest first, so that a long history never hides what came last. Keyset paging
    /// on (received, id): following `next` returns every request the filter matches once,
    /// also while new ones arrive (an open queue's new requests come on its last pages).
    pub async fn manual_requests(&self, filter: RequestFilter) -> Result<RequestPage, StoreError> {
        self.engine
            .run(op(move |c| {
                let (order, after) = if filter.status == Some(RequestStatus::Open) {
                    ("ASC", ">")
                } else {
                    ("DESC", "<")
                };
                Box::pin(async move {
                    let search = filter.search.as_ref();
                    let statement = format!(
                        "SELECT {REQUEST_COLUMNS} FROM manual_requests r \
                         LEFT JOIN verifications v ON v.id = r.verification_id \
                         WHERE ($1 IS NULL OR r.status = $1) \
                         AND ($2 IS NULL OR {}) \
                         AND ($4 IS NULL OR r.created_at {after} $4 \
                              OR (r.created_at = $4 AND r.id {after} $5)) \
                         AND {} \
                         ORDER BY r.created_at {order}, r.id {order} LIMIT $3",
                        visible_to("$2"),
                        searched(6)
                    );
                    let rows = query(&statement)
                        .bind(filter.status.map(RequestStatus::as_str))
                        .bind(&filter.api_key_id)
                        .bind(filter.limit + 1)
                        .bind(filter.after.as_ref().map(|a| a.created_at))
                        .bind(filter.after.as_ref().map(|a| a.id.clone()));
                    let rows = bind_search(rows, search).fetch_all(&mut *c).await?;
                    let mut requests = rows
                        .iter()
                        .map(request_from_row)
                        .collect::<Result<Vec<_>, _>>()?;
                    let more = requests.len() as i64 > filter.limit;
                    requests.truncate(filter.limit as usize);
                    let next = more.then(|| requests.last().map(Cursor::of)).flatten();
                    Ok(RequestPage { requests, next })
                })
            }))
            .await
    }

    /// How many requests of each status the filter finds (its status and paging aside).
    pub async fn manual_request_counts(
        &self,
        filter: RequestFilter,
    ) -> Result<Vec<(RequestStatus, i64)>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let search = filter.search.as_ref();
                    let statement = format!(
                        "SELECT r.status, COUNT(*) AS n FROM manual_requests r \
                         LEFT JOIN verifications v ON v.id = r.verification_id \
                         WHERE ($1 IS NULL OR {}) \
                         AND {} GROUP BY r.status",
                        visible_to("$1"),
                        searched(2)
                    );
                    let query = query(&statement).bind(&filter.api_key_id);
                    let rows = bind_search(query, search).fetch_all(&mut *c).await?;
                    rows.iter()
                        .map(|r| {
                            let status: String = r.try_get("status")?;
                            Ok((parse_column("status", &status)?, r.try_get("n")?))
                        })
                        .collect()
                })
            }))
            .await
    }

    pub async fn manual_request(&self, id: &str) -> Result<Option<ManualRequest>, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query(format!(
                        "SELECT {REQUEST_COLUMNS} FROM manual_requests r \
                         LEFT JOIN verifications v ON v.id = r.verification_id WHERE r.id = $1"
                    ))
                    .bind(&id)
                    .fetch_optional(&mut *c)
                    .await?;
                    row.as_ref().map(request_from_row).transpose()
                })
            }))
            .await
    }

    /// Store what the recogniser made of a message (unless it was purged meanwhile).
    pub async fn set_transcript(&self, id: &str, transcript: &str) -> Result<(), StoreError> {
        let (id, transcript) = (id.to_owned(), transcript.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    query(
                        "UPDATE manual_requests SET transcript = $1 \
                         WHERE id = $2 AND purged_at IS NULL",
                    )
                    .bind(&transcript)
                    .bind(&id)
                    .execute(&mut *c)
                    .await?;
                    Ok(())
                })
            }))
            .await
    }

    /// Up to `limit` requests kept before `kept_before` whose transcript never came (a daemon
    /// stopped while it was being written), oldest first: their ids, WAV files and
    /// languages.
    pub async fn untranscribed(
        &self,
        kept_before: i64,
        limit: i64,
    ) -> Result<Vec<(String, Vec<u8>, String)>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT id, recording, language FROM manual_requests \
                         WHERE transcript IS NULL AND recording IS NOT NULL \
                         AND purged_at IS NULL AND created_at < $1 \
                         ORDER BY created_at LIMIT $2",
                    )
                    .bind(kept_before)
                    .bind(limit)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter()
                        .map(|r| {
                            Ok((
                                r.try_get("id")?,
                                r.try_get("recording")?,
                                r.try_get("language")?,
                            ))
                        })
                        .collect()
                })
            }))
            .await
    }

    /// The WAV file of a request, unless purged.
    pub async fn manual_recording(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let row = query("SELECT recording FROM manual_requests WHERE id = $1")
                        .bind(&id)
                        .fetch_optional(&mut *c)
                        .await?;
                    Ok(row
                        .map(|r| r.try_get::<Option<Vec<u8>>>("recording"))
                        .transpose()?
                        .flatten())
                })
            }))
            .await
    }

    /// Approve or reject an open request, and audit it, in one transaction. Approving verifies
    /// the verification (the outbox trigger queues its webhook) and lifts its lockouts.
    pub async fn decide_manual(
        &self,
        id: &str,
        decision: Decision,
        actor: &str,
        now: i64,
    ) -> Result<Decided, StoreError> {
        let (id, actor) = (id.to_owned(), actor.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    let Some(row) =
                        query("SELECT status, verification_id FROM manual_requests WHERE id = $1")
                            .bind(&id)
                            .fetch_optional(&mut tx)
                            .await?
                    else {
                        return Ok(Decided::NotFound);
                    };
                    let status: String = row.try_get("status")?;
                    let status = parse(&status, "manual_requests.status")?;
                    if status != RequestStatus::Open {
                        return Ok(Decided::AlreadyDecided(status));
                    }
                    let matched: Option<String> = row.try_get("verification_id")?;
                    let (new_status, verification_id, reason, action) = match decision {
                        Decision::Approve { verification_id } => {
                            if matched.is_some()
                                && verification_id.is_some()
                                && verification_id != matched
                            {
                                return Ok(Decided::MatchedOther);
                            }
                            let Some(vid) = verification_id.or(matched) else {
                                return Ok(Decided::NoVerification);
                            };
                            // The number's and the user's locks first, as a code check
                            // takes them: the approval and a check do not interleave.
                            let Some(owner) =
                                query("SELECT phone, user_ref FROM verifications WHERE id = $1")
                                    .bind(&vid)
                                    .fetch_optional(&mut tx)
                                    .await?
                            else {
                                return Ok(Decided::NotApprovable(None));
                            };
                            let phone: String = owner.try_get("phone")?;
                            let user_ref: String = owner.try_get("user_ref")?;
                            subject_locks::lock_number_and_user(&mut tx, &phone, &user_ref).await?;
                            let verified = query(format!(
                                "UPDATE verifications SET status = 'verified', verified_at = $1, \
                                 updated_at = $1 WHERE id = $2 AND status IN ({APPROVABLE})"
                            ))
                            .bind(now)
                            .bind(&vid)
                            .execute(&mut tx)
                            .await?;
                            if verified.rows_affected() == 0 {
                                let current: Option<String> =
                                    query("SELECT status FROM verifications WHERE id = $1")
                                        .bind(&vid)
                                        .fetch_optional(&mut tx)
                                        .await?
                                        .map(|r| r.try_get::<String>("status"))
                                        .transpose()?;
                                let current = current
                                    .map(|s: String| parse::<Status>(&s, "verifications.status"))
                                    .transpose()?;
                                if current != Some(Status::Verified) {
                                    return Ok(Decided::NotApprovable(current));
                                }
                            } else {
                                // Verified by this approval (not before it, which would forget
                                // wrong codes made since): its lockouts end, and the number's
                                // and the user's wrong codes are forgotten, as a verified code
                                // forgets them.
                                query(
                                    "UPDATE lockouts SET locked_until = $1 \
                                     WHERE verification_id = $2 AND locked_until > $1",
                                )
                                .bind(now)
                                .bind(&vid)
                                .execute(&mut tx)
                                .await?;
                                forget_strikes(&mut tx, &phone, &user_ref).await?;
                            }
                            (RequestStatus::Approved, Some(vid), None, "approve")
                        }
                        Decision::Reject { reason } => {
                            (RequestStatus::Rejected, matched, Some(reason), "reject")
                        }
                    };
                    // Still open: a decision taken meanwhile (by another daemon, or staff
                    // and the API at once) wins, and this transaction is rolled back.
                    let decided = query(
                        "UPDATE manual_requests SET status = $1, verification_id = $2, \
                         reason = $3, decided_at = $4, decided_by = $5 \
                         WHERE id = $6 AND status = 'open'",
                    )
                    .bind(new_status.as_str())
                    .bind(&verification_id)
                    .bind(&reason)
                    .bind(now)
                    .bind(&actor)
                    .bind(&id)
                    .execute(&mut tx)
                    .await?;
                    if decided.rows_affected() == 0 {
                        return Ok(Decided::AlreadyDecided(new_status));
                    }
                    let detail = match (&verification_id, &reason) {
                        (_, Some(reason)) => reason.clone(),
                        (Some(vid), None) => format!("verified {vid}"),
                        (None, None) => String::new(),
                    };
                    insert_audit(&mut tx, now, &actor, action, &id, &detail).await?;
                    tx.commit().await?;
                    Ok(Decided::Done { verification_id })
                })
            }))
            .await
    }

    pub async fn audit(
        &self,
        actor: &str,
        action: &'static str,
        subject: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let (actor, subject, detail) = (actor.to_owned(), subject.to_owned(), detail.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(
                    async move { insert_audit(c, now, &actor, action, &subject, &detail).await },
                )
            }))
            .await
    }

    /// Audit `action` on `subject` within `budget`: written while fewer than `budget.max`
    /// entries of its actions with this `detail` were written since `budget.since`; past
    /// that, the first refused writes `budget.over` instead (so the log says that some went
    /// unaudited), and the rest write nothing. Counted and written in one transaction, one
    /// after the other for one detail, on every daemon of the store. True when written.
    pub async fn audit_within(
        &self,
        actor: &str,
        action: &'static str,
        subject: &str,
        detail: &'static str,
        now: i64,
        budget: AuditBudget,
    ) -> Result<bool, StoreError> {
        let (actor, subject) = (actor.to_owned(), subject.to_owned());
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let mut tx = c.begin().await?;
                    subject_locks::lock(&mut tx, [subject_locks::audit_budget(detail)]).await?;
                    let list = placeholder_list(3, budget.actions.len());
                    let count = query(format!(
                        "SELECT COUNT(*) AS n FROM audit_log \
                         WHERE detail = $1 AND at > $2 AND action IN ({list})"
                    ))
                    .bind(detail)
                    .bind(budget.since);
                    let written: i64 = budget
                        .actions
                        .iter()
                        .fold(count, |count, action| count.bind(*action))
                        .fetch_one(&mut tx)
                        .await?
                        .try_get("n")?;
                    let within = written < budget.max;
                    if within {
                        insert_audit(&mut tx, now, &actor, action, &subject, detail).await?;
                    } else {
                        // The span's note, touched (a write, as an entry written is: a spent
                        // budget does not make these answers faster than the others), or
                        // written when there is none yet.
                        let (over, over_subject, over_detail) = budget.over;
                        let touched = query(
                            "UPDATE audit_log SET at = at WHERE id = (SELECT MAX(id) \
                             FROM audit_log WHERE action = $1 AND at > $2)",
                        )
                        .bind(over)
                        .bind(budget.since)
                        .execute(&mut tx)
                        .await?
                        .rows_affected();
                        if touched == 0 {
                            insert_audit(&mut tx, now, &actor, over, over_subject, over_detail)
                                .await?;
                        }
                    }
                    tx.commit().await?;
                    Ok(within)
                })
            }))
            .await
    }

    /// The audit trail of one subject (a request id, a staff name), oldest first.
    pub async fn audit_entries(&self, subject: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let subject = subject.to_owned();
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT id, at, actor, action, subject, detail FROM audit_log \
                         WHERE subject = $1 ORDER BY at, id",
                    )
                    .bind(&subject)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(audit_from_row).collect()
                })
            }))
            .await
    }

    /// Delete recordings and transcripts of requests made before `before`, and console
    /// sessions expired by `now`; returns how many recordings went.
    /// The audit log, newest first, as `filter` narrows it.
    pub async fn audit_log(&self, filter: AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.engine
            .run(op(move |c| {
                Box::pin(async move {
                    let rows = query(
                        "SELECT id, at, actor, action, subject, detail FROM audit_log \
                         WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
                         AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
                         AND ($5 IS NULL OR id < $5) ORDER BY id DESC LIMIT $6",
                    )
                    .bind(&filter.actor)
                    .bind(&filter.action)
                    .bind(filter.since)
                    .bind(filter.until)
                    .bind(filter.before_id)
                    .bind(filter.limit)
                    .fetch_all(&mut *c)
                    .await?;
                    rows.iter().map(audit_from_row).collect()
                })
            }))
            .await
    }

    /// Delete the recordings and transcripts of requests made before `before`, and the
    /// expired staff sessions; on SQLite, the write-ahead log is then emptied, so that no
    /// old image of a purged recording stays on disk.
    pub async fn purge_support(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        let purged = self
            .engine
            .run(op(move |c| {
                Box::pin(async move {
                    let purged = query(
                        "UPDATE manual_requests SET recording = NULL, transcript = NULL, \
                         purged_at = $1 WHERE created_at < $2 AND purged_at IS NULL",
                    )
                    .bind(now)
                    .bind(before)
                    .execute(&mut *c)
                    .await?;
                    query("DELETE FROM staff_sessions WHERE expires_at <= $1")
                        .bind(now)
                        .execute(&mut *c)
                        .await?;
                    Ok(purged.rows_affected())
                })
            }))
            .await?;
        if purged > 0 {
            self.empty_wal().await?;
        }
        Ok(purged)
    }
}

/// The subject whose lock orders the support line's messages ([`subject_locks`]).
const SUPPORT_LINE: &str = "support-line";

/// [`Store::message_room`] on a connection.
async fn room(
    c: &mut Conn,
    caller: Option<&str>,
    quota: MessageQuota,
    now: i64,
) -> Result<Room, StoreError> {
    const HOUR_MS: i64 = 3_600_000;
    let row = query(
        "SELECT \
         (SELECT COUNT(*) FROM manual_requests WHERE caller = $1 AND created_at > $2) AS caller, \
         (SELECT COUNT(*) FROM manual_requests WHERE created_at > $3) AS line, \
         (SELECT COALESCE(SUM(LENGTH(recording)), 0) FROM manual_requests \
          WHERE status = 'open' AND recording IS NOT NULL) AS kept",
    )
    .bind(caller)
    .bind(now.saturating_sub(24 * HOUR_MS))
    .bind(now.saturating_sub(HOUR_MS))
    .fetch_one(&mut *c)
    .await?;
    let (by_caller, line, kept): (i64, i64, i64) = (
        row.try_get("caller")?,
        row.try_get("line")?,
        row.try_get("kept")?,
    );
    Ok(
        if caller.is_some() && by_caller >= quota.per_caller_per_day {
            Room::CallerFull
        } else if line >= quota.per_hour {
            Room::LineFull
        } else if kept >= quota.max_bytes {
            Room::StorageFull
        } else {
            Room::Open
        },
    )
}

async fn insert_request(c: &mut Conn, new: &NewManualRequest) -> Result<(), StoreError> {
    query(
        "INSERT INTO manual_requests (id, created_at, caller, caller_match, \
         verification_id, status, ended_by, duration_ms, recording, transcript, \
         language) VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9, $10)",
    )
    .bind(&new.id)
    .bind(new.created_at)
    .bind(&new.caller)
    .bind(new.caller_match.as_str())
    .bind(&new.verification_id)
    .bind(new.ended_by)
    .bind(new.duration_ms)
    .bind(&new.recording)
    .bind(&new.transcript)
    .bind(&new.language)
    .execute(c)
    .await?;
    Ok(())
}

fn audit_from_row(r: &Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        action: r.try_get("action")?,
        subject: r.try_get("subject")?,
        detail: r.try_get("detail")?,
    })
}

/// How many audit entries of a kind anyone can cause are written: see
/// [`Store::audit_within`].
#[derive(Debug, Clone, Copy)]
pub struct AuditBudget {
    /// The actions counted (with the entry's detail).
    pub actions: &'static [&'static str],
    /// Entries written at most since `since`.
    pub max: i64,
    pub since: i64,
    /// Past the budget, once since `since`: the action, subject and detail written.
    pub over: (&'static str, &'static str, &'static str),
}

async fn insert_audit(
    c: &mut Conn,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> Result<(), StoreError> {
    query("INSERT INTO audit_log (at, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(at)
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(detail)
        .execute(c)
        .await?;
    Ok(())
}

fn request_from_row(r: &Row) -> Result<ManualRequest, StoreError> {
    let caller_match: String = r.try_get("caller_match")?;
    let status: String = r.try_get("status")?;
    let verification_status: Option<String> = r.try_get("verification_status")?;
    Ok(ManualRequest {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        caller: r.try_get("caller")?,
        caller_match: parse(&caller_match, "manual_requests.caller_match")?,
        verification_id: r.try_get("verification_id")?,
        user_ref: r.try_get("user_ref")?,
        verification_status: verification_status
            .map(|s| parse(&s, "verifications.status"))
            .transpose()?,
        api_key_id: r.try_get("api_key_id")?,
        status: parse(&status, "manual_requests.status")?,
        ended_by: r.try_get("ended_by")?,
        duration_ms: r.try_get("duration_ms")?,
        has_recording: r.try_get::<i64>("has_recording")? == 1,
        transcript: r.try_get("transcript")?,
        decided_at: r.try_get("decided_at")?,
        decided_by: r.try_get("decided_by")?,
        reason: r.try_get("reason")?,
    })
}

fn parse<T: std::str::FromStr>(value: &str, column: &'static str) -> Result<T, StoreError> {
    value.parse().map_err(|_| StoreError::Corrupt {
        column,
        value: value.to_owned(),
    })
}

/// `text` with LIKE's wildcards and the escape character escaped (by `\\`).
fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
