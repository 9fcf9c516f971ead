//! What a wallet key agrees to sign: an EIP-4361 (SIWE) message for the very broker the CLI was
//! pointed at, for this key and chain, valid now. A server that relays another broker's
//! challenge (a phishing relay in front of the real broker) gets a refusal instead of a
//! signature it could turn into a master session there (SPEC §11.8).
//!
//! The broker writes its messages with the `siwe` crate (crates/agentkeys-broker/src/wallet.rs):
//! domain = the issuer's `host[:port]`, URI = the issuer URL, an expiration time, no
//! `Not Before`. The same check serves any other SIWE signature the CLI makes (a step-up proof
//! names what it is for in the statement, which the caller checks on the returned message).

use agentkeys_types::WalletAddress;
use reqwest::Url;
use time::OffsetDateTime;

use crate::error::{Error, MAX_SIWE_MESSAGE, Result, SiweRefusal};

/// How far the broker's clock may be ahead of this one.
pub(crate) const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
/// Longest validity a message may claim: a signature is a bearer credential until it expires.
pub(crate) const MAX_VALIDITY: time::Duration = time::Duration::hours(1);

/// Parses `message` and refuses it unless it is a SIWE message for `address` on `chain_id`,
/// whose domain is the `host[:port]` of `broker_url` and whose URI is on that URL's origin,
/// issued no later than `now` (plus [`MAX_CLOCK_SKEW`]) and expiring after `now` but within
/// [`MAX_VALIDITY`]. `broker_url` is the normalised URL the CLI sends requests to.
///
/// Returns the parsed message so a caller can check what it is for (`statement`, `resources`).
/// The error is [`Error::SiweRefused`], naming the broker URL and the [`SiweRefusal`].
pub(crate) fn check_siwe_message(
    message: &str,
    address: &WalletAddress,
    broker_url: &str,
    chain_id: u64,
    now: OffsetDateTime,
) -> Result<siwe::Message> {
    check(message, address, broker_url, chain_id, now).map_err(|reason| match reason {
        Refused::Message(reason) => Error::SiweRefused {
            url: broker_url.to_owned(),
            reason,
        },
        Refused::BrokerUrl(detail) => Error::InvalidInput(format!(
            "the broker URL {broker_url:?} is not usable: {detail}"
        )),
    })
}

enum Refused {
    Message(SiweRefusal),
    BrokerUrl(String),
}

impl From<SiweRefusal> for Refused {
    fn from(r: SiweRefusal) -> Self {
        Refused::Message(r)
    }
}

fn check(
    message: &str,
    address: &WalletAddress,
    broker_url: &str,
    chain_id: u64,
    now: OffsetDateTime,
) -> std::result::Result<siwe::Message, Refused> {
    let broker = Url::parse(broker_url).map_err(|e| Refused::BrokerUrl(e.to_string()))?;
    if message.len() > MAX_SIWE_MESSAGE {
        return Err(SiweRefusal::TooLong.into());
    }
    let msg: siwe::Message = message
        .parse()
        .map_err(|e: siwe::ParseError| SiweRefusal::NotSiwe(e.to_string()))?;
    // What is signed is the text, not the parse: both must say the same.
    if msg.to_string() != message {
        return Err(SiweRefusal::NotCanonical.into());
    }

    let found = msg.domain.as_str();
    if !same_authority(&broker, found) {
        return Err(SiweRefusal::Domain {
            expected: authority_of(&broker),
            found: found.to_owned(),
        }
        .into());
    }
    let uri_ok = Url::parse(msg.uri.as_str()).is_ok_and(|u| u.origin() == broker.origin());
    if !uri_ok {
        return Err(SiweRefusal::Uri {
            expected: broker.origin().ascii_serialization(),
            found: msg.uri.to_string(),
        }
        .into());
    }
    if msg.chain_id != chain_id {
        return Err(SiweRefusal::ChainId {
            expected: chain_id,
            found: msg.chain_id,
        }
        .into());
    }
    if msg.address != address.bytes() {
        return Err(SiweRefusal::Address {
            expected: address.to_string(),
            found: format!("0x{}", hex::encode(msg.address)),
        }
        .into());
    }

    if *msg.issued_at.as_ref() > now + MAX_CLOCK_SKEW {
        return Err(SiweRefusal::IssuedInFuture {
            issued_at: msg.issued_at.to_string(),
        }
        .into());
    }
    if let Some(nbf) = &msg.not_before
        && *nbf.as_ref() > now + MAX_CLOCK_SKEW
    {
        return Err(SiweRefusal::NotYetValid {
            not_before: nbf.to_string(),
        }
        .into());
    }
    let Some(exp) = &msg.expiration_time else {
        return Err(SiweRefusal::NoExpiration.into());
    };
    if *exp.as_ref() <= now {
        return Err(SiweRefusal::Expired {
            expires_at: exp.to_string(),
        }
        .into());
    }
    // The skew again: a broker clock ahead of this one makes a full-length challenge look longer.
    if *exp.as_ref() > now + MAX_VALIDITY + MAX_CLOCK_SKEW {
        return Err(SiweRefusal::TooLongLived {
            expires_at: exp.to_string(),
        }
        .into());
    }
    Ok(msg)
}

