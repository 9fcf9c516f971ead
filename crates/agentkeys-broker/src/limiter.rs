//! In-memory token buckets per client IP plus one global bucket, for traffic that has not
//! proved who it is (SPEC §11.9). They sit in front of the store: a refused request costs no
//! write and no read.
//!
//! Hand-written rather than `governor`: it is ~150 lines, runs on the broker's [`Clock`] so
//! tests move time instead of sleeping, keys IPv6 clients by /64 (one host usually owns a whole
//! /64), and bounds its memory with a shared overflow bucket, none of which `governor` does
//! out of the box.
//!
//! The buckets are per broker instance: with several instances behind a load balancer each
//! applies its own limits. That is deliberate: this layer bounds the cost an anonymous client
//! can put on one process; the durable, shared limits (mint, email, approvals) stay in the store.
//!
//! [`Clock`]: crate::clock::Clock

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

/// How many client keys one limiter tracks. Beyond it, new clients share one overflow bucket
/// (after idle buckets are dropped), so a flood of distinct addresses cannot grow memory.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// A token bucket's size and refill: `burst` tokens, refilled evenly over `per_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u64,
    pub per_ms: i64,
}

impl Rate {
    pub fn per_second(n: u64) -> Self {
        Self {
            burst: n,
            per_ms: 1000,
        }
    }
    pub fn per_minute(n: u64) -> Self {
        Self {
            burst: n,
            per_ms: 60_000,
        }
    }
    pub fn per_hour(n: u64) -> Self {
        Self {
            burst: n,
            per_ms: 3_600_000,
        }
    }
}

/// A per-client rate and a ceiling for all clients together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_client: Rate,
    pub global: Rate,
}

/// Which bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Global,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Global => "global",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until one token is back (at least 1).
    pub retry_after: i64,
    pub scope: Scope,
}

/// The key a client is counted under: its IPv4 address, or the /64 of its IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => v4.fmt(f),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A bucket's content in units of 1/`per_ms` token: a millisecond refills exactly `burst` units
/// and one token is `per_ms` units, so integer refills lose nothing however often they run.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    units: i64,
    updated_ms: i64,
}

impl Bucket {
    fn full(rate: Rate, now_ms: i64) -> Self {
        Self {
            units: capacity(rate),
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: Rate, now_ms: i64) {
        // Capped at one full period (which refills everything), so the product stays small.
        let elapsed = (now_ms - self.updated_ms).clamp(0, rate.per_ms);
        self.units = (self.units + elapsed * rate.burst as i64).min(capacity(rate));
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    fn has_token(&self, rate: Rate) -> bool {
        self.units >= rate.per_ms
    }

    fn take(&mut self, rate: Rate) {
        self.units -= rate.per_ms;
    }

    fn is_full(&self, rate: Rate) -> bool {
        self.units >= capacity(rate)
    }

    /// Whole seconds until one token is back (at least 1).
    fn retry_after(&self, rate: Rate) -> i64 {
        let missing = (rate.per_ms - self.units).max(0) as u64;
        let ms = missing.div_ceil(rate.burst.max(1));
        (ms.div_ceil(1000) as i64).max(1)
    }
}

fn capacity(rate: Rate) -> i64 {
    rate.burst as i64 * rate.per_ms
}

struct Buckets {
    global: Bucket,
    clients: HashMap<ClientKey, Bucket>,
    overflow: Bucket,
    last_sweep_ms: i64,
}

/// Token buckets per client plus a global one. Cheap to share (`&self` everywhere).
pub struct Limiter {
    limits: Limits,
    max_clients: usize,
    buckets: Mutex<Buckets>,
}

impl Limiter {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_TRACKED_CLIENTS)
    }

