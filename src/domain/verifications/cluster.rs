//! This daemon among the daemons on one store: its registration under its name, its
//! heartbeat, and a clean leave (the takeover of a dead one is part of the queue upkeep).

use std::time::Duration;

use super::Verifications;
use crate::domain::clock::{millis, now_ms};
use crate::domain::ids::random_token;
use crate::domain::verification::{Machine, Registered, VerifyError};
use crate::store::error::StoreError;
use crate::store::{DaemonRow, Store};

/// Whether the daemon `row` registered runs now, as seen from `machine` at `now`: heard
/// from within `dead_after` and not taken over, and not an earlier run on this machine
/// whose process is gone (nor this process).
fn runs_now(row: &DaemonRow, machine: &Machine, dead_after: Duration, now: i64) -> bool {
    let alive = row.taken_over_by.is_none() && row.last_seen >= now - millis(dead_after);
    let earlier_run_here = row.boot_id == machine.boot_id
        && (row.pid == machine.pid || !(machine.is_running)(row.pid));
    alive && !earlier_run_here
}

/// What a [`Verifications::heartbeat`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heartbeat {
    Beat,
    /// A newer release migrated the store (its migrations `unknown` to this one).
    Outdated {
        unknown: Vec<i64>,
    },
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migration {
    /// The schema is this release's (now, or already).
    Done,
    /// Not migrated: daemons still run on the schema before, and a migration under them
    /// would change the tables their statements are written for, in the middle of calls.
    Refused {
        /// The migrations the store lacks.
        missing: Vec<i64>,
        /// The daemons running on it.
        daemons: Vec<DaemonRow>,
    },
}

/// Bring the store's schema to this release's (or create it), unless daemons of an older
/// release still run on it. The daemons are listed before the schema is read: a daemon of
/// this release registers only after its own start migrated the store, so when one listed
/// runs, the schema read after is this release's, and a store behind it with daemons
/// running has only older ones on it (however many daemons start at once).
pub async fn migrate(
    store: &Store,
    machine: &Machine,
    dead_after: Duration,
) -> Result<Migration, StoreError> {
    let now = now_ms();
    let running: Vec<DaemonRow> = store
        .daemons()
        .await?
        .into_iter()
        .filter(|row| runs_now(row, machine, dead_after, now))
        .collect();
    match store.check_schema().await {
        Ok(()) => return Ok(Migration::Done),
        Err(StoreError::SchemaBehind { missing }) if !running.is_empty() => {
            return Ok(Migration::Refused {
                missing,
                daemons: running,
            })
        }
        Err(StoreError::SchemaBehind { .. }) => {}
        Err(e) => return Err(e),
    }
    store.migrate().await?;
    Ok(Migration::Done)
}

/// A daemon's registration in the store: its name and this run of it.
#[derive(Debug, Clone)]
pub(super) struct Registration {
    pub(super) name: String,
    pub(super) incarnation: String,
}

impl Verifications {
    /// Register this daemon under `name` in the store, where the daemons sharing it see one
    /// another: refused while another live daemon has the name (seen within the policy's
    /// `dead_after`, and not an earlier run on this machine whose process is gone).
    pub async fn register(
        &self,
        name: String,
        machine: &Machine,
    ) -> Result<Registered, VerifyError> {
        let now = now_ms();
        let me = DaemonRow {
            name: name.clone(),
            incarnation: random_token("run_", 16),
            boot_id: machine.boot_id.clone(),
            pid: machine.pid,
            started_at: now,
            last_seen: now,
            taken_over_by: None,
        };
        // Twice at most: a second daemon of the name may register between the read and
        // the write, and is then judged like any other.
        for _ in 0..2 {
            let existing = self.store.daemon(&name).await?;
            let registered = match &existing {
                None => self
                    .store
                    .register_daemon(&me, None)
                    .await?
                    .then_some(Registered::Fresh),
                Some(row) => {
                    if runs_now(row, machine, self.policy.dead_after, now) {
                        return Ok(Registered::InUse {
                            boot_id: row.boot_id.clone(),
                            pid: row.pid,
                            last_seen: row.last_seen,
                        });
                    }
                    self.store
                        .register_daemon(&me, Some(&row.incarnation))
                        .await?
                        .then_some(Registered::Replaced {
                            last_seen: row.last_seen,
                        })
                }
            };
            if let Some(registered) = registered {
                let _ = self.registration.set(Registration {
                    name,
                    incarnation: me.incarnation,
                });
                return Ok(registered);
            }
        }
        Err(VerifyError::NameRace(name))
    }

    /// The heartbeat of a registered daemon. When its registration is gone (it was declared
    /// dead and taken over, being unheard for too long), it registers again, and says so:
    /// its calls of before were taken over, and their late writes are refused. Then the
    /// store's schema is read: `Outdated` when a newer release migrated it meanwhile (this
    /// daemon was paused through an upgrade, or started as it was migrated), on which the
    /// daemon must stop, as its statements are written for the schema before.
    pub async fn heartbeat(&self, machine: &Machine) -> Result<Heartbeat, VerifyError> {
        let Some(r) = self.registration.get() else {
            return Ok(Heartbeat::Beat);
        };
        // The schema first: a newer one may have changed what the heartbeat writes.
        match self.store.check_schema().await {
            // Not registered again: it is to stop.
            Err(StoreError::SchemaAhead { unknown }) => return Ok(Heartbeat::Outdated { unknown }),
            Ok(()) | Err(StoreError::SchemaBehind { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let beat = self
            .store
            .heartbeat(&r.name, &r.incarnation, now_ms())
            .await?;
        if !beat {
            self.register_again(r, machine).await?;
        }
        Ok(Heartbeat::Beat)
    }

    /// [`Self::heartbeat`] found this daemon's registration gone.
    async fn register_again(&self, r: &Registration, machine: &Machine) -> Result<(), VerifyError> {
        let row = self.store.daemon(&r.name).await?;
        if let Some(row) = row.as_ref().filter(|row| row.taken_over_by.is_none()) {
            // Another run of this name registered since: it has the name now.
            tracing::error!(
                daemon = %r.name,
                other_pid = row.pid,
                "another daemon runs under this daemon's name: stop one of them, or give \
                 them different agi.listen addresses"
            );
            return Ok(());
        }
        tracing::error!(
            daemon = %r.name,
            "this daemon was declared dead (unheard for longer than \
             database.takeover_after_secs) and its calls were taken over; registering again"
        );
        let me = DaemonRow {
            name: r.name.clone(),
            incarnation: r.incarnation.clone(),
            boot_id: machine.boot_id.clone(),
            pid: machine.pid,
            started_at: self.started_at,
            last_seen: now_ms(),
            taken_over_by: None,
        };
        let replacing = row.map(|row| row.incarnation);
        self.store
            .register_daemon(&me, replacing.as_deref())
            .await?;
        Ok(())
    }

    /// A clean stop, calls done: this daemon leaves the store's list.
    pub async fn deregister(&self) -> Result<(), VerifyError> {
        if let Some(r) = self.registration.get() {
            self.store.deregister(&r.name, &r.incarnation).await?;
        }
        Ok(())
    }
}
