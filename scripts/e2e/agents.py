"""The agents' everyday path, against the same broker and RGW lab as isolation.py (which calls
`run` near its end, with its own helpers and actors, so CI starts RGW no extra time):

  * the shortest durations: what RGW's STS and the broker accept;
  * `agentkeys exec --refresh`: boto3 in a child, with no credentials of its own, keeps working
    through several renewals (and through an agent session ended under it, renewed by device
    proof); the endpoint refuses requests with no token or a wrong one;
  * `agentkeys exec --web-identity`: boto3 calls STS itself from a 0600 token file that is
    rewritten before each token expires;
  * `agentkeys credentials serve`: the sidecar; after the master suspends the agent its next
    renewal fails with a clear error and the SDK gets no credentials; SIGTERM stops it cleanly.

Timing: the child of `exec --refresh` runs E2E_REFRESH_SECONDS (default 65) with credentials
renewed every 30 s (--duration 900 --refresh-margin 870); everything else runs meanwhile.
"""
import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.credentials import ContainerProvider
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "sdk_child.py")
REFRESH_SECONDS = float(os.environ.get("E2E_REFRESH_SECONDS", "65"))
STS_MIN = 900          # checked below: RGW refuses 899
MARGIN = 870           # renew when fewer than 870 s remain: every ~30 s


def jwt_claims(tok):
    part = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def http_get(url, headers=None, timeout=10):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


MCP_TOOLS = {"whoami", "grants", "request_access", "storage_list", "storage_get", "storage_put",
             "storage_delete"}
SECRET_SHAPES = [
    (re.compile(rb"eyJ[A-Za-z0-9_-]{10,}"), "a JWT or base64 JSON"),
    (re.compile(rb"(?<![A-Za-z0-9])[A-Z0-9]{20}(?![A-Za-z0-9])"), "an access key id"),
    (re.compile(rb"[A-Za-z0-9+/=]{120,}"), "a long base64 blob (session token)"),
    (re.compile(rb"(?i)secret_?access_?key|session_?token|aws_access_key_id"), "a credential field name"),
]


# Space, '+', '=', '&', '~', parentheses and a non-ASCII letter: each must be percent-encoded (or
# not) exactly as S3 signs it.
ODD_KEY = "mcp/odd name+ü=&~(1).txt"


