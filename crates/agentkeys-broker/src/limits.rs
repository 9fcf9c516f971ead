//! Rate-limit policy of the actions the store counts: which buckets an action fills and the
//! window of each. The bucket keys are stored rows, so their spelling is fixed here, once.

use std::net::IpAddr;

use agentkeys_store::RateWindow;

use crate::config::Settings;
use crate::gate::Bucket;
use crate::limiter::ClientKey;

/// Approval attempts a master may make per window, so codes cannot be guessed.
pub const APPROVE_ATTEMPTS: u64 = 20;
pub const APPROVE_WINDOW_SECONDS: i64 = 600;

/// An action limited by windows counted in the store.
#[derive(Debug, Clone, Copy)]
pub enum LimitedAction<'a> {
    /// A mint by this session's account: per minute and per hour, keyed by the account.
    Mint { actor: &'a str },
    /// An email sign-in or link code sent to this (canonical) address from this client.
    EmailStart { address: &'a str, ip: IpAddr },
    /// A pairing approval attempt by this master.
    PairingApproval { master: &'a str },
}

impl LimitedAction<'_> {
    /// The `(bucket key, window)` pairs this action counts against.
    pub fn buckets(&self, settings: &Settings) -> Vec<Bucket> {
        match *self {
            Self::Mint { actor } => [
                RateWindow {
                    seconds: 60,
                    limit: settings.mint_rate_per_minute,
                },
                RateWindow {
                    seconds: 3600,
                    limit: settings.mint_rate_per_hour,
                },
            ]
            .into_iter()
            .map(|w| (actor.to_owned(), w))
            .collect(),
            Self::EmailStart { address, ip } => vec![
                (
                    format!("email:{address}"),
                    settings.email_limits.per_address,
                ),
                (
                    format!("ip:{}", ClientKey::from(ip)),
                    settings.email_limits.per_ip,
                ),
            ],
            Self::PairingApproval { master } => vec![(
                format!("approve:{master}"),
                RateWindow {
                    seconds: APPROVE_WINDOW_SECONDS,
                    limit: APPROVE_ATTEMPTS,
                },
            )],
        }
    }
}