    pub fn with_capacity(limits: Limits, max_clients: usize) -> Self {
        Self {
            limits,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(Buckets {
                global: Bucket::full(limits.global, 0),
                clients: HashMap::new(),
                overflow: Bucket::full(limits.per_client, 0),
                last_sweep_ms: i64::MIN,
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes one token from the client's bucket and one from the global bucket, or neither.
    /// A client over its own limit does not drain the global bucket, so one noisy client
    /// cannot use up everyone's share.
    pub fn check(&self, ip: IpAddr, now_ms: i64) -> Result<(), Limited> {
        let Limits { per_client, global } = self.limits;
        let key = ClientKey::from(ip);
        // A poisoned lock only means another request panicked mid-update; the counters are
        // still usable.
        let mut guard = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = &mut *guard;
        if !b.clients.contains_key(&key) && b.clients.len() >= self.max_clients {
            Self::sweep(b, per_client, now_ms);
        }
        let client = if b.clients.contains_key(&key) || b.clients.len() < self.max_clients {
            b.clients
                .entry(key)
                .or_insert_with(|| Bucket::full(per_client, now_ms))
        } else {
            &mut b.overflow
        };
        client.refill(per_client, now_ms);
        if !client.has_token(per_client) {
            return Err(Limited {
                retry_after: client.retry_after(per_client),
                scope: Scope::Client,
            });
        }
        b.global.refill(global, now_ms);
        if !b.global.has_token(global) {
            return Err(Limited {
                retry_after: b.global.retry_after(global),
                scope: Scope::Global,
            });
        }
        client.take(per_client);
        b.global.take(global);
        Ok(())
    }

    /// Drops buckets that have refilled completely (they are equal to a new one). At most once
    /// a second, so a full table does not cost a scan per request.
    fn sweep(b: &mut Buckets, rate: Rate, now_ms: i64) {
        if now_ms.saturating_sub(b.last_sweep_ms) < 1000 {
            return;
        }
        b.last_sweep_ms = now_ms;
        b.clients.retain(|_, bucket| {
            bucket.refill(rate, now_ms);
            !bucket.is_full(rate)
        });
    }

    /// Clients tracked now (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        self.buckets
            .lock()
            .map(|b| b.clients.len())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn limiter(per_minute: u64, global_per_second: u64) -> Limiter {
        Limiter::new(Limits {
            per_client: Rate::per_minute(per_minute),
            global: Rate::per_second(global_per_second),
        })
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_refill() {
        let l = limiter(3, 100);
        for _ in 0..3 {
            assert!(l.check(ip("192.0.2.1"), 0).is_ok());
        }
        let refused = l.check(ip("192.0.2.1"), 0).expect_err("over the burst");
        assert_eq!(refused.scope, Scope::Client);
        assert_eq!(refused.retry_after, 20, "one token per 20 s at 3/min");
        assert!(l.check(ip("192.0.2.2"), 0).is_ok(), "others are unaffected");
        assert!(l.check(ip("192.0.2.1"), 19_999).is_err());
        assert!(l.check(ip("192.0.2.1"), 20_000).is_ok());
    }

    #[test]
    fn the_global_ceiling_binds_all_clients_but_a_refused_client_does_not_drain_it() {
        let l = limiter(2, 3);
        // One client floods: only its own 2 tokens come out of the global 3.
        for _ in 0..50 {
            let _ = l.check(ip("198.51.100.1"), 0);
        }
        assert!(l.check(ip("198.51.100.2"), 0).is_ok());
        let refused = l.check(ip("198.51.100.3"), 0).expect_err("global is empty");
        assert_eq!(refused.scope, Scope::Global);
        assert_eq!(refused.retry_after, 1);
        assert!(l.check(ip("198.51.100.3"), 1000).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(1, 100);
        assert!(l.check(ip("2001:db8:1:2::1"), 0).is_ok());
        assert!(
            l.check(ip("2001:db8:1:2:ffff::9"), 0).is_err(),
            "same /64, new address"
        );
        assert!(l.check(ip("2001:db8:1:3::1"), 0).is_ok());
        assert!(l.check(ip("192.0.2.7"), 0).is_ok());
        assert!(l.check(ip("::ffff:192.0.2.7"), 0).is_err());
    }

    #[test]
    fn memory_is_bounded_by_an_overflow_bucket_and_idle_clients_are_swept() {
        let l = Limiter::with_capacity(
            Limits {
                per_client: Rate::per_minute(1),
                global: Rate::per_second(1_000_000),
            },
            2,
        );
        assert!(l.check(ip("10.0.0.1"), 0).is_ok());
        assert!(l.check(ip("10.0.0.2"), 0).is_ok());
        // The table is full: new clients share one bucket.
        assert!(l.check(ip("10.0.0.3"), 0).is_ok());
        assert!(l.check(ip("10.0.0.4"), 0).is_err(), "shares the overflow");
        assert_eq!(l.tracked_clients(), 2);
        // A minute later the first two have refilled and are swept out.
        assert!(l.check(ip("10.0.0.5"), 60_000).is_ok());
        assert!(l.tracked_clients() <= 2);
    }
}
