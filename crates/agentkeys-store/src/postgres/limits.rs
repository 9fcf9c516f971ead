//! Fixed-window rate-limit counters.

use super::tx::Db;
use super::{col, no_nul};
use crate::{RateWindow, Result, StoreError};

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

/// Start of the window of `window` holding `now`.
fn window_start(window: RateWindow, now: i64) -> Result<i64> {
    now.checked_rem_euclid(window.seconds)
        .filter(|_| window.seconds > 0)
        .map(|offset| now - offset)
        .ok_or_else(|| {
            StoreError::Database(format!(
                "a rate window must be positive, not {} s",
                window.seconds
            ))
        })
}

pub(super) fn window_counts(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<Vec<u64>> {
    let mut counts = vec![0; buckets.len()];
    for (i, (key, _)) in buckets.iter().enumerate() {
        if buckets[..i].iter().any(|(seen, _)| seen == key) {
            continue;
        }
        let rows = db.query(WINDOWS, &[key])?;
        for ((bucket, window), count) in buckets.iter().zip(counts.iter_mut()) {
            if bucket != key {
                continue;
            }
            let start = window_start(*window, now)?;
            for row in &rows {
                let (secs, row_start, used): (i64, i64, i64) =
                    (col(row, 0)?, col(row, 1)?, col(row, 2)?);
                if secs == window.seconds && row_start == start {
                    *count = u64::try_from(used).unwrap_or(0);
                }
            }
        }
    }
    Ok(counts)
}

/// Deferred: nothing reads the result, so the counts travel with the next statement.
pub(super) fn count_uses(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<()> {
    let mut rest = buckets;
    while let [(key, first), tail @ ..] = rest {
        // A deferred write that fails takes its whole batch down, so what PostgreSQL would
        // refuse is refused here, for this work alone (keys can carry a client's input).
        no_nul(key)?;
        let start = window_start(*first, now)?;
        match tail {
            [(next, second), tail @ ..] if next == key && second.seconds != first.seconds => {
                let second_start = window_start(*second, now)?;
                db.defer(
                    BUMP_TWO,
                    vec![
                        Box::new(key.clone()),
                        Box::new(first.seconds),
                        Box::new(start),
                        Box::new(second.seconds),
                        Box::new(second_start),
                    ],
                )?;
                rest = tail;
            }
            _ => {
                db.defer(
                    BUMP,
                    vec![
                        Box::new(key.clone()),
                        Box::new(first.seconds),
                        Box::new(start),
                    ],
                )?;
                rest = tail;
            }
        }
    }
    Ok(())
}
