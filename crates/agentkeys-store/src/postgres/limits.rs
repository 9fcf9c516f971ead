//! Fixed-window rate-limit counters.

use super::tx::Db;
use super::{col, no_nul};
use crate::limits::Use;
use crate::{RateWindow, Result};

// A gate's buckets usually share one key (a mint counts its actor per minute and per hour):
// one statement reads every window of a key. Measured on PostgreSQL 15, a statement that
// unnests arrays of (key, window) pairs cost more server CPU than the primary-key probes it
// replaced (docs/performance.md), so keys are not batched further.
const WINDOWS: &str = "SELECT window_secs, window_start, count FROM rate_limits WHERE actor = $1";
/// One row per (bucket, window length): a use in a new window restarts the count.
macro_rules! bump {
    ($values:literal) => {
        concat!(
            "INSERT INTO rate_limits (actor, window_secs, window_start, count) VALUES ",
            $values,
            " ON CONFLICT (actor, window_secs) DO UPDATE SET
               count = CASE WHEN rate_limits.window_start = excluded.window_start
                            THEN rate_limits.count + 1 ELSE 1 END,
               window_start = excluded.window_start"
        )
    };
}
const BUMP: &str = bump!("($1, $2, $3, 1)");
/// Two windows of one key (a mint's minute and hour) in one statement.
const BUMP_TWO: &str = bump!("($1, $2, $3, 1), ($1, $4, $5, 1)");

pub(super) fn window_counts(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<Vec<u64>> {
    crate::limits::counts(buckets, now, |key| {
        db.query(WINDOWS, &[&key])?
            .iter()
            .map(|row| {
                let used: i64 = col(row, 2)?;
                Ok((col(row, 0)?, col(row, 1)?, u64::try_from(used).unwrap_or(0)))
            })
            .collect()
    })
}

/// Deferred: nothing reads the result, so the counts travel with the next statement.
pub(super) fn count_uses(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<()> {
    crate::limits::count_uses(buckets, now, |write| match write {
        // A deferred write that fails takes its whole batch down, so what PostgreSQL would
        // refuse is refused here, for this work alone (keys can carry a client's input).
        Use::One(key, (window, start)) => {
            no_nul(key)?;
            db.defer(
                BUMP,
                vec![
                    Box::new(key.to_owned()),
                    Box::new(window.seconds),
                    Box::new(start),
                ],
            )
        }
        Use::Two(key, (first, start), (second, second_start)) => {
            no_nul(key)?;
            db.defer(
                BUMP_TWO,
                vec![
                    Box::new(key.to_owned()),
                    Box::new(first.seconds),
                    Box::new(start),
                    Box::new(second.seconds),
                    Box::new(second_start),
                ],
            )
        }
    })
}
