#!/usr/bin/env python3
"""A long-running "agent" for the refresh checks in agents.py: boto3 with no credentials of its
own, started by `agentkeys exec --refresh` or `agentkeys exec --web-identity`.

    sdk_child.py MODE SECONDS BUCKET PREFIX ENDPOINT [FLAG_FILE]

MODE is `container` or `web-identity`. For SECONDS it lists and writes under PREFIX every few
seconds with one boto3 client built once (its credential chain must find the endpoint or the
token file by itself) and records which access key each request used. In `container` mode it
also probes the endpoint without and with a wrong token. In `web-identity` mode it records the
token file's mode and content hashes. It stops early once FLAG_FILE exists. Prints one JSON
document on stdout; exit status 0 unless it could not run at all.
"""
import hashlib
import json
import os
import stat
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.config import Config

mode, seconds, bucket, prefix, endpoint = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
flag_file = sys.argv[6] if len(sys.argv) > 6 else None

report = {
    "started_at": time.time(),
    "env": {k: ("set" if os.environ.get(k) else None) for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME")},
    "wallet": os.environ.get("AGENTKEYS_USER_WALLET"),
    "uri": os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    "keys": [], "ops_ok": 0, "ops_failed": 0, "errors": [], "probes": {}, "token_files": [],
}


def probe(headers):
    req = urllib.request.Request(report["uri"], headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


if mode == "container" and report["uri"]:
    report["probes"]["no_token"] = probe({})
    report["probes"]["wrong_token"] = probe({"Authorization": "0" * 64})
    report["probes"]["bearer_prefixed"] = probe(
        {"Authorization": "Bearer " + os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "")})


def token_file_state():
    path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    if not path:
        return None
    st = os.stat(path)
    with open(path, "rb") as f:
        return {"mode": oct(stat.S_IMODE(st.st_mode)), "sha": hashlib.sha256(f.read()).hexdigest()[:16]}


session = boto3.session.Session(region_name=os.environ.get("AWS_REGION"))
s3 = session.client("s3", endpoint_url=endpoint,
                    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
start = time.monotonic()
n = 0
while time.monotonic() - start < seconds:
    if flag_file and os.path.exists(flag_file):
        break
    try:
        s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
        s3.put_object(Bucket=bucket, Key=f"{prefix}sdk-child-{mode}.txt", Body=f"write {n}".encode())
        report["ops_ok"] += 1
        # The credentials the client signs with now (botocore refreshes them as needed).
        key = session.get_credentials().get_frozen_credentials().access_key
        if not report["keys"] or report["keys"][-1]["key"] != key:
            report["keys"].append({"key": key, "t": round(time.monotonic() - start, 1)})
    except Exception as e:  # noqa: BLE001 - recorded and reported, the loop goes on
        report["ops_failed"] += 1
        report["errors"].append(f"{type(e).__name__}: {e}"[:300])
    if mode == "web-identity":
        tf = token_file_state()
        if tf and (not report["token_files"] or report["token_files"][-1]["sha"] != tf["sha"]):
            report["token_files"].append({**tf, "t": round(time.monotonic() - start, 1)})
    n += 1
    time.sleep(2)
report["elapsed"] = round(time.monotonic() - start, 1)
print(json.dumps(report), flush=True)
