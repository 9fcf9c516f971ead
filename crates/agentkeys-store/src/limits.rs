//! What both backends do alike with fixed-window rate-limit counters (one row per bucket and
//! window length): the window holding `now`, one read per bucket key, and a key's two windows
//! (a mint's minute and hour) counted in one write. Only the SQL differs per backend.

use crate::{RateWindow, Result, StoreError};

/// Every window row of one bucket key: (window length, window start, uses counted).
pub(crate) type WindowRow = (i64, i64, u64);

impl RateWindow {
    /// The start of this window's instance holding `now`.
    pub(crate) fn start(self, now: i64) -> Result<i64> {
        now.checked_rem_euclid(self.seconds)
            .filter(|_| self.seconds > 0)
            .map(|offset| now - offset)
            .ok_or_else(|| {
                StoreError::Database(format!(
                    "a rate-limit window lasts at least one second, not {} s",
                    self.seconds
                ))
            })
    }
}

/// The uses counted in each bucket's current window, in order; `windows_of` reads every window
/// row of one key, once per distinct key. A row left from an earlier window counts 0.
pub(crate) fn counts(
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
pub(crate) enum Use<'a> {
    One(&'a str, (RateWindow, i64)),
    Two(&'a str, (RateWindow, i64), (RateWindow, i64)),
}

/// Counts one use in each bucket's current window through `write`, pairing two adjacent
/// windows of one key into one write.
pub(crate) fn count_uses(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_multiples_of_their_length() {
        let window = |seconds| RateWindow { seconds, limit: 1 };
        assert_eq!(window(60).start(179).ok(), Some(120));
        assert_eq!(window(60).start(180).ok(), Some(180));
        assert_eq!(window(60).start(-1).ok(), Some(-60));
        assert!(window(0).start(10).is_err());
        assert!(window(-60).start(10).is_err());
    }
}
