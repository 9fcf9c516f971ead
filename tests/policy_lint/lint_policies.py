#!/usr/bin/env python3
"""Lints the cloud policies `agentkeys-broker policy aws` prints with parliament, an IAM policy
linter we did not write. Prints one line per check and ends with `N passed, N failed`.

Usage: lint_policies.py PATH/TO/agentkeys-broker
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from parliament import analyze_policy_string

# Findings parliament raises on every role trust policy, because it reads each document as an
# identity policy: a trust policy has no Resource, and parliament knows only a fixed list of
# federation sources (Cognito, Google, ...), not a customer's own OIDC issuer.
TRUST_POLICY_FALSE_POSITIVES = {
    ("UNKNOWN_FEDERATION_SOURCE", None),
    ("MALFORMED", "Statement contains neither Resource nor NotResource"),
}

results = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}{' -- ' + detail if detail else ''}", flush=True)


def findings(doc):
    policy = analyze_policy_string(json.dumps(doc), include_community_auditors=True, ignore_private_auditors=True)
    return [(f.issue, f.detail if isinstance(f.detail, str) else None, f.detail) for f in policy.findings]


def generate(broker, out_dir, *extra):
    subprocess.run(
        [broker, "policy", "aws", "--issuer", "https://broker.example.com", "--account", "123456789012",
         "--bucket", "agentkeys-data", "--role-name", "agentkeys-data-role", "--out-dir", out_dir, *extra],
        check=True, stdout=subprocess.DEVNULL, timeout=60,
    )
    return {name: json.loads(Path(out_dir, f"{name}.json").read_text()) for name in ("trust-policy", "bucket-policy")}


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    broker = sys.argv[1]

    # The linter is live: a policy with a known mistake is flagged.
    broken = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                      "Resource": "arn:aws:s3:::agentkeys-data"}]}
    check("control: parliament flags s3:GetObject on a bucket ARN", any(f[0] == "RESOURCE_MISMATCH" for f in findings(broken)))

    for label, extra in [("default", []), ("--with-grants", ["--with-grants"]),
                         ("--require-source-identity", ["--require-source-identity"])]:
        with tempfile.TemporaryDirectory() as out:
            docs = generate(broker, out, *extra)
        bucket = findings(docs["bucket-policy"])
        check(f"bucket policy ({label}) has no findings", not bucket, str(bucket))
        trust = [f for f in findings(docs["trust-policy"]) if (f[0], f[1]) not in TRUST_POLICY_FALSE_POSITIVES
                 and (f[0], None) not in TRUST_POLICY_FALSE_POSITIVES]
        check(f"trust policy ({label}) has no findings beyond the known trust-policy false positives", not trust, str(trust))
        actions = docs["trust-policy"]["Statement"][0]["Action"]
        check(f"trust policy ({label}) allows sts:SetSourceIdentity", "sts:SetSourceIdentity" in actions, str(actions))
        required = docs["trust-policy"]["Statement"][0]["Condition"].get("StringLike", {}).get("sts:SourceIdentity")
        want = "*" if "--require-source-identity" in extra else None
        check(f"trust policy ({label}) {'requires' if want else 'does not require'} a source identity",
              required == want, str(required))

    print(f"{results['passed']} passed, {results['failed']} failed")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
