//! AWS's session-tag contract, checked before a token is signed: a tag AWS would reject must be
//! a 4xx from the broker, never a token that fails later inside STS.
//!
//! Rules (AWS IAM "Passing session tags in STS"): at most 50 tags; key 1–128 characters, value
//! 0–256; characters from `[\p{L}\p{Z}\p{N}_.:/=+\-@]`; a key may not start with `aws:`
//! (any case); keys are unique case-insensitively; one value per key.

use std::collections::BTreeMap;

use serde::Serialize;

pub const MAX_TAGS: usize = 50;
pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_VALUE_CHARS: usize = 256;

/// The value of the `https://aws.amazon.com/tags` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AwsSessionTags {
    /// One value per key, wrapped in the one-element array AWS expects.
    pub principal_tags: BTreeMap<String, [String; 1]>,
    pub transitive_tag_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("too many session tags: {0} (AWS allows at most {MAX_TAGS})")]
    TooMany(usize),
    #[error("session tag key {0:?} must be 1 to {MAX_KEY_CHARS} characters")]
    KeyLength(String),
    #[error("session tag {key:?} has a value longer than {MAX_VALUE_CHARS} characters")]
    ValueLength { key: String },
    #[error("session tag key {0:?} uses the reserved prefix \"aws:\"")]
    ReservedPrefix(String),
    #[error("session tag key {0:?} contains a character AWS does not allow")]
    KeyCharset(String),
    #[error("session tag {key:?} has a value with a character AWS does not allow")]
    ValueCharset { key: String },
    #[error("session tag key {0:?} appears twice (keys are case-insensitive)")]
    DuplicateKey(String),
    #[error(
        "source identity {0:?} must be {MIN_SOURCE_IDENTITY}–{MAX_SOURCE_IDENTITY} characters of \
         letters, digits and _+=,.@-"
    )]
    SourceIdentity(String),
}

/// AWS's rule for `SourceIdentity`: 2–64 characters of `[\w+=,.@-]`.
pub const MIN_SOURCE_IDENTITY: usize = 2;
pub const MAX_SOURCE_IDENTITY: usize = 64;

/// Checks a source identity against AWS's rule before it is signed into a token.
pub fn check_source_identity(value: &str) -> Result<(), TagError> {
    let ok = (MIN_SOURCE_IDENTITY..=MAX_SOURCE_IDENTITY).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TagError::SourceIdentity(value.to_owned()))
    }
}

/// `\p{L}` and `\p{N}` (approximated by Unicode alphanumerics), `\p{Z}` and `_ . : / = + - @`.
fn allowed_char(c: char) -> bool {
    // Every mint checks its tags, which are ASCII (hex, wallet addresses, scopes): one table
    // lookup each instead of the Unicode classes' branches.
    if let Ok(b) = u8::try_from(c)
        && b.is_ascii()
    {
        return ALLOWED_ASCII[usize::from(b)];
    }
    c.is_alphanumeric() || is_separator(c)
}

/// [`allowed_char`] of each ASCII character.
const ALLOWED_ASCII: [bool; 128] = {
    let mut allowed = [false; 128];
    let mut b = 0;
    while b < 128 {
        allowed[b] = matches!(b as u8, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b' ')
            || matches!(
                b as u8,
                b'_' | b'.' | b':' | b'/' | b'=' | b'+' | b'-' | b'@'
            );
        b += 1;
    }
    allowed
};

/// Unicode category Z (space, line and paragraph separators). Tabs and newlines are not in it.
fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{00A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}' | '\u{2028}' | '\u{2029}' | '\u{202F}' | '\u{205F}' | '\u{3000}'
    )
}