def mcp_checks(h, B, bot1, bot2, role, sts_args):
    """`agentkeys mcp` as bot2, driven by the official Python MCP SDK over stdio. The server runs
    behind `tee`, so every byte the client received is kept for the secret scan."""
    import asyncio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    work = os.path.dirname(bot2.dir)
    received, errlog = os.path.join(work, "mcp-stdout.bin"), os.path.join(work, "mcp-stderr.log")
    argv = [h.AK_BIN, "mcp", "--role-arn", role, *sts_args, "--bucket", h.BUCKET, "--s3-endpoint", h.RGW]
    script = " ".join(shlex.quote(a) for a in argv) + f" 2>>{shlex.quote(errlog)} | tee -a {shlex.quote(received)}"
    params = StdioServerParameters(command="sh", args=["-c", script], env=bot2.env())
    results, bot2_creds = {}, {}
    big = "x" * (1024 * 1024 + 1)
    binary = bytes(range(256)) * 4

    async def session():
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as s:
                await s.initialize()
                results["tools"] = (await s.list_tools()).tools

                async def call(name, **args):
                    r = await s.call_tool(name, args)
                    text = "".join(getattr(c, "text", "") for c in r.content)
                    return bool(r.is_error), text
                results["whoami"] = await call("whoami")
                results["grants"] = await call("grants")
                results["put"] = await call("storage_put", key="mcp/note.txt", content="hello from mcp")
                # Where it landed, read with bot2's own credentials from the CLI.
                results["bot2_sees"] = h.s3_for(bot2_creds).get_object(
                    Bucket=h.BUCKET, Key=f"{bot2.wallet}/mcp/note.txt")["Body"].read()
                results["put_b64"] = await call("storage_put", key="mcp/bin.dat", encoding="base64",
                                                content=base64.b64encode(binary).decode())
                results["get"] = await call("storage_get", key="mcp/note.txt")
                results["get_b64"] = await call("storage_get", key="mcp/bin.dat", encoding="base64")
                results["get_bin_as_text"] = await call("storage_get", key="mcp/bin.dat")
                results["list"] = await call("storage_list", under="mcp/")
                # A key the URL must encode (signed as sent), then two pages of two.
                results["put_odd"] = await call("storage_put", key=ODD_KEY, content="odd")
                results["bot2_sees_odd"] = h.s3_for(bot2_creds).get_object(
                    Bucket=h.BUCKET, Key=f"{bot2.wallet}/{ODD_KEY}")["Body"].read()
                results["get_odd"] = await call("storage_get", key=ODD_KEY)
                results["page1"] = await call("storage_list", under="mcp/", max_keys=2)
                results["page2"] = await call("storage_list", under="mcp/", max_keys=2,
                                              start_after="mcp/note.txt")
                await call("storage_delete", key=ODD_KEY)
                results["delete"] = await call("storage_delete", key="mcp/note.txt")
                await call("storage_delete", key="mcp/bin.dat")
                results["list_after"] = await call("storage_list", under="mcp/")
                results["get_missing"] = await call("storage_get", key="mcp/note.txt")
                results["master"] = await call("storage_list", prefix=f"{B.wallet}/")
                results["master_get"] = await call("storage_get", prefix=f"{B.wallet}/", key="seed.txt")
                results["other_agent"] = await call("storage_get", prefix=f"{bot1.wallet}/", key="seed.txt")
                results["other_put"] = await call("storage_put", prefix=f"{bot1.wallet}/", key="evil.txt",
                                                  content="x")
                results["dotdot"] = await call("storage_get", key=f"../{B.wallet}/seed.txt")
                results["absolute"] = await call("storage_get", key=f"/{B.wallet}/seed.txt")
                results["too_big"] = await call("storage_put", key="big.txt", content=big)

    def run_session():
        r = bot2.cli("aws", "credentials", "--role-arn", role, "--format", "json", *sts_args)
        if r.returncode != 0:
            raise RuntimeError(f"bot2 aws credentials rc={r.returncode}: {h.short(r.stderr)}")
        bot2_creds.update(json.loads(r.stdout))
        t = time.monotonic()
        try:
            asyncio.run(asyncio.wait_for(session(), 120))
        except BaseExceptionGroup as e:          # anyio's task groups wrap the real error
            raise e.exceptions[0] from None
        return time.monotonic() - t

    def mcp_tools():
        secs = run_session()
        tools = {t.name: t for t in results["tools"]}
        problems = []
        if set(tools) != MCP_TOOLS:
            problems.append(f"tools {sorted(tools)}")
        for name, t in tools.items():
            if t.input_schema.get("type") != "object" or not t.description:
                problems.append(f"{name}: schema {t.input_schema.get('type')}, description {bool(t.description)}")
        put = tools.get("storage_put")
        if put and not {"key", "content"} <= set(put.input_schema.get("required", [])):
            problems.append(f"storage_put required {put.input_schema.get('required')}")
        return not problems, "; ".join(problems) or f"{len(tools)} tools with input schemas; session {secs:.1f} s"
    h.check("`agentkeys mcp` (bot2) under the Python MCP SDK: tools/list has the seven tools with input schemas",
            mcp_tools)
    if "whoami" not in results:
        return

    def ok_json(name):
        err, text = results[name]
        if err:
            raise AssertionError(f"{name}: tool error {text[:200]}")
        return json.loads(text)

    def whoami():
        w = ok_json("whoami")
        ok = w["own_prefix"] == f"{bot2.wallet}/" and w["kind"] == "agent" and w["bucket"] == h.BUCKET
        ok_json("grants")
        return ok, f"kind {w['kind']}, own_prefix {w['own_prefix'][:12]}…"
    h.check("mcp: whoami names the agent and its own prefix; grants answers", whoami)

    def round_trip():
        ok_json("put")
        ok_json("put_b64")
        got = ok_json("get")
        listed = sorted(o["key"] for o in ok_json("list")["objects"])
        b64 = base64.b64decode(ok_json("get_b64")["content"])
        problems = []
        if results["bot2_sees"] != b"hello from mcp":
            problems.append(f"object at <bot2>/mcp/note.txt is {results['bot2_sees'][:30]!r}")
        if got["content"] != "hello from mcp":
            problems.append(f"get {got['content'][:30]!r}")
        if b64 != binary:
            problems.append("base64 round trip differs")
        if listed != ["mcp/bin.dat", "mcp/note.txt"]:
            problems.append(f"list {listed}")
        if not results["get_bin_as_text"][0] or "base64" not in results["get_bin_as_text"][1]:
            problems.append(f"binary as text: {results['get_bin_as_text']}")
        ok_json("delete")
        if ok_json("list_after")["objects"]:
            problems.append("objects left after delete")
        # AccessDenied (not NoSuchKey) is S3's answer for a missing key to a caller that may not
        # list the whole bucket; the tool says so.
        if not results["get_missing"][0] or "no object with that key" not in results["get_missing"][1]:
            problems.append(f"get after delete: {results['get_missing']}")
        return not problems, "; ".join(problems) or "put text+base64, get, list, delete, 'no object' after delete"
    h.check("mcp: storage put/get/list/delete round trip under <bot2>/ (text and base64)", round_trip)

    def odd_key_and_pages():
        problems = []
        ok_json("put_odd")
        if results["bot2_sees_odd"] != b"odd" or ok_json("get_odd")["content"] != "odd":
            problems.append(f"{ODD_KEY!r}: boto3 reads {results['bot2_sees_odd'][:20]!r}, get {results['get_odd']}")
        for name, keys, truncated in (("page1", ["mcp/bin.dat", "mcp/note.txt"], True), ("page2", [ODD_KEY], False)):
            page = ok_json(name)
            got = [o["key"] for o in page["objects"]]
            if got != keys or page["truncated"] != truncated:
                problems.append(f"{name}: {got}, truncated {page['truncated']}")
        return not problems, "; ".join(problems) or f"{ODD_KEY!r} lands where boto3 reads it and reads back; " \
            "2 + 1 keys in two pages (truncated, then start_after)"
    h.check("mcp: a key the URL must encode round-trips, and listings page with max_keys and start_after",
            odd_key_and_pages)

    def refused_by_cloud():
        bad = {k: results[k] for k in ("master", "master_get", "other_agent", "other_put")
               if not (results[k][0] and "the cloud refused" in results[k][1] and "AccessDenied" in results[k][1])}
        return not bad, f"bad: {bad}" if bad else "master's prefix (list, get) and bot1's (get, put): the cloud " \
            "refused (AccessDenied)"
    h.check("mcp: bot2 asking for its master's prefix or bot1's gets the cloud's refusal as a tool error",
            refused_by_cloud)

    def refused_before():
        bad = {k: results[k] for k in ("dotdot", "absolute") if not (results[k][0] and "before any call" in results[k][1])}
        if not (results["too_big"][0] and "at most" in results["too_big"][1]):
            bad["too_big"] = results["too_big"]
        return not bad, f"bad: {bad}" if bad else "'..', absolute keys and a 1 MiB + 1 byte put refused before any call"
    h.check("mcp: '..', absolute keys and oversize bodies are refused before any call", refused_before)

    def no_secrets():
        with open(received, "rb") as f:
            data = f.read()
        with open(errlog, "rb") as f:
            data_err = f.read()
        session_token = json.load(open(os.path.join(bot2.config, "profiles", "default", "session.json")))[
            "session_token"].encode()
        # The test's own base64 content comes back from storage_get; it is not a secret.
        data = data.replace(base64.b64encode(binary), b"")
        found = []
        for blob, where in ((data, "stdout"), (data_err, "stderr")):
            if session_token in blob:
                found.append(f"broker session token in {where}")
            for rx, what in SECRET_SHAPES:
                m = rx.search(blob)
                if m:
                    found.append(f"{what} in {where}: {m.group(0)[:12]!r}…")
        return not found and len(data) > 1000, "; ".join(found) or \
            f"{len(data)} bytes from the server's stdout and {len(data_err)} from its stderr: no secret"
    h.check("mcp: every byte the client received (and the server's stderr) holds no key, secret, token or JWT",
            no_secrets)


