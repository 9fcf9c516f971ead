//! `agentkeys verify-isolation`: the operator's acceptance test (SPEC §5.3). With the session's
//! own credentials, listing its own prefix must succeed and listing another prefix must be
//! denied.

use crate::s3::{ListRequest, S3};

/// The prefix that must be denied unless `--other-prefix` names another.
pub const DEFAULT_OTHER_PREFIX: &str = "0xdeadbeef/";

/// What one `ListObjectsV2` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOutcome {
    Allowed {
        keys: usize,
    },
    /// HTTP 403 or `AccessDenied`.
    Denied {
        detail: String,
    },
    /// Anything else: no answer, no such bucket, a server error.
    Failed {
        detail: String,
    },
}

impl ListOutcome {
    /// For the step line.
    pub fn describe(&self) -> String {
        match self {
            ListOutcome::Allowed { keys: 1 } => "allowed (1 key)".to_owned(),
            ListOutcome::Allowed { keys } => format!("allowed ({keys} keys)"),
            ListOutcome::Denied { detail } => format!("denied ({detail})"),
            ListOutcome::Failed { detail } => format!("ERROR ({detail})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Both listings succeeded.
    BroadGrant,
    /// Both listings were denied.
    NoTags,
    /// Own prefix denied, the other allowed.
    Inverted,
    /// A listing failed for another reason than a denial; the text says which and why.
    Inconclusive(String),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        *self == Verdict::Pass
    }

    /// The verdict line.
    pub fn text(&self, other_prefix: &str) -> String {
        match self {
            Verdict::Pass => format!(
                "PASS: the session lists its own prefix and is denied {other_prefix}; isolation works"
            ),
            Verdict::BroadGrant => "FAIL: both succeeded → the role still has a broad S3 grant \
                 (or the bucket policy allows more than tagged prefixes)"
                .to_owned(),
            Verdict::NoTags => "FAIL: both failed → the token lacks the tags claim, the trust \
                 policy lacks sts:TagSession, or the bucket policy does not name this role"
                .to_owned(),
            Verdict::Inverted => format!(
                "FAIL: own prefix denied but {other_prefix} allowed → the bucket policy grants fixed \
                 prefixes instead of ${{aws:PrincipalTag/agentkeys_user_wallet}}"
            ),
            Verdict::Inconclusive(why) => format!("FAIL: could not decide: {why}"),
        }
    }
}

/// The verdict for the listing of the own prefix and of the other prefix.
pub fn verdict(own: &ListOutcome, other: &ListOutcome, bucket: &str) -> Verdict {
    use ListOutcome::*;
    match (own, other) {
        (Allowed { .. }, Denied { .. }) => Verdict::Pass,
        (Allowed { .. }, Allowed { .. }) => Verdict::BroadGrant,
        (Denied { .. }, Denied { .. }) => Verdict::NoTags,
        (Denied { .. }, Allowed { .. }) => Verdict::Inverted,
        (Failed { detail }, _) | (_, Failed { detail }) => Verdict::Inconclusive(format!(
            "listing in bucket {bucket} failed ({detail}); check --bucket, --s3-endpoint and --region"
        )),
    }
}

/// `ListObjectsV2 bucket prefix` (the first 100 keys).
pub async fn list_prefix(client: &S3, bucket: &str, prefix: &str) -> ListOutcome {
    let req = ListRequest {
        prefix,
        start_after: None,
        max_keys: 100,
    };
    match client.list_objects_v2(bucket, &req).await {
        Ok(listing) => ListOutcome::Allowed {
            keys: listing.objects.len(),
        },
        // RGW and AWS say AccessDenied; a bare 403 is a refusal too.
        Err(e) if e.status() == Some(403) || e.code() == Some("AccessDenied") => {
            ListOutcome::Denied { detail: e.detail() }
        }
        Err(e) => ListOutcome::Failed { detail: e.detail() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> ListOutcome {
        ListOutcome::Allowed { keys: 0 }
    }
    fn denied() -> ListOutcome {
        ListOutcome::Denied {
            detail: "HTTP 403 AccessDenied".into(),
        }
    }
    fn failed() -> ListOutcome {
        ListOutcome::Failed {
            detail: "HTTP 404 NoSuchBucket".into(),
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&allowed(), &denied(), "b"), Verdict::Pass);
        assert!(Verdict::Pass.passed());
        let v = verdict(&allowed(), &allowed(), "b");
        assert_eq!(v, Verdict::BroadGrant);
        assert!(v.text("0xdeadbeef/").contains("broad S3 grant"));
        let v = verdict(&denied(), &denied(), "b");
        assert_eq!(v, Verdict::NoTags);
        let t = v.text("0xdeadbeef/");
        assert!(
            t.contains("tags claim")
                && t.contains("sts:TagSession")
                && t.contains("name this role"),
            "{t}"
        );
        assert_eq!(verdict(&denied(), &allowed(), "b"), Verdict::Inverted);
        for (own, other) in [
            (failed(), denied()),
            (allowed(), failed()),
            (failed(), failed()),
        ] {
            let v = verdict(&own, &other, "bkt");
            assert!(!v.passed());
            let t = v.text("0xdeadbeef/");
            assert!(t.contains("NoSuchBucket") && t.contains("bkt"), "{t}");
        }
        for v in [
            Verdict::Pass,
            Verdict::BroadGrant,
            Verdict::NoTags,
            Verdict::Inverted,
            Verdict::Inconclusive("x".into()),
        ] {
            let t = v.text("0xdeadbeef/");
            assert!(
                t.starts_with(if v.passed() { "PASS: " } else { "FAIL: " }),
                "{t}"
            );
            assert!(!t.contains('\n'));
        }
    }

    fn creds() -> crate::aws::AwsCredentials {
        crate::aws::AwsCredentials {
            access_key_id: "ASIAFAKE".into(),
            secret_access_key: crate::secret::SecretString::from("s"),
            session_token: crate::secret::SecretString::from("t"),
            expiration: 1_893_456_000,
        }
    }

    #[tokio::test]
    async fn listing_outcomes_against_a_fake_s3() {
        let listed = r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name><Prefix>0xabc/</Prefix><KeyCount>2</KeyCount><MaxKeys>100</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>0xabc/a</Key><Size>1</Size></Contents><Contents><Key>0xabc/b</Key><Size>1</Size></Contents></ListBucketResult>"#;
        let denied = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><BucketName>bkt</BucketName><RequestId>tx</RequestId><HostId>h</HostId></Error>"#;
        let missing = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><BucketName>bkt</BucketName><RequestId>tx</RequestId></Error>"#;
        let server = crate::testutil::FakeServer::start(vec![
            (200, listed.to_owned()),
            (403, denied.to_owned()),
            (404, missing.to_owned()),
        ]);
        let s3 = S3::new(&creds(), "us-east-1", Some(&server.url)).expect("client");
        assert_eq!(
            list_prefix(&s3, "bkt", "0xabc/").await,
            ListOutcome::Allowed { keys: 2 }
        );
        let d = list_prefix(&s3, "bkt", "0xdeadbeef/").await;
        assert!(
            matches!(&d, ListOutcome::Denied { detail } if detail.contains("403") && detail.contains("AccessDenied")),
            "{d:?}"
        );
        let f = list_prefix(&s3, "bkt", "x/").await;
        assert!(
            matches!(&f, ListOutcome::Failed { detail } if detail.contains("NoSuchBucket")),
            "{f:?}"
        );
        let reqs = server.requests();
        // Path-style, signed with the session's credentials and token.
        assert!(reqs[0].starts_with("GET /bkt/?"), "{}", reqs[0]);
        assert!(reqs[0].contains("list-type=2"), "{}", reqs[0]);
        assert!(reqs[0].contains("prefix=0xabc%2F"), "{}", reqs[0]);
        let lower = reqs[0].to_ascii_lowercase();
        assert!(
            lower.contains("authorization: aws4-hmac-sha256 credential=asiafake/"),
            "{lower}"
        );
        assert!(lower.contains("x-amz-security-token: t"), "{lower}");
    }

    #[test]
    fn outcome_lines() {
        assert_eq!(
            ListOutcome::Allowed { keys: 1 }.describe(),
            "allowed (1 key)"
        );
        assert_eq!(denied().describe(), "denied (HTTP 403 AccessDenied)");
        assert!(failed().describe().starts_with("ERROR"));
    }
}
