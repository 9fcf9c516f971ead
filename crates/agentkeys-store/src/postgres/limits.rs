//! Fixed-window rate-limit counters.

use super::col;
use super::tx::Db;
use crate::{RateWindow, Result, StoreError};

// Every bucket of a gate in one statement each (arrays of equal length, unnested): the writer
// holds the chain lock while it runs them, so round trips are what a mint pays for.
const COUNTS: &str = "SELECT COALESCE(r.count, 0)
     FROM unnest($1::text[], $2::bigint[], $3::bigint[]) WITH ORDINALITY AS b(actor, secs, start, i)
     LEFT JOIN rate_limits r
       ON r.actor = b.actor AND r.window_secs = b.secs AND r.window_start = b.start
     ORDER BY b.i";
/// One row per (bucket, window length): a use in a new window restarts the count.
const BUMPS: &str = "INSERT INTO rate_limits (actor, window_secs, window_start, count)
     SELECT actor, secs, start, 1 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS b(actor, secs, start)
     ON CONFLICT (actor, window_secs) DO UPDATE SET
       count = CASE WHEN rate_limits.window_start = excluded.window_start
                    THEN rate_limits.count + 1 ELSE 1 END,
       window_start = excluded.window_start";

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

/// The buckets as the three arrays the statements unnest.
fn columns(buckets: &[(String, RateWindow)], now: i64) -> Result<(Vec<&str>, Vec<i64>, Vec<i64>)> {
    let mut names = Vec::with_capacity(buckets.len());
    let mut seconds = Vec::with_capacity(buckets.len());
    let mut starts = Vec::with_capacity(buckets.len());
    for (bucket, window) in buckets {
        names.push(bucket.as_str());
        seconds.push(window.seconds);
        starts.push(window_start(*window, now)?);
    }
    Ok((names, seconds, starts))
}

pub(super) fn window_counts(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<Vec<u64>> {
    let (names, seconds, starts) = columns(buckets, now)?;
    db.query(COUNTS, &[&names, &seconds, &starts])?
        .iter()
        .map(|row| col::<i64>(row, 0).map(|n| u64::try_from(n).unwrap_or(0)))
        .collect()
}

pub(super) fn count_uses(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<()> {
    if buckets.is_empty() {
        return Ok(());
    }
    let (names, seconds, starts) = columns(buckets, now)?;
    db.execute(BUMPS, &[&names, &seconds, &starts])?;
    Ok(())
}