SOURCE_IDENTITY = "https://aws.amazon.com/source_identity"
ROLE_SRCID = "agentkeys-e2e-set-source-identity"


def source_identity_checks(h, broker, A, bot2, role, measured):
    """The actor rides in the token as the STS source identity; what RGW does with it."""
    def claim():
        got = {}
        for actor in (A, bot2):
            c = jwt_claims(actor.cli("token", "--role-arn", role).stdout.strip())
            got[actor.name] = (c.get(SOURCE_IDENTITY), c.get("agentkeys_actor_omni"))
        ok = all(si == omni and si and re.fullmatch(r"[\w+=,.@-]{2,64}", si) for si, omni in got.values())
        return ok, "; ".join(f"{k}: {v[0][:16] if v[0] else v[0]}…" for k, v in got.items())
    h.check(f"tokens carry the actor omni as {SOURCE_IDENTITY} (AWS charset, <= 64 chars), masters and agents",
            claim)

    def rgw_accepts():
        r = h.assume(h.ROLE, A.cli("token", "--role-arn", role).stdout.strip())
        reported = r.get("SourceIdentity")
        measured["rgw_source_identity"] = reported
        return True, f"accepted as {r['AssumedRoleUser']['Arn']}; SourceIdentity in the answer: {reported!r}"
    h.check("RGW accepts a token with a source identity under the generated (RGW form of the) trust policy",
            rgw_accepts)

    def rgw_refuses_set_source_identity():
        # The RGW form of the trust policy (--account "") leaves sts:SetSourceIdentity out; this
        # is why: RGW 16 refuses a trust policy that names it.
        r = h.run([h.BROKER_BIN, "policy", "aws", "--issuer", h.ISSUER, "--account", "", "--bucket", h.BUCKET,
                   "--role-name", ROLE_SRCID, "--json"], h.clean_env(broker.home))
        if r.returncode != 0:
            return False, f"policy aws rc={r.returncode}: {h.short(r.stderr)}"
        doc = json.loads(r.stdout)["role"]["trust_policy"]
        st = doc["Statement"][0]
        if "sts:SetSourceIdentity" in st["Action"]:
            return False, "the RGW form names sts:SetSourceIdentity"
        st["Action"] = [*st["Action"], "sts:SetSourceIdentity"]
        iam = h.admin_client("iam")
        h.quiet(iam.delete_role, RoleName=ROLE_SRCID)
        try:
            iam.create_role(RoleName=ROLE_SRCID, AssumeRolePolicyDocument=h.compact(doc))
            h.quiet(iam.delete_role, RoleName=ROLE_SRCID)
            return False, "RGW now accepts sts:SetSourceIdentity: the RGW form can allow it too"
        except ClientError as e:
            measured["rgw_set_source_identity"] = h.err_str(e)
            return True, f"CreateRole refused ({h.err_str(e)}); the RGW form leaves the action out"
    h.check("RGW 16 refuses a trust policy naming sts:SetSourceIdentity (so `--account \"\"` omits it)",
            rgw_refuses_set_source_identity)


