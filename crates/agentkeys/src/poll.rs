//! The one poller: asks the broker again until an answer is final, within a deadline, at the
//! broker's suggested interval (bounded), backing off when rate limited and riding out a few
//! unreachable polls. A leaf: imports no command module.

use std::time::{Duration, Instant};

use crate::error::{Error, Result, RetryAfter};

/// Shortest and longest wait between polls, whatever the broker suggests.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Consecutive failed polls (broker unreachable) tolerated before giving up.
pub const MAX_POLL_FAILURES: u32 = 3;

/// Polls with `attempt` (after a first wait) until it answers `Some`, every `interval_secs`
/// (bounded), for at most `timeout_secs`. `Ok(None)` means "not yet"; a rate limit waits as the
/// broker says, a few unreachable polls are noted on stderr and retried, any other error ends
/// the polling. At the deadline, the error is `on_timeout()`.
pub async fn poll_until<T>(
    interval_secs: u64,
    timeout_secs: u64,
    mut attempt: impl AsyncFnMut() -> Result<Option<T>>,
    on_timeout: impl FnOnce() -> Error,
) -> Result<T> {
    let interval = Duration::from_secs(interval_secs).clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut wait = interval;
    let mut failures = 0u32;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(on_timeout());
        }
        tokio::time::sleep(wait.min(deadline - now)).await;
        wait = interval;
        match attempt().await {
            Ok(None) => failures = 0,
            Ok(Some(r)) => return Ok(r),
            Err(Error::RateLimited { retry_after }) => {
                if let Some(RetryAfter::Seconds(n)) = retry_after {
                    wait = Duration::from_secs(n).clamp(interval, MAX_POLL_INTERVAL);
                }
            }
            Err(e @ Error::BrokerUnreachable { .. }) if failures < MAX_POLL_FAILURES => {
                failures += 1;
                eprintln!("agentkeys: note: {e}; polling again");
            }
            Err(e) => return Err(e),
        }
    }
}
