//! Fixed-window rate limits, as both backends count them: a window's instances start on
//! multiples of its length, and a use counts in the instance holding its time.

use crate::{RateWindow, Result, StoreError};

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