/// `host[:port]` of a URL, the port only when it is not the scheme's default.
fn authority_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// A SIWE domain names the broker's host when, read with the broker URL's scheme, it has the
/// same host and port (so `B.example:443` is `https://b.example`) and no user info.
fn same_authority(broker: &Url, domain: &str) -> bool {
    Url::parse(&format!("{}://{domain}/", broker.scheme())).is_ok_and(|u| {
        u.username().is_empty()
            && u.password().is_none()
            && u.path() == "/"
            && u.host() == broker.host()
            && u.port_or_known_default() == broker.port_or_known_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BROKER: &str = "http://127.0.0.1:8091";
    /// Anvil's first account: a known key, so messages can name it in EIP-55 form.
    const ADDR: &str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
    const NOW: i64 = 1_900_000_000;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).expect("time")
    }

    fn addr() -> WalletAddress {
        ADDR.parse().expect("address")
    }

    fn ts(t: i64) -> siwe::TimeStamp {
        OffsetDateTime::from_unix_timestamp(t)
            .map(siwe::TimeStamp::from)
            .expect("time")
    }

    /// A message as the broker writes one (wallet.rs), for `domain` and `uri`.
    fn broker_message(domain: &str, uri: &str) -> siwe::Message {
        siwe::Message {
            domain: domain.parse().expect("authority"),
            address: addr().bytes(),
            statement: Some("Sign in to AgentKeys.".to_owned()),
            uri: uri.parse().expect("uri"),
            version: siwe::Version::V1,
            chain_id: 1,
            nonce: "abcdefgh12345678".to_owned(),
            issued_at: ts(NOW - 5),
            expiration_time: Some(ts(NOW + 595)),
            not_before: None,
            request_id: None,
            resources: vec![],
        }
    }

    fn good() -> siwe::Message {
        broker_message("127.0.0.1:8091", BROKER)
    }

    fn refusal(msg: &str, broker: &str, chain_id: u64) -> SiweRefusal {
        match check_siwe_message(msg, &addr(), broker, chain_id, now()) {
            Err(Error::SiweRefused { reason, url }) => {
                assert_eq!(url, broker);
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_broker_message_for_this_broker_key_chain_and_time_is_signed() {
        let text = good().to_string();
        let parsed = check_siwe_message(&text, &addr(), BROKER, 1, now()).expect("accepted");
        assert_eq!(parsed.statement.as_deref(), Some("Sign in to AgentKeys."));
        // https on the default port, with the port written out or not, and any host case.
        let https = broker_message("broker.example", "https://broker.example");
        let text = https.to_string();
        check_siwe_message(&text, &addr(), "https://broker.example", 1, now()).expect("https");
        let explicit = broker_message("Broker.example:443", "https://broker.example:443/x");
        check_siwe_message(
            &explicit.to_string(),
            &addr(),
            "https://broker.example",
            1,
            now(),
        )
        .expect("default port written out");
        // IPv6 loopback.
        let v6 = broker_message("[::1]:8091", "http://[::1]:8091");
        check_siwe_message(&v6.to_string(), &addr(), "http://[::1]:8091", 1, now()).expect("v6");
    }

    #[test]
    fn another_brokers_domain_is_refused() {
        // The relay attack: the CLI talks to the relay, the challenge names the real broker.
        let text = broker_message("broker.example", "https://broker.example").to_string();
        let r = refusal(&text, "http://127.0.0.1:9999", 1);
        assert_eq!(
            r,
            SiweRefusal::Domain {
                expected: "127.0.0.1:9999".into(),
                found: "broker.example".into()
            }
        );
        assert!(r.to_string().contains("relaying"), "{r}");
        // Same host, another port; and user info in front of the right host.
        let text = broker_message("127.0.0.1:8092", BROKER).to_string();
        assert!(matches!(
            refusal(&text, BROKER, 1),
            SiweRefusal::Domain { .. }
        ));
        let text = broker_message("evil@127.0.0.1:8091", BROKER).to_string();
        assert!(matches!(
            refusal(&text, BROKER, 1),
            SiweRefusal::Domain { .. }
        ));
    }

    #[test]
    fn a_uri_off_the_broker_origin_is_refused() {
        for uri in [
            "https://127.0.0.1:8091",
            "http://127.0.0.1:8092",
            "http://evil.example",
            "did:key:z6Mk",
        ] {
            let text = broker_message("127.0.0.1:8091", uri).to_string();
            assert_eq!(
                refusal(&text, BROKER, 1),
                SiweRefusal::Uri {
                    expected: BROKER.into(),
                    found: uri.into()
                },
                "{uri}"
            );
        }
    }

    #[test]
    fn another_chain_is_refused() {
        let mut m = good();
        m.chain_id = 137;
        assert_eq!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::ChainId {
                expected: 1,
                found: 137
            }
        );
    }

    #[test]
    fn another_address_is_refused() {
        let mut m = good();
        m.address = [1; 20];
        assert_eq!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::Address {
                expected: ADDR.into(),
                found: format!("0x{}", "01".repeat(20))
            }
        );
    }

    #[test]
    fn expired_or_missing_expiration_is_refused() {
        let mut m = good();
        m.expiration_time = Some(ts(NOW - 1));
        assert!(matches!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::Expired { .. }
        ));
        m.expiration_time = Some(ts(NOW));
        assert!(matches!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::Expired { .. }
        ));
        m.expiration_time = None;
        assert_eq!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::NoExpiration
        );
    }

    #[test]
    fn a_far_expiration_is_refused() {
        let mut m = good();
        // The broker's longest challenge (1 h) from a clock 5 minutes ahead still passes ...
        m.expiration_time = Some(ts(NOW + 3600 + 300));
        check_siwe_message(&m.to_string(), &addr(), BROKER, 1, now()).expect("1 h + skew");
        // ... a day does not.
        m.expiration_time = Some(ts(NOW + 86_400));
        assert!(matches!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::TooLongLived { .. }
        ));
    }

    #[test]
    fn issued_in_the_future_or_not_yet_valid_is_refused() {
        let mut m = good();
        m.issued_at = ts(NOW + 299);
        check_siwe_message(&m.to_string(), &addr(), BROKER, 1, now()).expect("within the skew");
        m.issued_at = ts(NOW + 301);
        m.expiration_time = Some(ts(NOW + 900));
        assert_eq!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::IssuedInFuture {
                issued_at: ts(NOW + 301).to_string()
            }
        );
        let mut m = good();
        m.not_before = Some(ts(NOW + 1200));
        assert!(matches!(
            refusal(&m.to_string(), BROKER, 1),
            SiweRefusal::NotYetValid { .. }
        ));
    }

    #[test]
    fn anything_but_a_canonical_siwe_message_is_refused() {
        assert!(matches!(
            refusal("please sign this transaction", BROKER, 1),
            SiweRefusal::NotSiwe(_)
        ));
        // The old first-line-and-address test passed this: a SIWE head on a transaction.
        let head = format!(
            "127.0.0.1:8091 wants you to sign in with your Ethereum account:\n{ADDR}\n\nsend 1 ETH"
        );
        assert!(matches!(refusal(&head, BROKER, 1), SiweRefusal::NotSiwe(_)));
        // Parses (the parser skips the line after the statement), but is not what it parsed to.
        let text = good().to_string().replace("\nURI:", "\r\nURI:");
        assert_eq!(refusal(&text, BROKER, 1), SiweRefusal::NotCanonical);
        let padded = format!("{}\n", good());
        assert!(matches!(
            refusal(&padded, BROKER, 1),
            SiweRefusal::NotSiwe(_) | SiweRefusal::NotCanonical
        ));
        assert_eq!(
            refusal(&"x".repeat(MAX_SIWE_MESSAGE + 1), BROKER, 1),
            SiweRefusal::TooLong
        );
    }

    #[test]
    fn the_error_names_the_broker_url_and_the_reason() {
        let text = broker_message("broker.example", "https://broker.example").to_string();
        let e = check_siwe_message(&text, &addr(), "http://127.0.0.1:9999", 1, now())
            .expect_err("refused");
        let s = e.to_string();
        assert!(
            s.contains("http://127.0.0.1:9999")
                && s.contains("broker.example")
                && s.contains("domain"),
            "{s}"
        );
        assert!(!s.contains('\n'), "one line: {s:?}");
    }
}
