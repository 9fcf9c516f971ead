//! A wallet's secp256k1 key: its Ethereum address and EIP-191 `personal_sign` signatures
//! (sign-in messages, device proofs). The client signs with it; the broker's tests and load
//! tools sign exactly as the client does without building the client.
//!
//! No I/O here: the client's key files are its own (`agentkeys::keyfile`).

use alloy_primitives::{Address, Signature};
use k256::ecdsa::SigningKey;

/// What can go wrong with a key. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("not a valid secp256k1 secret key (zero, or not below the group order)")]
    InvalidSecret,
    #[error("the message could not be signed")]
    Signing,
}

/// A wallet's secp256k1 key. The secret is zeroed when dropped and never formatted.
pub struct WalletKey {
    key: SigningKey,
    address: Address,
}

/// The address only: the secret never reaches a log or an error.
impl std::fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletKey")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl WalletKey {
    /// A new key from the operating system's randomness.
    pub fn random() -> Self {
        use rand::RngCore;
        loop {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let key = Self::from_slice(&secret);
            secret.fill(0);
            // Zero or ≥ the group order: about one draw in 2^128.
            if let Ok(key) = key {
                return key;
            }
        }
    }

    /// The key whose 32-byte big-endian secret is `secret`.
    pub fn from_slice(secret: &[u8]) -> Result<Self, WalletError> {
        let key = SigningKey::from_slice(secret).map_err(|_| WalletError::InvalidSecret)?;
        let address = Address::from_private_key(&key);
        Ok(Self { key, address })
    }

    /// The 32-byte secret, for a key file.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// The EIP-191 `personal_sign` signature of `message`: low-s, `v` = 27/28 on the wire.
    pub fn sign_message(&self, message: &[u8]) -> Result<Signature, WalletError> {
        let hash = alloy_primitives::eip191_hash_message(message);
        self.key
            .sign_prehash_recoverable(hash.as_slice())
            .map(Into::into)
            .map_err(|_| WalletError::Signing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eip191_signature_recovers_to_the_key_address() {
        let s = WalletKey::random();
        let msg = "example.com wants you to sign in with your Ethereum account:\n0xabc";
        let sig = s.sign_message(msg.as_bytes()).expect("sign");
        let wire = sig.to_string();
        assert!(wire.starts_with("0x") && wire.len() == 132, "{wire}");
        assert!(
            wire.ends_with("1b") || wire.ends_with("1c"),
            "v is 27/28: {wire}"
        );
        assert_eq!(
            sig.recover_address_from_msg(msg).expect("recover"),
            s.address()
        );
        let other = WalletKey::random()
            .sign_message(msg.as_bytes())
            .expect("sign");
        assert_ne!(
            other.recover_address_from_msg(msg).expect("recover"),
            s.address()
        );
    }

    #[test]
    fn known_key_gives_known_address_and_round_trips() {
        // Hardhat/anvil account #0.
        let secret: [u8; 32] = [
            0xac, 0x09, 0x74, 0xbe, 0xc3, 0x9a, 0x17, 0xe3, 0x6b, 0xa4, 0xa6, 0xb4, 0xd2, 0x38,
            0xff, 0x94, 0x4b, 0xac, 0xb4, 0x78, 0xcb, 0xed, 0x5e, 0xfc, 0xae, 0x78, 0x4d, 0x7b,
            0xf4, 0xf2, 0xff, 0x80,
        ];
        let k = WalletKey::from_slice(&secret).expect("key");
        assert_eq!(
            format!("{:#x}", k.address()),
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"
        );
        assert_eq!(k.to_bytes(), secret);
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("ac0974") && shown.to_lowercase().contains("f39fd6e5"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_secrets_are_refused() {
        assert_eq!(
            WalletKey::from_slice(&[0u8; 32]).err(),
            Some(WalletError::InvalidSecret)
        );
        assert_eq!(
            WalletKey::from_slice(&[0xffu8; 32]).err(),
            Some(WalletError::InvalidSecret)
        );
        assert_eq!(
            WalletKey::from_slice(&[]).err(),
            Some(WalletError::InvalidSecret)
        );
    }
}
