//! What the writer keeps in memory between batches, and when it stops trusting it. Each piece
//! is the file's state as the writer's transactions left it; it is dropped (or reloaded) when
//! that may no longer hold:
//! - a work rolled back: its writes are undone, and what it read may have included them;
//! - a batch failed (its commit, or before): the whole transaction is undone;
//! - another connection committed (`PRAGMA data_version`, read under the write lock as each
//!   batch starts): the `keys` command, a second process on the file.

use rusqlite::Connection;

use super::audit::KnownBlocks;
use super::limits::Limits;
use super::standings::Standings;
use crate::Result;

#[derive(Debug)]
pub(super) struct Memory {
    pub(super) limits: Limits,
    pub(super) standings: Standings,
    pub(super) blocks: KnownBlocks,
}

impl Memory {
    /// Watches `conn`, the writer's connection (see [`Standings::watch`]).
    pub(super) fn new(conn: &mut Connection) -> rusqlite::Result<Self> {
        Ok(Self {
            limits: Limits::new(),
            standings: Standings::watch(conn)?,
            blocks: KnownBlocks::default(),
        })
    }

    /// As a batch starts, inside its write transaction.
    pub(super) fn refresh(&mut self, conn: &Connection) -> Result<()> {
        if self.limits.refresh(conn)? {
            self.standings.forget();
            // Index entries are never deleted: another connection's commit leaves them true.
        }
        Ok(())
    }

    pub(super) fn work_rolled_back(&mut self) {
        // The work's counts were never taken in (they stay in its own `WorkCounts`).
        self.standings.forget();
        self.blocks.forget();
    }

    pub(super) fn batch_failed(&mut self) {
        self.limits.forget();
        self.standings.forget();
        self.blocks.forget();
    }
}
