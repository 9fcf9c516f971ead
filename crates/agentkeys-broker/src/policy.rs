//! The cloud side of the federation contract (SPEC §5.3): the documents an operator applies so
//! that AWS trusts the broker's tokens and confines every caller to its own prefix.
//!
//! The role trusts only the broker's OIDC provider and requires the actor tag; it has no S3
//! grant of its own. The bucket policy allows each session its own prefix, named by its
//! session tags. `${aws:PrincipalTag/...}` is substituted by AWS at request time; Ceph RGW
//! cannot substitute inside a resource, so [`BucketPolicy::expanded`] writes one pair of
//! statements per known tag value instead (tests and small deployments on RGW).

use agentkeys_types::claims::{ACTOR_OMNI, AUDIENCE_STS, SCOPE, USER_WALLET};
use serde_json::{Value, json};

/// Object actions a session may take under its own prefix.
pub const OBJECT_ACTIONS: &[&str] = &[
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:AbortMultipartUpload",
];

/// What the role's trust policy lets the broker's tokens do.
pub const TRUST_ACTIONS: &[&str] = &[
    "sts:AssumeRoleWithWebIdentity",
    "sts:TagSession",
    "sts:SetSourceIdentity",
];
/// The same for account-less clouds (Ceph RGW 16): RGW refuses a trust policy that names
/// `sts:SetSourceIdentity` (CreateRole fails), and ignores the source identity claim.
pub const TRUST_ACTIONS_ACCOUNTLESS: &[&str] = &["sts:AssumeRoleWithWebIdentity", "sts:TagSession"];

/// Inputs of `agentkeys-broker policy aws`.
#[derive(Debug, Clone)]
pub struct AwsInputs {
    /// The issuer URL; its host (and port) names the provider.
    pub issuer: String,
    /// 12-digit account id, or empty for account-less clouds (Ceph RGW).
    pub account: String,
    pub bucket: String,
    pub role_name: String,
    pub audience: String,
    /// Tag keys whose value names a prefix the session may use.
    pub prefix_tags: Vec<String>,
    /// The trust policy refuses tokens without a source identity (`sts:SourceIdentity`).
    pub require_source_identity: bool,
}

impl AwsInputs {
    pub fn new(issuer: &str, account: &str, bucket: &str, role_name: &str) -> Result<Self, String> {
        let host = issuer
            .strip_prefix("https://")
            .or_else(|| issuer.strip_prefix("http://"))
            .ok_or("the issuer is an absolute https URL, for example https://broker.example.com")?;
        if host.is_empty() || issuer.ends_with('/') {
            return Err("the issuer has no host, or ends with a slash".into());
        }
        if !(account.is_empty()
            || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())))
        {
            return Err(
                "the account is 12 digits (or empty for an account-less cloud such as Ceph RGW)"
                    .into(),
            );
        }
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err("the bucket name is 3–63 characters of a-z, 0-9, '-' and '.'".into());
        }
        let role_ok = !role_name.is_empty()
            && role_name.len() <= 64
            && role_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
        if !role_ok {
            return Err("the role name is 1–64 characters of letters, digits and +=,.@_-".into());
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            account: account.to_owned(),
            bucket: bucket.to_owned(),
            role_name: role_name.to_owned(),
            audience: AUDIENCE_STS.to_owned(),
            prefix_tags: vec![USER_WALLET.to_owned(), ACTOR_OMNI.to_owned()],
            require_source_identity: false,
        })
    }

    /// Adds the grant-scope tag (issued for mints under a grant).
    pub fn with_scope(mut self) -> Self {
        self.prefix_tags.push(SCOPE.to_owned());
        self
    }

    /// Makes the trust policy require a source identity on every session.
    pub fn requiring_source_identity(mut self) -> Self {
        self.require_source_identity = true;
        self
    }

    /// `host[:port][/path]` of the issuer: IAM's name for the provider and its condition keys.
    pub fn provider_host(&self) -> &str {
        self.issuer
            .split_once("://")
            .map(|(_, h)| h)
            .unwrap_or(&self.issuer)
    }

    pub fn provider_arn(&self) -> String {
        format!(
            "arn:aws:iam::{}:oidc-provider/{}",
            self.account,
            self.provider_host()
        )
    }

    pub fn role_arn(&self) -> String {
        format!("arn:aws:iam::{}:role/{}", self.account, self.role_name)
    }
}

