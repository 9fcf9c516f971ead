//! The device side of agent pairing: proofs of possession of the device key (EIP-191 signatures
//! over [`agentkeys_types::pairing::proof_message`], so client and broker agree on every byte),
//! and the checks on what a user types or the broker sends back.

use agentkeys_types::api::{
    AgentInfo, AgentSessionRequest, PairingPollRequest, PairingStartRequest,
};
use agentkeys_types::pairing::{ProofAction, display_code, normalize_code, proof_message};
use agentkeys_types::{OmniAccount, WalletAddress};

use crate::error::{Error, Result};
use crate::keyfile::{self, WalletKey};

/// Signs pairing and poll proofs for one broker, with strictly increasing timestamps (the
/// broker refuses a poll whose timestamp is not later than the previous one).
pub struct DeviceProver {
    signer: WalletKey,
    address: WalletAddress,
    issuer: String,
    last_ms: i64,
}

impl DeviceProver {
    /// `issuer` is the broker's issuer URL, verbatim from its discovery document.
    pub fn new(signer: WalletKey, issuer: &str) -> Self {
        let address = keyfile::address_of(&signer);
        Self {
            signer,
            address,
            issuer: issuer.to_owned(),
            last_ms: 0,
        }
    }

    pub fn address(&self) -> &WalletAddress {
        &self.address
    }

    /// The proof that opens a pairing request, timestamped `now_ms` (or just after the last).
    pub fn start_request(&mut self, now_ms: i64) -> Result<PairingStartRequest> {
        let ts = self.next_timestamp(now_ms);
        Ok(PairingStartRequest {
            device_address: self.address.to_string(),
            timestamp_ms: ts,
            signature: self.sign(ProofAction::Pair, None, ts)?,
        })
    }

    /// A fresh proof for one poll of `pairing_id`.
    pub fn poll_request(&mut self, pairing_id: &str, now_ms: i64) -> Result<PairingPollRequest> {
        let ts = self.next_timestamp(now_ms);
        Ok(PairingPollRequest {
            pairing_id: pairing_id.to_owned(),
            timestamp_ms: ts,
            signature: self.sign(ProofAction::Poll, Some(pairing_id), ts)?,
        })
    }

    /// The proof that asks for a new session of the already-paired agent `agent_omni`.
    pub fn session_request(
        &mut self,
        agent_omni: &str,
        now_ms: i64,
    ) -> Result<AgentSessionRequest> {
        let ts = self.next_timestamp(now_ms);
        Ok(AgentSessionRequest {
            agent_omni: agent_omni.to_owned(),
            timestamp_ms: ts,
            signature: self.sign(ProofAction::Session, Some(agent_omni), ts)?,
        })
    }

    fn next_timestamp(&mut self, now_ms: i64) -> i64 {
        self.last_ms = now_ms.max(self.last_ms + 1);
        self.last_ms
    }

    fn sign(&self, action: ProofAction, pairing_id: Option<&str>, ts: i64) -> Result<String> {
        let message = proof_message(&self.issuer, action, self.address.as_str(), pairing_id, ts);
        self.signer
            .sign_message(message.as_bytes())
            .map(|s| s.to_string())
            .map_err(|e| Error::Signing(e.to_string()))
    }
}

/// Milliseconds since the Unix epoch, for proof timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A code as the user typed it (any case, with or without the dash or spaces) → the canonical
/// form the broker expects.
pub fn parse_code(input: &str) -> Result<String> {
    normalize_code(input).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{:?} is not a pairing code: it is the 8 characters the agent's `agentkeys agent pair` \
             shows, e.g. ABCD-EFGH",
            crate::client::sanitize(input, 40)
        ))
    })
}

/// The code the broker handed out, checked and shown as `ABCD-EFGH`.
pub fn shown_code(from_broker: &str) -> Option<String> {
    normalize_code(from_broker).map(|c| display_code(&c))
}

/// A pairing id from the broker goes back into signed proofs and request bodies: accept only a
/// short token of letters, digits, `-` and `_`.
pub fn valid_pairing_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A session id (from `agentkeys sessions list`) goes into a URL path: same rule.
pub fn check_session_id(id: &str) -> Result<()> {
    if valid_pairing_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{:?} is not a session id; see `agentkeys sessions list`",
            crate::client::sanitize(id, 40)
        )))
    }
}

/// How a master names an agent on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRef {
    Omni(OmniAccount),
    Label(String),
}

impl AgentRef {
    /// 64 hex digits are an omni (any case); otherwise a label (`^[a-z0-9-]{1,32}$`).
    pub fn parse(input: &str) -> Result<Self> {
        let t = input.trim();
        if t.len() == 64
            && let Ok(o) = t.to_ascii_lowercase().parse::<OmniAccount>()
        {
            return Ok(Self::Omni(o));
        }
        if agentkeys_types::pairing::valid_label(t) {
            return Ok(Self::Label(t.to_owned()));
        }
        Err(Error::InvalidInput(format!(
            "{:?} is neither an agent omni (64 hex digits) nor a label (1-32 of a-z, 0-9, '-'); \
             see `agentkeys agents list`",
            crate::client::sanitize(input, 80)
        )))
    }

    /// The agent it names among the master's agents.
    pub fn find<'a>(&self, agents: &'a [AgentInfo]) -> Option<&'a AgentInfo> {
        agents.iter().find(|a| match self {
            AgentRef::Omni(o) => a.agent_omni == o.as_str(),
            AgentRef::Label(l) => a.label == *l,
        })
    }
}

