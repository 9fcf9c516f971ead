//! Properties of every parser in this crate (docs/reliability.md): arbitrary input never
//! panics, valid input round-trips, invalid input gets its specific error.

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::api::*;
use crate::aws_tags::{AwsSessionTags, MAX_KEY_CHARS, MAX_TAGS, TagError};
use crate::identity::{IdentityError, OmniAccount, WalletAddress, canonical_email};
use crate::pairing::{CODE_ALPHABET, CODE_LEN, display_code, normalize_code, valid_label};

/// Arbitrary JSON, nested a little: what a hostile client can send as a body.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("address".to_owned()),
                    Just("signature".to_owned()),
                    Just("challenge_id".to_owned()),
                    Just("chain_id".to_owned()),
                    Just("purpose".to_owned()),
                    Just("timestamp_ms".to_owned()),
                    Just("code".to_owned()),
                    Just("label".to_owned()),
                    Just("email".to_owned()),
                    Just("agent".to_owned()),
                    Just("scope".to_owned()),
                    Just("max_uses".to_owned()),
                    Just("role_arn".to_owned()),
                    Just("grant_id".to_owned()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Deserialising any JSON into `T` returns Ok or Err; whatever it accepted serialises and
/// deserialises back to the same JSON.
fn body_round_trips<T: Serialize + DeserializeOwned>(value: &serde_json::Value) {
    if let Ok(parsed) = serde_json::from_value::<T>(value.clone()) {
        let again = serde_json::to_value(&parsed).expect("a parsed body serialises");
        let reparsed: T = serde_json::from_value(again.clone()).expect("and parses again");
        assert_eq!(serde_json::to_value(&reparsed).unwrap(), again);
    }
}

fn hex_address() -> impl Strategy<Value = String> {
    ("0[xX]", "[0-9a-fA-F]{40}").prop_map(|(p, h)| format!("{p}{h}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Every request body the broker accepts, fed arbitrary JSON and arbitrary bytes.
    #[test]
    fn request_bodies_never_panic_and_round_trip(value in any_json(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        body_round_trips::<WalletChallengeRequest>(&value);
        body_round_trips::<WalletVerifyRequest>(&value);
        body_round_trips::<WalletProof>(&value);
        body_round_trips::<MintRequest>(&value);
        body_round_trips::<PairingStartRequest>(&value);
        body_round_trips::<PairingApproveRequest>(&value);
        body_round_trips::<PairingPollRequest>(&value);
        body_round_trips::<AgentSessionRequest>(&value);
        body_round_trips::<EmailStartRequest>(&value);
        body_round_trips::<OidcStartRequest>(&value);
        body_round_trips::<LinkEmailRequest>(&value);
        body_round_trips::<LinkOidcRequest>(&value);
        body_round_trips::<LoginCollectRequest>(&value);
        body_round_trips::<EmailLinkRequest>(&value);
        body_round_trips::<GrantCreateRequest>(&value);
        let _ = serde_json::from_slice::<WalletChallengeRequest>(&bytes);
        let _ = serde_json::from_slice::<MintRequest>(&bytes);
        let _ = serde_json::from_slice::<GrantCreateRequest>(&bytes);
    }

    /// Valid bodies built field by field parse back to the same fields; an unknown field is
    /// refused (deny_unknown_fields), naming the field.
    #[test]
    fn valid_bodies_round_trip_and_unknown_fields_are_refused(
        address in hex_address(),
        chain_id in proptest::option::of(1u64..=i64::MAX as u64),
        extra in "[a-z]{1,10}",
    ) {
        let body = serde_json::json!({"address": address, "chain_id": chain_id});
        let parsed: WalletChallengeRequest = serde_json::from_value(body).unwrap();
        prop_assert_eq!(&parsed.address, &address);
        prop_assert_eq!(parsed.chain_id, chain_id);
        prop_assume!(!["address", "chain_id", "purpose"].contains(&extra.as_str()));
        let with_extra = serde_json::json!({"address": address, extra.clone(): 1});
        let err = serde_json::from_value::<WalletChallengeRequest>(with_extra).unwrap_err();
        prop_assert!(err.to_string().contains(&format!("unknown field `{extra}`")), "{}", err);
    }

    /// Addresses: any string parses or is BadAddress; valid ones canonicalise to lowercase,
    /// idempotently.
    #[test]
    fn wallet_addresses(s in ".{0,50}", valid in hex_address()) {
        match s.parse::<WalletAddress>() {
            Ok(w) => prop_assert_eq!(w.as_str().parse::<WalletAddress>().unwrap(), w),
            Err(e) => prop_assert_eq!(e, IdentityError::BadAddress),
        }
        let w: WalletAddress = valid.parse().unwrap();
        prop_assert_eq!(w.as_str(), format!("0x{}", valid[2..].to_ascii_lowercase()));
        prop_assert_eq!(w.as_str().parse::<WalletAddress>().unwrap(), w.clone());
        prop_assert_eq!(&hex::encode(w.bytes()), &valid[2..].to_ascii_lowercase());
        // One character too many or too few, or a non-hex digit: BadAddress.
        prop_assert_eq!(format!("{valid}0").parse::<WalletAddress>().unwrap_err(), IdentityError::BadAddress);
        prop_assert_eq!(valid[..41].parse::<WalletAddress>().unwrap_err(), IdentityError::BadAddress);
        prop_assert_eq!(format!("{}g", &valid[..41]).parse::<WalletAddress>().unwrap_err(), IdentityError::BadAddress);
    }

    /// OmniAccount: sha256("agentkeys" ‖ type ‖ value), computed independently here; it
    /// parses back; any other string is BadOmni. Agent omnis differ per label and master.
    #[test]
    fn omni_accounts(kind in "[a-z0-9_]{1,16}", value in ".{0,64}", s in ".{0,70}", label in "[a-z0-9-]{1,32}", other in "[a-z0-9-]{1,32}") {
        let omni = OmniAccount::derive(&kind, &value);
        let expected = hex::encode(Sha256::digest(format!("agentkeys{kind}{value}").as_bytes()));
        prop_assert_eq!(omni.as_str(), expected.as_str());
        prop_assert_eq!(omni.as_str().parse::<OmniAccount>().unwrap(), omni.clone());
        prop_assert_eq!(omni.as_str().to_uppercase().parse::<OmniAccount>().unwrap_err(), IdentityError::BadOmni);
        if let Err(e) = s.parse::<OmniAccount>() {
            prop_assert_eq!(e, IdentityError::BadOmni);
        }
        let agent = OmniAccount::for_agent(&omni, &label);
        prop_assert_ne!(&agent, &omni);
        if label != other {
            prop_assert_ne!(agent, OmniAccount::for_agent(&omni, &other));
        }
    }

    /// Emails: any string is canonical (lowercase, idempotent) or BadEmail.
    #[test]
    fn emails(s in ".{0,80}", local in "[a-zA-Z0-9._+-]{1,20}", domain in "[a-zA-Z0-9-]{1,20}\\.[a-z]{2,6}") {
        match canonical_email(&s) {
            Ok(e) => prop_assert_eq!(canonical_email(&e).unwrap(), e),
            Err(e) => prop_assert_eq!(e, IdentityError::BadEmail),
        }
        let address = format!("{local}@{domain}");
        prop_assert_eq!(canonical_email(&address).unwrap(), address.to_lowercase());
        prop_assert_eq!(canonical_email(&format!("{local}@@{domain}")).unwrap_err(), IdentityError::BadEmail);
    }

    /// Pairing codes: any input normalises or is refused; a code from the alphabet, typed in
    /// any case with separators, normalises to itself and displays as XXXX-XXXX.
    #[test]
    fn pairing_codes(s in ".{0,20}", picks in prop::collection::vec(0..CODE_ALPHABET.len(), CODE_LEN), lower in any::<bool>()) {
        if let Some(code) = normalize_code(&s) {
            prop_assert_eq!(code.len(), CODE_LEN);
            prop_assert_eq!(normalize_code(&display_code(&code)), Some(code));
        }
        let code: String = picks.iter().map(|&i| CODE_ALPHABET[i] as char).collect();
        let shown = display_code(&code);
        prop_assert_eq!(&shown[4..5], "-");
        let typed = if lower { shown.to_lowercase() } else { shown.replace('-', " ") };
        prop_assert_eq!(normalize_code(&typed), Some(code.clone()));
        // Too short, or one ambiguous character: refused.
        prop_assert_eq!(normalize_code(&code[..CODE_LEN - 1]), None);
        prop_assert_eq!(normalize_code(&format!("{}0", &code[..CODE_LEN - 1])), None);
        // Labels: exactly ^[a-z0-9-]{1,32}$.
        let label_ok = (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        prop_assert_eq!(valid_label(&s), label_ok);
    }

    /// AWS session tags: arbitrary pairs never panic; each broken rule gets its own error.
    #[test]
    fn aws_tag_contract(pairs in prop::collection::vec((".{0,20}", ".{0,20}"), 0..8), key in "[a-zA-Z0-9_.:/=+@-]{1,40}", value in "[a-zA-Z0-9_.:/=+@ -]{0,60}") {
        let _ = AwsSessionTags::new(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        prop_assume!(!key.to_ascii_lowercase().starts_with("aws:"));
        let tags = AwsSessionTags::new([(key.as_str(), value.as_str())]).unwrap();
        prop_assert_eq!(&tags.principal_tags[&key][0], &value);
        prop_assert_eq!(&tags.transitive_tag_keys, &vec![key.clone()]);
        prop_assert_eq!(AwsSessionTags::new([(format!("aWs:{key}").as_str(), "v")]).unwrap_err(), TagError::ReservedPrefix(format!("aWs:{key}")));
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        prop_assert_eq!(AwsSessionTags::new([(long.as_str(), "v")]).unwrap_err(), TagError::KeyLength(long.clone()));
        prop_assert_eq!(AwsSessionTags::new([("", "v")]).unwrap_err(), TagError::KeyLength(String::new()));
        prop_assert_eq!(AwsSessionTags::new([(format!("{key}*").as_str(), "v")]).unwrap_err(), TagError::KeyCharset(format!("{key}*")));
        prop_assert_eq!(AwsSessionTags::new([(key.as_str(), format!("{value}\n").as_str())]).unwrap_err(), TagError::ValueCharset { key: key.clone() });
        let upper = key.to_uppercase();
        if upper != key {
            prop_assert_eq!(AwsSessionTags::new([(key.as_str(), "1"), (upper.as_str(), "2")]).unwrap_err(), TagError::DuplicateKey(upper.clone()));
        }
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}")).collect();
        prop_assert_eq!(AwsSessionTags::new(many.iter().map(|k| (k.as_str(), "v"))).unwrap_err(), TagError::TooMany(MAX_TAGS + 1));
    }
}

/// Found by `aws_tag_contract`: a key whose fourth byte is inside a multi-byte character made
/// the reserved-prefix check slice through it and panic.
#[test]
fn tag_keys_with_multibyte_characters_near_the_prefix_do_not_panic() {
    // Letters all (allowed characters), each with byte 4 inside a character.
    for key in ["Ia\u{4e2d}x", "\u{4e2d}\u{6587}", "\u{e9}\u{4e2d}"] {
        assert!(!key.is_char_boundary(4), "{key}");
        assert!(AwsSessionTags::new([(key, "v")]).is_ok(), "{key}");
    }
    // Not allowed, still no panic: the charset error.
    let key = "I\u{1F574}:x";
    assert_eq!(
        AwsSessionTags::new([(key, "v")]).unwrap_err(),
        TagError::KeyCharset(key.to_owned())
    );
}