/// The role's trust policy: only the broker's provider, only with the right audience, only
/// tokens that carry the actor tag. It replaces any IAM-user principal; never both. It allows
/// `sts:SetSourceIdentity` (the tokens carry the actor as source identity, and STS refuses a
/// token with one unless the trust policy allows it) and, with `require_source_identity`,
/// refuses sessions without one.
pub fn trust_policy(i: &AwsInputs) -> Value {
    let mut like = serde_json::Map::new();
    // "The tag is present". AWS reads `Null: {key: "false"}` the same way, but Ceph RGW 16
    // evaluates every Null condition as "absent", which would admit untagged tokens and refuse
    // tagged ones; StringLike "*" means the same on both.
    like.insert(format!("aws:RequestTag/{ACTOR_OMNI}"), json!("*"));
    if i.require_source_identity {
        like.insert("sts:SourceIdentity".to_owned(), json!("*"));
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AgentKeysBrokerFederation",
            "Effect": "Allow",
            "Principal": { "Federated": i.provider_arn() },
            "Action": if i.account.is_empty() { TRUST_ACTIONS_ACCOUNTLESS } else { TRUST_ACTIONS },
            "Condition": {
                "StringEquals": { format!("{}:aud", i.provider_host()): i.audience },
                "StringLike": like
            }
        }]
    })
}

pub struct BucketPolicy;

impl BucketPolicy {
    /// The AWS policy: one ListBucket and one object statement per prefix tag, each naming the
    /// prefix through `${aws:PrincipalTag/<tag>}`.
    pub fn with_variables(i: &AwsInputs) -> Value {
        let mut statements = Vec::new();
        for tag in &i.prefix_tags {
            let var = format!("${{aws:PrincipalTag/{tag}}}");
            statements.push(list_statement(
                i,
                tag,
                json!({ "StringLike": { "s3:prefix": [format!("{var}/"), format!("{var}/*")] } }),
            ));
            statements.push(object_statement(
                i,
                tag,
                format!("arn:aws:s3:::{}/{var}/*", i.bucket),
                None,
            ));
        }
        json!({ "Version": "2012-10-17", "Statement": statements })
    }

    /// The same rules with every tag value written out, for clouds that cannot substitute
    /// policy variables in resources (Ceph RGW 16). `values` are `(tag, value)` pairs.
    pub fn expanded(i: &AwsInputs, values: &[(String, String)]) -> Value {
        let mut statements = Vec::new();
        for (n, (tag, value)) in values.iter().enumerate() {
            let gate = json!({ format!("aws:PrincipalTag/{tag}"): value });
            let sid = format!("{}{n}", sid_for(tag));
            let mut list = list_statement(
                i,
                tag,
                json!({ "StringEquals": gate.clone(), "StringLike": { "s3:prefix": [format!("{value}/"), format!("{value}/*")] } }),
            );
            list["Sid"] = json!(format!("{sid}List"));
            statements.push(list);
            let mut objects = object_statement(
                i,
                tag,
                format!("arn:aws:s3:::{}/{value}/*", i.bucket),
                Some(json!({ "StringEquals": gate })),
            );
            objects["Sid"] = json!(format!("{sid}Objects"));
            statements.push(objects);
        }
        json!({ "Version": "2012-10-17", "Statement": statements })
    }
}

