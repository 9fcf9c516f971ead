//! Fixed-window rate-limit counters: one row per (bucket, window length), read and counted by
//! every instance sharing the database (SQLite counts in the writer's memory instead).

use super::tx::Db;
use super::{col, no_nul};
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
    counts(buckets, now, |key| {
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
    count_uses_by(buckets, now, |write| match write {
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

/// Every window row of one bucket key: (window length, window start, uses counted).
type WindowRow = (i64, i64, u64);

/// The uses counted in each bucket's current window, in order; `windows_of` reads every window
/// row of one key, once per distinct key. A row left from an earlier window counts 0.
fn counts(
    buckets: &[(String, RateWindow)],
    now: i64,
    mut windows_of: impl FnMut(&str) -> Result<Vec<WindowRow>>,
) -> Result<Vec<u64>> {
    let mut counts = vec![0; buckets.len()];
    for (i, (key, _)) in buckets.iter().enumerate() {
        if buckets[..i].iter().any(|(seen, _)| seen == key) {
            continue;
        }
        let rows = windows_of(key)?;
        for ((bucket, window), count) in buckets.iter().zip(counts.iter_mut()) {
            if bucket != key {
                continue;
            }
            let start = window.start(now)?;
            *count = rows
                .iter()
                .find(|(secs, row_start, _)| *secs == window.seconds && *row_start == start)
                .map_or(0, |(_, _, used)| *used);
        }
    }
    Ok(counts)
}

/// One write that counts a use: a window (its length and current start) of a key, or two
/// windows of different lengths of one key.
enum Use<'a> {
    One(&'a str, (RateWindow, i64)),
    Two(&'a str, (RateWindow, i64), (RateWindow, i64)),
}

/// Counts one use in each bucket's current window through `write`, pairing two adjacent
/// windows of one key into one write.
fn count_uses_by(
    buckets: &[(String, RateWindow)],
    now: i64,
    mut write: impl FnMut(Use<'_>) -> Result<()>,
) -> Result<()> {
    let mut rest = buckets;
    while let [(key, first), tail @ ..] = rest {
        let first_at = (*first, first.start(now)?);
        rest = match tail {
            [(next, second), tail @ ..] if next == key && second.seconds != first.seconds => {
                write(Use::Two(key, first_at, (*second, second.start(now)?)))?;
                tail
            }
            _ => {
                write(Use::One(key, first_at))?;
                tail
            }
        };
    }
    Ok(())
}
