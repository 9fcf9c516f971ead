//! Identity derivation (SPEC §3). Existing users' S3 prefixes depend on these exact bytes:
//! change nothing here without a migration plan.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The identity types an OmniAccount can be derived from.
pub const IDENTITY_EVM: &str = "evm";
pub const IDENTITY_EMAIL: &str = "email";

/// `hex(SHA-256(...))`: 64 lowercase hex characters, the stable name of an actor.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "5f1c…64 hex")]
pub struct OmniAccount(String);

impl OmniAccount {
    /// `hex(SHA-256("agentkeys" ‖ identity_type ‖ identity_value))`, no separators.
    /// `identity_value` must already be canonical (see [`WalletAddress`]).
    pub fn derive(identity_type: &str, identity_value: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"agentkeys");
        h.update(identity_type.as_bytes());
        h.update(identity_value.as_bytes());
        Self(crate::lower_hex(&h.finalize()))
    }

    /// The master omni of a wallet sign-in.
    pub fn for_wallet(wallet: &WalletAddress) -> Self {
        Self::derive(IDENTITY_EVM, wallet.as_str())
    }

    /// `hex(SHA-256("agentkeys:agent" ‖ master_omni ‖ "//" ‖ label))`.
    pub fn for_agent(master: &OmniAccount, label: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"agentkeys:agent");
        h.update(master.0.as_bytes());
        h.update(b"//");
        h.update(label.as_bytes());
        Self(crate::lower_hex(&h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OmniAccount {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::BadOmni)
        }
    }
}

impl fmt::Display for OmniAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OmniAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OmniAccount({})", self.0)
    }
}

/// An EVM address in its canonical form: `0x` + 40 lowercase hex. Parsing accepts any case
/// (EIP-55 checksummed or not) and canonicalises.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "0x8ba1f109551bd432803012645ac136ddd64dba72")]
pub struct WalletAddress(String);

impl WalletAddress {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        // Invariant of the type: 40 hex digits after "0x".
        hex::decode_to_slice(&self.0[2..], &mut out).unwrap_or_default();
        out
    }
}

impl FromStr for WalletAddress {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or(IdentityError::BadAddress)?;
        if hex_part.len() != 40 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(IdentityError::BadAddress);
        }
        Ok(Self(format!("0x{}", hex_part.to_ascii_lowercase())))
    }
}

impl TryFrom<String> for WalletAddress {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WalletAddress> for String {
    fn from(w: WalletAddress) -> Self {
        w.0
    }
}

impl fmt::Display for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletAddress({})", self.0)
    }
}

/// Canonical email (SPEC §3): trimmed and lowercased. A light shape check only: whether the
/// address exists is proved by the link sent to it.
pub fn canonical_email(input: &str) -> Result<String, IdentityError> {
    let email = input.trim().to_lowercase();
    let ok = email.len() <= 254
        && !email.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';' | '"')
        })
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && local.len() <= 64 && domain.contains('.') && !domain.contains('@')
               && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(email)
    } else {
        Err(IdentityError::BadEmail)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("an email address looks like name@example.com")]
    BadEmail,
    #[error("an EVM address is 0x followed by 40 hex digits")]
    BadAddress,
    #[error("an omni account is 64 lowercase hex digits")]
    BadOmni,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omni_is_sha256_of_the_concatenation() {
        // Independent computation: sha256("agentkeysevm0x00…01") done by hand below.
        let w: WalletAddress = "0x0000000000000000000000000000000000000001"
            .parse()
            .unwrap();
        let mut h = Sha256::new();
        h.update(b"agentkeysevm0x0000000000000000000000000000000000000001");
        assert_eq!(
            OmniAccount::for_wallet(&w).as_str(),
            hex::encode(h.finalize())
        );
        assert_eq!(OmniAccount::for_wallet(&w).as_str().len(), 64);
    }

    #[test]
    fn omni_pins_a_known_value() {
        // Pinned so an accidental change of the derivation (which would move every user's
        // S3 prefix) fails loudly. Value computed with `printf 'agentkeysemailalice@example.com' | sha256sum`.
        assert_eq!(
            OmniAccount::derive(IDENTITY_EMAIL, "alice@example.com").as_str(),
            "caf843f7f6b17c15fb43e8f6b2ae2e850045497ba7fb6a58b9d930ba6c158824"
        );
    }

    #[test]
    fn wallet_parsing_canonicalises_case_and_rejects_garbage() {
        let w: WalletAddress = "0x8BA1f109551bD432803012645Ac136ddd64DBA72"
            .parse()
            .unwrap();
        assert_eq!(w.as_str(), "0x8ba1f109551bd432803012645ac136ddd64dba72");
        assert_eq!(w.bytes()[0], 0x8b);
        for bad in [
            "",
            "0x",
            "8ba1f109551bd432803012645ac136ddd64dba72",
            "0x123",
            "0xzz",
        ] {
            assert!(bad.parse::<WalletAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(
            canonical_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@c.com",
            "a@exa\nmple.com",
            "x,y@example.com",
        ] {
            assert!(canonical_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn agent_omni_depends_on_master_and_label() {
        let m = OmniAccount::derive(IDENTITY_EVM, "0xabc");
        let a = OmniAccount::for_agent(&m, "scraper");
        assert_ne!(a, OmniAccount::for_agent(&m, "scraper2"));
        let mut h = Sha256::new();
        h.update(format!("agentkeys:agent{}//scraper", m.as_str()).as_bytes());
        assert_eq!(a.as_str(), hex::encode(h.finalize()));
    }
}