fn sid_for(tag: &str) -> String {
    tag.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn list_statement(i: &AwsInputs, tag: &str, condition: Value) -> Value {
    json!({
        "Sid": format!("{}ListOwnPrefix", sid_for(tag)),
        "Effect": "Allow",
        "Principal": { "AWS": i.role_arn() },
        "Action": "s3:ListBucket",
        "Resource": format!("arn:aws:s3:::{}", i.bucket),
        "Condition": condition,
    })
}

fn object_statement(i: &AwsInputs, tag: &str, resource: String, condition: Option<Value>) -> Value {
    let mut s = json!({
        "Sid": format!("{}ObjectsInOwnPrefix", sid_for(tag)),
        "Effect": "Allow",
        "Principal": { "AWS": i.role_arn() },
        "Action": OBJECT_ACTIONS,
        "Resource": resource,
    });
    if let Some(c) = condition {
        s["Condition"] = c;
    }
    s
}

/// The provider registration, as an AWS CLI command.
pub fn provider_command(i: &AwsInputs) -> String {
    format!(
        "aws iam create-open-id-connect-provider --url {} --client-id-list {} --thumbprint-list <40-hex SHA-1 of the issuer's TLS root certificate>",
        i.issuer, i.audience
    )
}

/// Everything `policy aws` prints, as one JSON document.
pub fn aws_bundle(i: &AwsInputs) -> Value {
    json!({
        "oidc_provider": {
            "arn": i.provider_arn(),
            "url": i.issuer,
            "client_id": i.audience,
            "create_command": provider_command(i),
        },
        "role": {
            "arn": i.role_arn(),
            "trust_policy": trust_policy(i),
            "note": "The role must carry no S3 permission of its own (no inline or managed s3:* grant): \
                     IAM unions allows, so any broad grant on the role undoes the per-prefix isolation \
                     the bucket policy enforces.",
        },
        "bucket_policy": BucketPolicy::with_variables(i),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> AwsInputs {
        AwsInputs::new(
            "https://broker.example.com",
            "123456789012",
            "agentkeys-data",
            "agentkeys-data-role",
        )
        .unwrap()
    }

    #[test]
    fn trust_policy_federates_to_the_broker_only() {
        let t = trust_policy(&inputs());
        let s = &t["Statement"][0];
        assert_eq!(
            s["Principal"],
            json!({"Federated": "arn:aws:iam::123456789012:oidc-provider/broker.example.com"})
        );
        assert!(
            s["Principal"].get("AWS").is_none(),
            "never an IAM-user principal beside it"
        );
        assert_eq!(
            s["Action"],
            json!([
                "sts:AssumeRoleWithWebIdentity",
                "sts:TagSession",
                "sts:SetSourceIdentity"
            ])
        );
        assert!(
            s["Condition"]["StringLike"]
                .get("sts:SourceIdentity")
                .is_none()
        );
        let rgw = AwsInputs::new("http://127.0.0.1:1", "", "agentkeys-data", "r").unwrap();
        assert_eq!(
            trust_policy(&rgw)["Statement"][0]["Action"],
            json!(["sts:AssumeRoleWithWebIdentity", "sts:TagSession"]),
            "RGW refuses sts:SetSourceIdentity in a trust policy"
        );
        let required = trust_policy(&inputs().requiring_source_identity());
        assert_eq!(
            required["Statement"][0]["Condition"]["StringLike"]["sts:SourceIdentity"],
            "*"
        );
        assert_eq!(
            s["Condition"]["StringEquals"]["broker.example.com:aud"],
            "sts.amazonaws.com"
        );
        assert_eq!(
            s["Condition"]["StringLike"]["aws:RequestTag/agentkeys_actor_omni"],
            "*"
        );
        assert!(
            s["Condition"].get("Null").is_none(),
            "Ceph RGW misreads Null conditions"
        );
    }

    #[test]
    fn bucket_policy_separates_list_and_object_statements_per_tag() {
        let p = BucketPolicy::with_variables(&inputs().with_scope());
        let statements = p["Statement"].as_array().unwrap();
        assert_eq!(statements.len(), 6);
        for s in statements {
            let action = &s["Action"];
            if action == "s3:ListBucket" {
                assert_eq!(s["Resource"], "arn:aws:s3:::agentkeys-data");
                assert!(
                    s["Condition"]["StringLike"]["s3:prefix"][1]
                        .as_str()
                        .unwrap()
                        .ends_with("}/*")
                );
            } else {
                assert_eq!(action, &json!(OBJECT_ACTIONS));
                assert!(
                    s["Resource"]
                        .as_str()
                        .unwrap()
                        .starts_with("arn:aws:s3:::agentkeys-data/${aws:PrincipalTag/")
                );
                assert!(!action.as_array().unwrap().contains(&json!("s3:ListBucket")));
            }
            assert_eq!(
                s["Principal"]["AWS"],
                "arn:aws:iam::123456789012:role/agentkeys-data-role"
            );
        }
        assert_eq!(
            statements[0]["Condition"]["StringLike"]["s3:prefix"][1],
            "${aws:PrincipalTag/agentkeys_user_wallet}/*"
        );
        assert_eq!(
            statements[5]["Resource"],
            "arn:aws:s3:::agentkeys-data/${aws:PrincipalTag/agentkeys_scope}/*"
        );
    }

    #[test]
    fn account_less_clouds_and_ports() {
        let i = AwsInputs::new("http://127.0.0.1:17580", "", "bucket", "role").unwrap();
        assert_eq!(
            i.provider_arn(),
            "arn:aws:iam:::oidc-provider/127.0.0.1:17580"
        );
        assert_eq!(i.role_arn(), "arn:aws:iam:::role/role");
        let t = trust_policy(&i);
        assert_eq!(
            t["Statement"][0]["Condition"]["StringEquals"]["127.0.0.1:17580:aud"],
            "sts.amazonaws.com"
        );
        let e = BucketPolicy::expanded(&i, &[("agentkeys_user_wallet".into(), "0xabc".into())]);
        let s = &e["Statement"];
        assert_eq!(
            s[0]["Condition"]["StringEquals"]["aws:PrincipalTag/agentkeys_user_wallet"],
            "0xabc"
        );
        assert_eq!(
            s[0]["Condition"]["StringLike"]["s3:prefix"],
            json!(["0xabc/", "0xabc/*"])
        );
        assert_eq!(s[1]["Resource"], "arn:aws:s3:::bucket/0xabc/*");
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(AwsInputs::new("broker.example.com", "123456789012", "b-1", "r").is_err());
        assert!(AwsInputs::new("https://x/", "123456789012", "b-1", "r").is_err());
        assert!(AwsInputs::new("https://x", "1234", "b-1", "r").is_err());
        assert!(AwsInputs::new("https://x", "123456789012", "B", "r").is_err());
        assert!(AwsInputs::new("https://x", "123456789012", "bucket", "bad role").is_err());
    }
}