def run(h, broker, A, B, bot1, bot2):
    """h: the isolation module (check, info, helpers, constants)."""
    role = h.role_arn(h.ROLE)
    sts_args = ["--sts-endpoint", h.RGW, "--region", h.REGION]
    measured = {}

    # ------------------------------------------------------------------ shortest durations
    def sts_with(duration):
        tok = A.cli("token", "--role-arn", role)
        if tok.returncode != 0:
            raise RuntimeError(f"agentkeys token rc={tok.returncode}: {h.short(tok.stderr)}")
        sts = boto3.client("sts", endpoint_url=h.RGW, region_name=h.REGION,
                           # botocore checks DurationSeconds >= 900 itself; off, so RGW decides.
                           config=h.CFG.merge(Config(signature_version=UNSIGNED, parameter_validation=False)))
        return sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName=f"e2e-{uuid.uuid4().hex[:12]}",
                                                 WebIdentityToken=tok.stdout.strip(), DurationSeconds=duration)

    def rgw_minimum():
        try:
            sts_with(STS_MIN - 1)
            return False, f"RGW accepted DurationSeconds={STS_MIN - 1}"
        except ClientError as e:
            refused = h.err_str(e)
        got = sts_with(STS_MIN)["Credentials"]["Expiration"]
        left = (got - got.now(got.tzinfo)).total_seconds()
        measured["sts_min"] = STS_MIN
        return STS_MIN - 60 <= left <= STS_MIN + 5, \
            f"{STS_MIN - 1} refused ({refused}), {STS_MIN} accepted (expires in {left:.0f} s)"
    h.check(f"RGW STS: the shortest DurationSeconds is {STS_MIN} (899 refused)", rgw_minimum)

    def broker_minimum():
        c = jwt_claims(A.cli("token").stdout.strip())
        ttl = c["exp"] - c["iat"]
        r = h.run([h.BROKER_BIN, "serve", "--dev", "--oidc-jwt-ttl-seconds", "59", "--listen", "127.0.0.1:0",
                   "--data-dir", os.path.join(broker.home, "never")], h.clean_env(broker.home))
        measured["jwt_ttl"] = ttl
        return ttl == 60 and r.returncode == 2, f"this broker's JWT TTL {ttl} s; --oidc-jwt-ttl-seconds 59: rc={r.returncode}"
    h.check("broker: the shortest JWT TTL is 60 s (the harness runs with it; 59 is a usage error)", broker_minimum)

    # ------------------------------------------------------------------ source identity (SPEC §8, issue 10 part 3)
    source_identity_checks(h, broker, A, bot2, role, measured)

    # ------------------------------------------------------------------ exec --refresh (bot1), exec --web-identity (A)
    work = os.path.dirname(bot1.dir)
    stop_flag = os.path.join(work, "stop-refresh-child")
    child_py = [sys.executable, CHILD]
    t_refresh = time.time()
    refresh = subprocess.Popen(
        [h.AK_BIN, "exec", "--refresh", "--role-arn", role, *sts_args, "--duration", str(STS_MIN),
         "--refresh-margin", str(MARGIN), "--", *child_py, "container", str(REFRESH_SECONDS), h.BUCKET,
         f"{bot1.wallet}/", h.RGW, stop_flag],
        env=bot1.env(AWS_PROFILE="must-be-removed", AWS_ACCESS_KEY_ID="AKIASTALE", AWS_SECRET_ACCESS_KEY="stale"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wi_seconds = 50          # > 2/3 of the 60 s JWT: the token file is rewritten at least once
    web = subprocess.Popen(
        [h.AK_BIN, "exec", "--web-identity", "--role-arn", role, *sts_args, "--",
         *child_py, "web-identity", str(wi_seconds), h.BUCKET, f"{A.wallet}/", h.RGW],
        env=A.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Mid-run, bot1's session ends at the broker (as when it expires): the endpoint's next
    # renewal must get a new one by device proof.
    time.sleep(min(40, REFRESH_SECONDS / 3))
    ended = os.path.join(bot1.dir, "config-ended")
    shutil.copytree(bot1.config, ended)

    def end_session():
        r = bot1.cli("logout", config=ended)
        return r.returncode == 0, f"rc={r.returncode}: {h.short(r.stdout + r.stderr, 160)}"
    h.check("bot1's session is ended at the broker while `exec --refresh` runs (`agentkeys logout` from a copy)",
            end_session)

    try:
        wout, werr = web.communicate(timeout=wi_seconds + 60)
    except subprocess.TimeoutExpired:
        web.kill()
        wout, werr = web.communicate()

    def web_identity():
        if web.returncode != 0:
            return False, f"rc={web.returncode}: {h.short(werr)}"
        rep = json.loads(wout)
        env = rep["env"]
        problems = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
                    if env.get(k)]
        problems += [f"{k} unset" for k in ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME")
                     if not env.get(k)]
        files = rep["token_files"]
        if [f for f in files if f["mode"] != "0o600"]:
            problems.append(f"token file modes {[f['mode'] for f in files]}")
        if len(files) < 2:
            problems.append(f"token file never rewritten ({len(files)} version(s) in {rep['elapsed']} s)")
        if rep["ops_failed"] or not rep["ops_ok"]:
            problems.append(f"{rep['ops_ok']} ok, {rep['ops_failed']} failed: {rep['errors'][:2]}")
        leftover = [p for p in os.listdir(os.path.join(A.config, "profiles", "default"))
                    if p.startswith("web-identity-")]
        if leftover:
            problems.append(f"token file left behind: {leftover}")
        measured["web_identity_versions"] = len(files)
        return not problems, "; ".join(problems) or \
            f"{rep['ops_ok']} list+put rounds, token file 0600 rewritten at " \
            f"{[f['t'] for f in files[1:]]} s, removed on exit"
    h.check("A: `agentkeys exec --web-identity -- <boto3 child>`: the SDK calls STS itself from a 0600 token file "
            "kept fresh", web_identity)

    # While bot1's child still runs: the MCP server, as bot2.
    mcp_checks(h, B, bot1, bot2, role, sts_args)

    try:
        rout, rerr = refresh.communicate(timeout=REFRESH_SECONDS + 90)
    except subprocess.TimeoutExpired:
        refresh.kill()
        rout, rerr = refresh.communicate()

    def refresh_child():
        if refresh.returncode != 0:
            return False, f"rc={refresh.returncode}: {h.short(rerr, 600)}"
        rep = json.loads(rout)
        env, keys = rep["env"], rep["keys"]
        problems = [f"{k} is set" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                                             "AWS_WEB_IDENTITY_TOKEN_FILE") if env.get(k)]
        if not rep["uri"] or not rep["uri"].startswith("http://127.0.0.1:"):
            problems.append(f"AWS_CONTAINER_CREDENTIALS_FULL_URI={rep['uri']}")
        if rep["wallet"] != bot1.wallet:
            problems.append(f"AGENTKEYS_USER_WALLET={rep['wallet']}")
        if rep["ops_failed"]:
            problems.append(f"{rep['ops_failed']} failed rounds: {rep['errors'][:2]}")
        if len({k['key'] for k in keys}) < 2:
            problems.append(f"only {len(keys)} access key(s) in {rep['elapsed']} s")
        measured["refresh_keys"] = [k["t"] for k in keys]
        measured["first_credential"] = f"{rep['started_at'] - t_refresh:.2f} s"
        measured["refresh_elapsed"] = rep["elapsed"]
        return not problems, "; ".join(problems) or \
            f"{rep['ops_ok']} list+put rounds in {rep['elapsed']} s with {len(keys)} access keys " \
            f"(first used at {[k['t'] for k in keys]} s), never a failure"
    h.check(f"bot1: `agentkeys exec --refresh --duration {STS_MIN} --refresh-margin {MARGIN} -- <boto3 child>` "
            "keeps working across renewals with >= 2 access keys", refresh_child)

    def refresh_probes():
        if refresh.returncode != 0 or not rout.strip():
            return False, "no report from the child"
        p = json.loads(rout)["probes"]
        want = {"no_token": 401, "wrong_token": 403, "bearer_prefixed": 403}
        return p == want, f"{p}"
    h.check("the endpoint answers 401 without a token and 403 with a wrong one", refresh_probes)

    def device_renewal():
        ok = "signed in again with the device key" in rerr
        lines = [line for line in rerr.splitlines() if "device key" in line or "error" in line][:2]
        return ok, h.short(" | ".join(lines) or rerr, 300)
    h.check("bot1: the ended agent session was renewed by device proof during the run", device_renewal)

    # ------------------------------------------------------------------ credentials serve (bot1), suspension
    port = h.BROKER_PORT + 1
    serve = subprocess.Popen(
        [h.AK_BIN, "credentials", "serve", "--role-arn", role, *sts_args, "--duration", str(STS_MIN),
         "--refresh-margin", str(MARGIN), "--port", str(port)],
        env=bot1.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    exports = {}
    try:
        def serve_prints():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and "AGENTKEYS_USER_WALLET" not in exports:
                line = serve.stdout.readline()
                if not line:
                    break
                if line.startswith("export "):
                    k, _, v = line[len("export "):].strip().partition("=")
                    exports[k] = v.strip("'")
            uri = exports.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
            ok = uri == f"http://127.0.0.1:{port}/credentials" and len(exports.get(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN", "")) == 64 and exports.get("AGENTKEYS_USER_WALLET") == bot1.wallet
            return ok, f"URI {uri}, token {len(exports.get('AWS_CONTAINER_AUTHORIZATION_TOKEN', ''))} hex chars"
        h.check(f"bot1: `agentkeys credentials serve --port {port}` prints the two variables to export", serve_prints)
        uri, tok = exports.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"), exports.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")

        def serve_auth():
            got = (http_get(uri)[0], http_get(uri, {"Authorization": tok[:-1] + "x"})[0],
                   http_get(uri, {"Authorization": tok})[0])
            return got == (401, 403, 200), f"no token {got[0]}, wrong token {got[1]}, right token {got[2]}"
        h.check("serve: 401 without a token, 403 with a wrong one, 200 with the printed one", serve_auth)

        def provider():
            env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": uri, "AWS_CONTAINER_AUTHORIZATION_TOKEN": tok}
            return ContainerProvider(environ=env).load()

        def serve_sdk():
            creds = provider().get_frozen_credentials()
            s3 = boto3.client("s3", endpoint_url=h.RGW, region_name=h.REGION, config=h.CFG,
                              aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                              aws_session_token=creds.token)
            return True, h.list_prefix(s3, f"{bot1.wallet}/")
        h.check("serve: botocore's ContainerProvider gets credentials that list <bot1>/", serve_sdk)

        def suspended():
            r = A.cli("agents", "suspend", "bot1")
            if r.returncode != 0:
                return False, f"suspend rc={r.returncode}: {h.short(r.stderr)}"
            t = time.monotonic()
            status, body = 200, ""
            while status == 200 and time.monotonic() - t < MARGIN and time.monotonic() - t < 60:
                status, body = http_get(uri, {"Authorization": tok})
                if status == 200:
                    time.sleep(2)
            try:
                provider()
                sdk = "the SDK still got credentials"
            except Exception as e:  # noqa: BLE001 - any failure to load is what we want
                sdk = f"SDK: {type(e).__name__}"
            ok = status == 503 and "agent_suspended" in body and sdk.startswith("SDK:")
            return ok, f"after {time.monotonic() - t:.0f} s: HTTP {status} {h.short(body, 220)}; {sdk}"
        h.check("serve: after `agentkeys agents suspend bot1` the next renewal fails (503, agent_suspended) "
                "and the SDK gets no credentials", suspended)
        r = A.cli("agents", "resume", "bot1")
        if r.returncode != 0:
            h.info(f"resume bot1 failed: {h.short(r.stderr)}")

        def sigterm():
            serve.send_signal(signal.SIGTERM)          # by PID: the process we started
            rc = serve.wait(10)
            try:
                http_get(uri, {"Authorization": tok}, timeout=2)
                closed = False
            except OSError:
                closed = True
            return rc == 0 and closed, f"rc={rc}, port {'closed' if closed else 'still open'}"
        h.check("serve: SIGTERM stops it cleanly (exit 0, port closed)", sigterm)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait(5)
    first = measured.get("refresh_keys") or []
    h.info(f"refresh measured: STS {measured.get('sts_min')} s, JWT {measured.get('jwt_ttl')} s, margin {MARGIN} s; "
           f"access keys first used at {first} s of a {measured.get('refresh_elapsed')} s run; "
           f"exec --refresh to child start with credentials: {measured.get('first_credential', 'n/a')}; "
           f"web-identity token versions {measured.get('web_identity_versions')}")
