//! The sessions' standings the writer has read, kept between batches so that a mint's gate
//! (which re-reads its session's standing in its transaction) does not run a statement each
//! time (≈ 2.8 µs of the writer's ≈ 35 µs a mint; docs/performance.md).
//!
//! A kept standing is exactly what the statement would return: it is forgotten as soon as a
//! row of `sessions` is updated or deleted, or a row of `agents` changed at all, on the writer's
//! connection (SQLite's update hook says so as the statement runs, before the next read, so a
//! write added later cannot forget to; a new session's insert changes no other's standing), and
//! on the events every kept piece of the writer's memory is forgotten on (`memory.rs`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rusqlite::Connection;
use rusqlite::hooks::Action;

use super::sessions;
use crate::SessionStanding;

/// Standings kept at most; past it they are all forgotten and read again as needed.
const MAX_KEPT: usize = 65_536;

#[derive(Debug)]
pub(super) struct Standings {
    kept: HashMap<String, SessionStanding>,
    /// Set by the update hook; cleared once `kept` is.
    changed: Arc<AtomicBool>,
}

impl Standings {
    /// Watches `conn`, the writer's connection, for changes to sessions and agents.
    pub(super) fn watch(conn: &mut Connection) -> rusqlite::Result<Self> {
        let changed = Arc::new(AtomicBool::new(false));
        let flag = changed.clone();
        conn.update_hook(Some(
            move |action: Action, _db: &str, table: &str, _rowid: i64| {
                let changes_a_standing = match table {
                    "sessions" => action != Action::SQLITE_INSERT,
                    "agents" => true,
                    _ => false,
                };
                if changes_a_standing {
                    flag.store(true, Ordering::Relaxed);
                }
            },
        ))?;
        Ok(Self {
            kept: HashMap::new(),
            changed,
        })
    }

    /// The standing of the session whose token hashes to `token_hash`, as the writer's
    /// transaction sees it now.
    pub(super) fn get(
        &mut self,
        conn: &Connection,
        token_hash: &str,
    ) -> rusqlite::Result<Option<SessionStanding>> {
        if self.changed.swap(false, Ordering::Relaxed) {
            self.kept.clear();
        }
        if let Some(standing) = self.kept.get(token_hash) {
            return Ok(Some(*standing));
        }
        let read = sessions::standing(conn, token_hash)?;
        if let Some(standing) = read {
            if self.kept.len() >= MAX_KEPT {
                self.kept.clear();
            }
            self.kept.insert(token_hash.to_owned(), standing);
        }
        Ok(read)
    }

    /// Forgets every standing read: after a rollback, a failed commit, another connection's
    /// commit.
    pub(super) fn forget(&mut self) {
        self.kept.clear();
    }
}