impl AwsSessionTags {
    /// Builds the claim from `(key, value)` pairs, all transitive, checking every AWS rule.
    pub fn new<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, TagError> {
        let mut principal_tags = BTreeMap::new();
        let mut lower_keys = std::collections::HashSet::new();
        let mut transitive_tag_keys = Vec::new();
        for (key, value) in tags {
            let key_chars = key.chars().count();
            if key_chars == 0 || key_chars > MAX_KEY_CHARS {
                return Err(TagError::KeyLength(key.to_owned()));
            }
            // `get`, not indexing: byte 4 need not be a char boundary (found by proptest).
            if key.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("aws:")) {
                return Err(TagError::ReservedPrefix(key.to_owned()));
            }
            if !key.chars().all(allowed_char) {
                return Err(TagError::KeyCharset(key.to_owned()));
            }
            if value.chars().count() > MAX_VALUE_CHARS {
                return Err(TagError::ValueLength {
                    key: key.to_owned(),
                });
            }
            if !value.chars().all(allowed_char) {
                return Err(TagError::ValueCharset {
                    key: key.to_owned(),
                });
            }
            if !lower_keys.insert(key.to_lowercase()) {
                return Err(TagError::DuplicateKey(key.to_owned()));
            }
            principal_tags.insert(key.to_owned(), [value.to_owned()]);
            transitive_tag_keys.push(key.to_owned());
            if principal_tags.len() > MAX_TAGS {
                return Err(TagError::TooMany(principal_tags.len()));
            }
        }
        Ok(Self {
            principal_tags,
            transitive_tag_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_tags_the_broker_emits() {
        let t = AwsSessionTags::new([
            (
                "agentkeys_user_wallet",
                "0x8ba1f109551bd432803012645ac136ddd64dba72",
            ),
            (
                "agentkeys_actor_omni",
                "caf843f7f6b17c15fb43e8f6b2ae2e850045497ba7fb6a58b9d930ba6c158824",
            ),
            ("agentkeys_scope", "0xabc/inbox/"),
        ])
        .unwrap();
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json["principal_tags"]["agentkeys_scope"],
            serde_json::json!(["0xabc/inbox/"])
        );
        assert_eq!(json["transitive_tag_keys"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn source_identity_rule() {
        // An omni is 64 hex digits: exactly the longest source identity.
        check_source_identity(&"a".repeat(64)).unwrap();
        check_source_identity("ab").unwrap();
        check_source_identity("user_1+x=y,z.w@v-u").unwrap();
        for bad in ["", "a", &"a".repeat(65), "a b", "a:b", "a/b", "é1", "a\nb"] {
            assert!(
                matches!(check_source_identity(bad), Err(TagError::SourceIdentity(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn rejects_each_rule() {
        let long_key = "k".repeat(129);
        let long_value = "v".repeat(257);
        type Case<'a> = (Vec<(&'a str, &'a str)>, fn(&TagError) -> bool);
        let cases: Vec<Case> = vec![
            (vec![("", "v")], |e| matches!(e, TagError::KeyLength(_))),
            (vec![(&long_key, "v")], |e| {
                matches!(e, TagError::KeyLength(_))
            }),
            (vec![("k", &long_value)], |e| {
                matches!(e, TagError::ValueLength { .. })
            }),
            (vec![("AWS:thing", "v")], |e| {
                matches!(e, TagError::ReservedPrefix(_))
            }),
            (vec![("k*", "v")], |e| matches!(e, TagError::KeyCharset(_))),
            (vec![("k", "a,b")], |e| {
                matches!(e, TagError::ValueCharset { .. })
            }),
            (vec![("k", "line\nbreak")], |e| {
                matches!(e, TagError::ValueCharset { .. })
            }),
            (vec![("Key", "1"), ("kEY", "2")], |e| {
                matches!(e, TagError::DuplicateKey(_))
            }),
        ];
        for (tags, expected) in cases {
            let err = AwsSessionTags::new(tags.clone()).unwrap_err();
            assert!(expected(&err), "{tags:?} gave {err:?}");
        }
        assert!(
            AwsSessionTags::new(vec![("k", "")]).is_ok(),
            "an empty value is allowed"
        );
    }

    #[test]
    fn fifty_tags_pass_and_fifty_one_fail() {
        let keys: Vec<String> = (0..51).map(|i| format!("k{i}")).collect();
        let fifty = keys[..50].iter().map(|k| (k.as_str(), "v"));
        assert!(AwsSessionTags::new(fifty).is_ok());
        let all = keys.iter().map(|k| (k.as_str(), "v"));
        assert_eq!(AwsSessionTags::new(all).unwrap_err(), TagError::TooMany(51));
    }

    /// The ASCII table says what the Unicode classes say, for every character.
    #[test]
    fn the_ascii_table_agrees_with_the_character_classes() {
        let by_class = |c: char| {
            c.is_alphanumeric()
                || super::is_separator(c)
                || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
        };
        let mut allowed_ascii = 0;
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            assert_eq!(super::allowed_char(c), by_class(c), "{c:?}");
            allowed_ascii += usize::from(c.is_ascii() && by_class(c));
        }
        // 62 letters and digits, the space and `_ . : / = + - @`.
        assert_eq!(allowed_ascii, 71);
    }

    proptest! {
        /// Any value with a character outside AWS's set is refused.
        #[test]
        fn values_with_forbidden_characters_are_rejected(
            prefix in "[a-z0-9]{0,10}",
            bad in prop::sample::select(vec!['*', ',', ';', '"', '\'', '<', '>', '\\', '?', '#', '%', '&', '\n', '\t', '\u{0}', '!', '$', '(', ')', '[', ']', '{', '}', '|', '~', '`', '^']),
            suffix in "[a-z0-9]{0,10}",
        ) {
            let value = format!("{prefix}{bad}{suffix}");
            prop_assert!(AwsSessionTags::new([("k", value.as_str())]).is_err());
        }

        /// Values built only from allowed characters and within length are accepted.
        #[test]
        fn values_from_the_allowed_set_are_accepted(value in "[a-zA-Z0-9_.:/=+@ -]{0,256}") {
            prop_assert!(AwsSessionTags::new([("k", value.as_str())]).is_ok());
        }

        /// Over-long values are refused whatever their content.
        #[test]
        fn over_long_values_are_rejected(value in "[a-z]{257,400}") {
            prop_assert!(AwsSessionTags::new([("k", value.as_str())]).is_err());
        }

        /// Keys that differ only in case collide.
        #[test]
        fn case_insensitive_duplicates_are_rejected(key in "[a-z]{1,20}") {
            let upper = key.to_uppercase();
            prop_assert!(AwsSessionTags::new([(key.as_str(), "1"), (upper.as_str(), "2")]).is_err());
        }
    }
}