impl std::fmt::Display for AgentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentRef::Omni(o) => write!(f, "with omni {o}"),
            AgentRef::Label(l) => write!(f, "labelled {l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::api::AgentStatus;
    use alloy_primitives::Signature;

    const ISSUER: &str = "http://127.0.0.1:8091";

    fn recover(sig: &str, message: &str) -> alloy_primitives::Address {
        let bytes = hex::decode(sig.trim_start_matches("0x")).expect("hex");
        assert_eq!(bytes.len(), 65);
        Signature::try_from(&bytes[..])
            .expect("signature")
            .recover_address_from_msg(message.as_bytes())
            .expect("recover")
    }

    #[test]
    fn proofs_sign_the_shared_message_with_the_device_key() {
        let signer = WalletKey::random();
        let key_address = signer.address();
        let mut p = DeviceProver::new(signer, ISSUER);
        let device = p.address().to_string();
        assert_eq!(device, device.to_lowercase());

        let start = p.start_request(1_700_000_000_000).expect("start");
        assert_eq!(start.device_address, device);
        assert_eq!(start.timestamp_ms, 1_700_000_000_000);
        let message = proof_message(ISSUER, ProofAction::Pair, &device, None, start.timestamp_ms);
        assert_eq!(recover(&start.signature, &message), key_address);

        let poll = p.poll_request("ab12", 1_700_000_002_000).expect("poll");
        assert_eq!(poll.pairing_id, "ab12");
        let message = proof_message(
            ISSUER,
            ProofAction::Poll,
            &device,
            Some("ab12"),
            poll.timestamp_ms,
        );
        assert_eq!(recover(&poll.signature, &message), key_address);
        // A poll proof is not a pairing proof, nor one for another broker.
        let as_pair = proof_message(ISSUER, ProofAction::Pair, &device, None, poll.timestamp_ms);
        assert_ne!(recover(&poll.signature, &as_pair), key_address);
        let other = proof_message(
            "https://other.example",
            ProofAction::Poll,
            &device,
            Some("ab12"),
            poll.timestamp_ms,
        );
        assert_ne!(recover(&poll.signature, &other), key_address);
    }

    #[test]
    fn timestamps_strictly_increase_even_if_the_clock_does_not() {
        let mut p = DeviceProver::new(WalletKey::random(), ISSUER);
        let a = p.start_request(5_000).expect("a").timestamp_ms;
        let b = p.poll_request("x", 5_000).expect("b").timestamp_ms;
        let c = p.poll_request("x", 4_000).expect("c").timestamp_ms;
        let d = p.poll_request("x", 9_000).expect("d").timestamp_ms;
        assert_eq!((a, b, c, d), (5_000, 5_001, 5_002, 9_000));
        assert!(now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn codes_are_normalised_like_the_broker_does() {
        for typed in ["abcd-efgh", "ABCD-EFGH", " abcd efgh ", "ABCDEFGH"] {
            assert_eq!(parse_code(typed).expect(typed), "ABCDEFGH");
            assert_eq!(
                Some(parse_code(typed).expect(typed)),
                normalize_code(typed),
                "the same function as the broker's"
            );
        }
        for bad in ["", "ABCD-EFG", "ABCD-EF0H", "ABCD-EFGH-IJKL"] {
            let e = parse_code(bad).expect_err(bad);
            assert!(e.to_string().contains("ABCD-EFGH"), "{e}");
        }
        assert_eq!(shown_code("abcdefgh").as_deref(), Some("ABCD-EFGH"));
        assert_eq!(shown_code("ABCD-EFGH").as_deref(), Some("ABCD-EFGH"));
        assert_eq!(shown_code("\x1b[31mABCD"), None);
    }

    #[test]
    fn ids_are_path_safe() {
        assert!(valid_pairing_id("0123456789abcdef0123456789abcdef"));
        for bad in ["", "../x", "a/b", "a b", "a\nb", &"a".repeat(129)] {
            assert!(!valid_pairing_id(bad), "{bad:?}");
            assert!(check_session_id(bad).is_err(), "{bad:?}");
        }
    }

    fn agent(omni: &str, label: &str) -> AgentInfo {
        AgentInfo {
            agent_omni: omni.into(),
            label: label.into(),
            device_address: "0x0000000000000000000000000000000000000001".into(),
            status: AgentStatus::Active,
            created_at: "2030-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn agents_are_named_by_omni_or_label() {
        let omni = "ab".repeat(32);
        let list = [agent(&"cd".repeat(32), "other"), agent(&omni, "bot")];
        let by_omni = AgentRef::parse(&omni.to_uppercase()).expect("omni");
        assert_eq!(by_omni.find(&list).map(|a| a.label.as_str()), Some("bot"));
        let by_label = AgentRef::parse("bot").expect("label");
        assert_eq!(by_label, AgentRef::Label("bot".into()));
        assert_eq!(
            by_label.find(&list).map(|a| a.agent_omni.as_str()),
            Some(omni.as_str())
        );
        assert!(
            AgentRef::parse("nobody")
                .expect("label")
                .find(&list)
                .is_none()
        );
        for bad in ["", "Bot", "a/b", &"x".repeat(33)] {
            assert!(AgentRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
