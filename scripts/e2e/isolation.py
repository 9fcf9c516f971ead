#!/usr/bin/env python3
"""End-to-end isolation test: the real broker, the real `agentkeys` CLI, Ceph RGW as S3 + STS.

Run by scripts/e2e/run.sh (which brings RGW up and down). It:
  * starts `agentkeys-broker serve --dev` with no AWS_* variable and an empty HOME, and checks
    that from /proc;
  * registers the broker as RGW's OIDC provider and applies the trust and bucket policies that
    `agentkeys-broker policy aws` prints (RGW form: --account "" and --expand per wallet);
  * signs in two masters with `agentkeys login wallet` and proves, through the CLI's AWS
    commands, that each one reaches its own prefix and nothing else;
  * pairs an agent to each master through the CLI (`agentkeys agent pair` on the agent's side,
    `agentkeys agents approve` on the master's) and proves that an agent reaches its own prefix
    only (not its master's, not the other agent's), and cannot mint once suspended;
  * has master A grant bot1 its `inbox/` (`agentkeys grants create`) and proves that credentials
    minted with `--grant` reach `<A>/inbox/` and nothing else of A's, and that a revoked grant
    mints nothing;
  * has bot1 ask for `inbox/` again (`agentkeys grants request`), A approve it with a wallet
    signature (`agentkeys requests approve`), and proves the grant it receives reaches
    `<A>/inbox/` only, for exactly its uses;
  * checks that STS refuses tokens that differ from a good one in exactly one property;
  * ends with `agentkeys-broker audit verify`.

The broker's store is SQLite in its data dir, or, when E2E_DATABASE_URL names a PostgreSQL
database, a fresh schema `e2e_<random>` in it (made with psql, dropped after a passing run) with
the signing keys sealed under a key-encryption key the harness writes into the work dir.

Prints one line per check (PASS / FAIL / SKIP) and ends with `N passed, N failed[, N skipped]`.
Exit status 1 if anything failed. A check whose CLI command does not exist FAILs; with
E2E_STRICT=0 it is SKIPped instead (for a client built before those commands).

Environment (run.sh sets the first five):
  E2E_RGW_ENDPOINT, E2E_RGW_ADMIN_ACCESS_KEY, E2E_RGW_ADMIN_SECRET_KEY  the RGW lab
  AGENTKEYS_BROKER_BIN, AGENTKEYS_BIN                                   the binaries under test
  E2E_BROKER_PORT [17600]  E2E_WORK_ROOT [/var/tmp]  E2E_KEEP_WORK [0]  E2E_STRICT [1]
  E2E_DATABASE_URL [unset: SQLite]  postgres://USER@HOST:PORT/DB; needs `psql` on PATH
"""
import base64
import datetime as dt
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
import uuid

import boto3
import jwt
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RGW = os.environ["E2E_RGW_ENDPOINT"].rstrip("/")
ADMIN_AK = os.environ["E2E_RGW_ADMIN_ACCESS_KEY"]
ADMIN_SK = os.environ["E2E_RGW_ADMIN_SECRET_KEY"]
BROKER_BIN = os.path.abspath(os.environ["AGENTKEYS_BROKER_BIN"])
AK_BIN = os.path.abspath(os.environ["AGENTKEYS_BIN"])
BROKER_PORT = int(os.environ.get("E2E_BROKER_PORT", "17600"))
STRICT = os.environ.get("E2E_STRICT", "1") != "0"
DATABASE_URL = os.environ.get("E2E_DATABASE_URL", "")   # a postgres URL: the broker runs on PostgreSQL
AWS_CLI = os.path.join(os.path.dirname(sys.executable), "aws")   # the venv's AWS CLI

ISSUER = f"http://127.0.0.1:{BROKER_PORT}"
REGION = "us-east-1"
BUCKET = "agentkeys-e2e"
ROLE = "agentkeys-e2e-data"                  # generated trust policy, no S3 grant of its own
ROLE_NOTAG = "agentkeys-e2e-notagsession"    # same trust without sts:TagSession
ROLE_BROAD = "agentkeys-e2e-broad"           # generated trust + a broad s3:* grant (the old mistake)
STRANGER = "0xdeadbeef"
AUD = "sts.amazonaws.com"
TAGS_CLAIM = "https://aws.amazon.com/tags"
CMD_TIMEOUT = 60


def role_arn(name):
    return f"arn:aws:iam:::role/{name}"      # RGW ARNs carry no account id


# ------------------------------------------------------------------------------ reporting

class Skip(Exception):
    """The check cannot run yet (a CLI command from the contract does not exist)."""


RESULTS = {"pass": 0, "fail": 0, "skip": 0}
PENDING = []                                 # names of skipped checks, for the summary


def check(name, fn):
    """Run fn() -> (ok, detail); print one line. Exceptions are failures, Skip is a skip."""
    t = time.monotonic()
    try:
        ok, detail = fn()
    except Skip as e:
        if STRICT:
            ok, detail = False, f"{e} (E2E_STRICT=0 would skip this)"
        else:
            RESULTS["skip"] += 1
            PENDING.append(name)
            print(f"SKIP {name} -- {e}", flush=True)
            return None
    except Exception as e:  # noqa: BLE001 - any error is this check's failure, not the run's
        ok, detail = False, f"{type(e).__name__}: {e}"
    RESULTS["pass" if ok else "fail"] += 1
    ms = (time.monotonic() - t) * 1000
    print(f"{'PASS' if ok else 'FAIL'} {name}{' -- ' + detail if detail else ''} [{ms:.0f} ms]", flush=True)
    return ok


def info(msg):
    print(f"  .. {msg}", flush=True)


# ------------------------------------------------------------------------------ processes

def clean_env(home, **extra):
    """The caller's environment without any AWS_*, BROKER_* or AGENTKEYS_* variable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "BROKER_", "AGENTKEYS_"))}
    env["HOME"] = home
    env.pop("XDG_CONFIG_HOME", None)
    env.update(extra)
    return env


def run(argv, env, timeout=CMD_TIMEOUT):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def short(text, n=300):
    text = " ".join((text or "").split())
    return text if len(text) <= n else text[:n] + "…"


def port_busy(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


# ------------------------------------------------------------------------------ PostgreSQL store

SEALED_V1 = b"AKS1"        # crates/agentkeys-broker/src/keys.rs, Kek::seal
KEK_ID_LEN = 8
NONCE_LEN = 12


def kek_id(kek):
    """The KEK's fingerprint as a sealed key carries it: the first 8 bytes of SHA-256 of the key."""
    return hashlib.sha256(kek).digest()[:KEK_ID_LEN]


def unseal(kek, kid, sealed):
    """The PKCS#8 DER inside a sealed private key: b"AKS1" ‖ KEK id (8) ‖ nonce (12) ‖ AES-256-GCM
    ciphertext with its 16-byte tag, associated data = the kid. Independent of the broker's code."""
    if len(kek) != 32:
        raise ValueError(f"the key-encryption key has {len(kek)} bytes, not 32")
    if not sealed.startswith(SEALED_V1):
        raise ValueError(f"sealed key for {kid} does not start with {SEALED_V1!r}")
    rest = sealed[len(SEALED_V1):]
    if len(rest) < KEK_ID_LEN + NONCE_LEN + 16:
        raise ValueError(f"sealed key for {kid} is truncated ({len(sealed)} bytes)")
    sealed_id, nonce, ciphertext = rest[:KEK_ID_LEN], rest[KEK_ID_LEN:KEK_ID_LEN + NONCE_LEN], rest[KEK_ID_LEN + NONCE_LEN:]
    if sealed_id != kek_id(kek):
        raise ValueError(f"sealed key for {kid} is under KEK {sealed_id.hex()}, not {kek_id(kek).hex()}")
    return AESGCM(kek).decrypt(nonce, ciphertext, kid.encode())   # InvalidTag if tampered / another kid


def with_search_path(url, schema):
    """The URL with libpq's `options=-csearch_path=SCHEMA` (as the Rust tests' test_database)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def redact(url):
    """The URL without a password, for printing."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
    return url


def psql(url, sql, timeout=CMD_TIMEOUT):
    """One statement through psql (unaligned, tuples only); its stdout."""
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-Atc", sql, url], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RuntimeError(f"psql {sql!r} on {redact(url)}: rc={r.returncode}: {short(r.stderr)}")
    return r.stdout


class Broker:
    def __init__(self, work):
        self.data = os.path.join(work, "broker-data")
        self.home = os.path.join(work, "broker-home")
        os.makedirs(self.home)
        self.log_path = os.path.join(work, "broker.log")
        self.proc = None
        # PostgreSQL only (see start): the schema, its URL and the key-encryption key file, which
        # is in the work dir but outside the data dir (the broker refuses a KEK inside it).
        self.schema = self.database_url = None
        self.kek_path = os.path.join(work, "kek")

    @property
    def postgres(self):
        return bool(DATABASE_URL)

    def backend(self):
        if self.postgres:
            return f"PostgreSQL, schema {self.schema} in {redact(DATABASE_URL)}, keys sealed under KEK {self.kek_id_hex()}"
        return f"SQLite, {os.path.join(self.data, 'broker.db')}, key files in {os.path.join(self.data, 'keys')}"

    def kek_id_hex(self):
        return kek_id(self.kek()).hex() if os.path.exists(self.kek_path) else "(none yet)"

    def kek(self):
        with open(self.kek_path, "rb") as f:
            return base64.b64decode(f.read().strip(), validate=True)

    def store_env(self):
        """BROKER_* variables that select the store: none on SQLite (the data dir says it all)."""
        if not self.postgres:
            return {}
        return {"BROKER_DATABASE_URL": self.database_url, "BROKER_KEY_ENCRYPTION_KEY_FILE": self.kek_path}

    def prepare_postgres(self):
        """A fresh schema (so a run never sees an earlier run's rows) and a new 0600 KEK file."""
        if not DATABASE_URL.startswith(("postgres://", "postgresql://")):
            raise SystemExit(f"E2E_DATABASE_URL must be a postgres:// URL, not {redact(DATABASE_URL)!r}")
        if shutil.which("psql") is None:
            raise SystemExit("E2E_DATABASE_URL is set but psql is not on PATH (apt-get install postgresql-client)")
        self.schema = f"e2e_{uuid.uuid4().hex[:16]}"
        psql(DATABASE_URL, f"CREATE SCHEMA {self.schema}")
        self.database_url = with_search_path(DATABASE_URL, self.schema)
        fd = os.open(self.kek_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode() + "\n")

    def drop_schema(self):
        if self.postgres and self.schema:
            psql(DATABASE_URL, f"DROP SCHEMA {self.schema} CASCADE")

    def start(self):
        if port_busy(BROKER_PORT):
            raise SystemExit(f"127.0.0.1:{BROKER_PORT} is already in use (set E2E_BROKER_PORT)")
        if self.postgres:
            self.prepare_postgres()
        env = clean_env(self.home, BROKER_AUDIENCES=f"{AUD},wrong-audience", BROKER_LOG_FORMAT="text",
                        BROKER_OIDC_JWT_TTL_SECONDS="60",
                        NO_COLOR="1", **self.store_env())
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [BROKER_BIN, "serve", "--dev", "--listen", f"127.0.0.1:{BROKER_PORT}", "--data-dir", self.data],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.home)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{ISSUER}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"broker not ready after 30 s:\n{self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()                       # by PID: the process we started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self, n=20):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def environ(self):
        with open(f"/proc/{self.proc.pid}/environ", "rb") as f:
            items = [x.decode(errors="replace") for x in f.read().split(b"\0") if x]
        return dict(x.split("=", 1) if "=" in x else (x, "") for x in items)

    def cli(self, *args):
        """`agentkeys-broker ARGS` on this broker's store (data dir, and database URL and KEK on PostgreSQL)."""
        return run([BROKER_BIN, *args, "--data-dir", self.data], clean_env(self.home, **self.store_env()))

    def mint_count(self):
        """Successful mints in the audit log, read through `agentkeys-broker audit export` (NDJSON,
        one event a line), which reads either store."""
        r = self.cli("audit", "export")
        if r.returncode != 0:
            raise RuntimeError(f"audit export rc={r.returncode}: {short(r.stderr)}")
        events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        return sum(1 for e in events if e.get("kind") == "mint" and e.get("outcome") == "ok")

    def signing_key(self, kid):
        if self.postgres:
            if not all(c.isalnum() or c in "-_" for c in kid):
                raise ValueError(f"unexpected kid {kid!r}")
            out = psql(self.database_url,
                       f"SELECT encode(sealed_private_key,'hex') FROM signing_keys WHERE kid='{kid}'").strip()
            if not out:
                raise RuntimeError(f"no sealed private key for {kid} in signing_keys")
            return serialization.load_der_private_key(unseal(self.kek(), kid, bytes.fromhex(out)), None)
        with open(os.path.join(self.data, "keys", f"{kid}.pk8"), "rb") as f:
            der = f.read()
        try:
            return serialization.load_der_private_key(der, None)
        except ValueError:
            return serialization.load_pem_private_key(der, None)


class Actor:
    """A master or an agent with its own config dir and HOME, driven through the real CLI.

    `wallet` is the value of the actor's agentkeys_user_wallet tag, hence its S3 prefix: a
    master's wallet, or an agent's own omni (SPEC §5.2: agents never carry their master's wallet).
    """

    def __init__(self, work, name):
        self.name = name
        self.dir = os.path.join(work, f"actor-{name}")
        self.home = os.path.join(self.dir, "home")
        self.config = os.path.join(self.dir, "config")
        self.key = os.path.join(self.dir, "wallet.key")
        os.makedirs(self.home)
        self.wallet = None

    def env(self, config=None, **extra):
        return clean_env(self.home, AGENTKEYS_CONFIG_DIR=config or self.config, **extra)

    def cli(self, *args, config=None, timeout=CMD_TIMEOUT, **extra):
        return run([AK_BIN, *args], self.env(config, **extra), timeout=timeout)


# ------------------------------------------------------------------------------ AWS helpers

CFG = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5, read_timeout=30,
             s3={"addressing_style": "path"})


def admin_client(service):
    return boto3.client(service, endpoint_url=RGW, region_name=REGION, config=CFG,
                        aws_access_key_id=ADMIN_AK, aws_secret_access_key=ADMIN_SK)


def s3_for(creds):
    return boto3.client("s3", endpoint_url=RGW, region_name=REGION, config=CFG,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                        aws_session_token=creds["SessionToken"])


def assume(role, token):
    """AssumeRoleWithWebIdentity with no AWS credentials at all (unsigned), as a client does."""
    sts = boto3.client("sts", endpoint_url=RGW, region_name=REGION,
                       config=CFG.merge(Config(signature_version=UNSIGNED)))
    return sts.assume_role_with_web_identity(RoleArn=role_arn(role), RoleSessionName=f"e2e-{uuid.uuid4().hex[:12]}",
                                             WebIdentityToken=token, DurationSeconds=900)


def err_str(e):
    r = e.response
    return f"HTTP {r.get('ResponseMetadata', {}).get('HTTPStatusCode')} {r.get('Error', {}).get('Code')}"


def compact(doc):
    # RGW 16.2 does not decode '+' in form bodies and botocore encodes spaces as '+'.
    return json.dumps(doc, separators=(",", ":"))


def quiet(fn, *a, **kw):
    try:
        fn(*a, **kw)
    except (ClientError, BotoCoreError):  # RGW answers some NoSuchEntity cases with malformed XML
        pass


def allowed(op):
    def fn():
        try:
            return True, op()
        except ClientError as e:
            return False, err_str(e)
    return fn


def denied(op):
    """Passes only on HTTP 403 AccessDenied; success or any other error fails."""
    def fn():
        try:
            op()
            return False, "was ALLOWED"
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = e.response.get("Error", {}).get("Code")
            return status == 403 and code == "AccessDenied", err_str(e)
    return fn


def sts_rejects(role, token_fn):
    def fn():
        token = token_fn()
        try:
            r = assume(role, token)
            return False, f"was ACCEPTED as {r['AssumedRoleUser']['Arn']}"
        except ClientError as e:
            return True, f"rejected ({err_str(e)})"
    return fn


def list_prefix(s3, prefix):
    r = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, Delimiter="/")
    return f"{r.get('KeyCount', 0)} keys"


def rgw_trust(doc):
    """Replace `Null: {key: "false"}` by `StringLike: {key: "*"}` (see the comment at the call)."""
    rewrites = []
    for st in doc.get("Statement", []):
        cond = st.get("Condition", {})
        null = cond.pop("Null", None)
        for key, val in (null or {}).items():
            if str(val).lower() != "false":
                raise SystemExit(f"generated trust policy has Null {key}={val}; the harness only knows 'false'")
            cond.setdefault("StringLike", {})[key] = "*"
            rewrites.append(f"Null {{{key}: {val}}}")
    return doc, rewrites


def omni(identity_type, value):
    """SPEC §3, computed independently of the broker."""
    return hashlib.sha256(f"agentkeys{identity_type}{value}".encode()).hexdigest()


def agent_omni(master_wallet, label):
    return hashlib.sha256(f"agentkeys:agent{omni('evm', master_wallet)}//{label}".encode()).hexdigest()


def pair_agent(master, agent, label):
    """`agentkeys agent init` + `agentkeys agent pair` as `agent` (a child process whose stderr
    shows the code) while `master` runs `agentkeys agents approve CODE --label LABEL`."""
    need("agent", "pair")
    need("agents", "approve")
    r = agent.cli("agent", "init")
    if r.returncode != 0:
        return False, f"agent init rc={r.returncode}: {short(r.stderr)}"
    device = r.stdout.strip()
    proc = subprocess.Popen([AK_BIN, "agent", "pair", "--json", "--timeout", "60", "--broker-url", ISSUER],
                            env=agent.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        code, seen = None, []
        while code is None:
            line = proc.stderr.readline()            # the CLI gives up by itself after --timeout
            if not line:
                return False, f"no pairing code on stderr (rc={proc.wait(10)}): {short(''.join(seen))}"
            seen.append(line)
            if line.startswith("Pairing code: "):
                code = line.split()[2]
        r = master.cli("agents", "approve", code, "--label", label)
        if r.returncode != 0:
            return False, f"agents approve {code} rc={r.returncode}: {short(r.stderr)}"
        out, err = proc.communicate(timeout=CMD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()                                  # by PID: the process we started
            proc.wait(5)
    if proc.returncode != 0:
        return False, f"agent pair rc={proc.returncode}: {short(err)}"
    doc = json.loads(out)
    want = agent_omni(master.wallet, label)
    problems = [f"{k}={doc.get(k)!r}" for k, v in (("agent_omni", want), ("label", label), ("device_address", device))
                if doc.get(k) != v]
    if not problems:
        agent.wallet = want
    return not problems, "; ".join(problems) or f"code {code}, agent omni {want[:16]}…, device {device}"


def b64url_json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# ------------------------------------------------------------------------------ CLI contract

HELP_CACHE = {}


def cli_has(*words):
    """True when `agentkeys WORDS... --help` exists (clap exits 2 on an unknown subcommand)."""
    if words not in HELP_CACHE:
        r = run([AK_BIN, *words, "--help"], clean_env(tempfile.gettempdir()))
        HELP_CACHE[words] = r.returncode == 0
    return HELP_CACHE[words]


def need(*words):
    if not cli_has(*words):
        raise Skip(f"`agentkeys {' '.join(words)}` does not exist yet")


def parse_creds_json(out):
    doc = json.loads(out)
    missing = [k for k in ("Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration") if k not in doc]
    return doc, missing


def parse_exports(out):
    env = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("export "):
            for word in shlex.split(line[len("export "):]):
                k, _, v = word.partition("=")
                env[k] = v
    return env


def expires_in(expiration):
    exp = dt.datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    return (exp - dt.datetime.now(dt.timezone.utc)).total_seconds()


# ------------------------------------------------------------------------------ the test

def main():
    t_start = time.monotonic()
    root = os.environ.get("E2E_WORK_ROOT", "/var/tmp")
    work = tempfile.mkdtemp(prefix="agentkeys-e2e.", dir=root)
    broker = Broker(work)
    ok, aborted = False, None
    try:
        ok = body(work, broker)
    except BaseException as e:  # noqa: BLE001 - report a broken setup as a failed check, then the summary
        aborted = e
        RESULTS["fail"] += 1
        detail = f"exit {e.code}" if isinstance(e, SystemExit) and isinstance(e.code, int) else f"{type(e).__name__}: {e}"
        print(f"FAIL harness aborted -- {short(detail, 2000)}", flush=True)
        if not isinstance(e, (SystemExit, KeyboardInterrupt)):
            traceback.print_exc()
    finally:
        broker.stop()
        if ok and os.environ.get("E2E_KEEP_WORK", "0") != "1":
            shutil.rmtree(work, ignore_errors=True)
            try:
                broker.drop_schema()
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                print(f"could not drop schema {broker.schema}: {e}", flush=True)
        else:
            print(f"work dir kept: {work} (broker log: {broker.log_path})", flush=True)
            if broker.schema:
                print(f"schema kept: {broker.schema} in {redact(DATABASE_URL)}", flush=True)
            if not ok and broker.proc is not None:
                print("broker log tail:\n" + broker.log_tail(), flush=True)
    print(f"store backend: {'PostgreSQL' if broker.postgres else 'SQLite'}", flush=True)
    print(f"test wall time {time.monotonic() - t_start:.1f}s", flush=True)
    if PENDING:
        print(f"waiting on CLI commands: {len(PENDING)} check(s) skipped", flush=True)
    summary = f"{RESULTS['pass']} passed, {RESULTS['fail']} failed"
    if RESULTS["skip"]:
        summary += f", {RESULTS['skip']} skipped"
    print(summary, flush=True)
    if isinstance(aborted, SystemExit) and isinstance(aborted.code, int) and aborted.code > 1:
        return aborted.code                          # e.g. 143 after SIGTERM
    return 0 if ok else 1


def body(work, broker):
    t0 = time.monotonic()
    broker.start()
    info(f"broker {ISSUER} up in {time.monotonic() - t0:.1f}s (pid {broker.proc.pid}, data {broker.data})")
    info(f"store backend: {broker.backend()}")

    # -------------------------------------------------------------- 1. the broker holds no AWS principal
    def broker_env():
        env = broker.environ()
        exe = os.readlink(f"/proc/{broker.proc.pid}/exe")
        if os.path.realpath(exe) != os.path.realpath(BROKER_BIN):
            return False, f"/proc/{broker.proc.pid} is {exe}, not the broker"
        aws = sorted(k for k in env if k.upper().startswith("AWS_"))
        return not aws, f"{len(env)} variables, AWS_*: {aws or 'none'}"
    check("broker process environment has no AWS_* variable (/proc/<pid>/environ)", broker_env)

    def broker_home():
        home = broker.environ().get("HOME", "")
        found = [p for p in (os.path.join(home, ".aws", "config"), os.path.join(home, ".aws", "credentials"))
                 if os.path.exists(p)]
        ok = bool(home) and os.path.realpath(home) == os.path.realpath(broker.home) and not found
        return ok, f"HOME={home}, AWS config/credentials files: {found or 'none'}"
    check("broker HOME is a fresh temp dir with no ~/.aws/config or ~/.aws/credentials", broker_home)

    jwks = http_json(f"{ISSUER}/.well-known/jwks.json")
    first = jwks["keys"][0]
    kid = first["kid"]
    cert_der = base64.b64decode(first["x5c"][0])
    thumbprint = hashlib.sha1(cert_der).hexdigest()

    # -------------------------------------------------------------- 2. masters A and B, through the CLI
    actors = {}
    for name in ("A", "B"):
        a = Actor(work, name)
        actors[name] = a

        def sign_in(a=a):
            r = a.cli("key", "generate", "--out", a.key)
            if r.returncode != 0:
                return False, f"key generate rc={r.returncode}: {short(r.stderr)}"
            addr = r.stdout.strip().splitlines()[0].strip()
            r = a.cli("login", "wallet", "--key-file", a.key, "--broker-url", ISSUER, "--json")
            if r.returncode != 0:
                return False, f"login rc={r.returncode}: {short(r.stderr)}"
            a.wallet = json.loads(r.stdout)["wallet"]
            return a.wallet == addr.lower(), f"wallet {a.wallet}"
        check(f"{name}: `agentkeys key generate` + `agentkeys login wallet`", sign_in)
    A, B = actors["A"], actors["B"]
    if not (A.wallet and B.wallet):
        print("cannot continue without two signed-in masters", flush=True)
        return False
    # A pristine copy of A's client state (session only, no credential cache yet), for the
    # credential_process cache check further down.
    a_fresh_config = os.path.join(A.dir, "config-credproc")
    shutil.copytree(A.config, a_fresh_config)

    # -------------------------------------------------------------- 2b. agents, paired through the CLI
    bots = {}
    for name, master in (("bot1", A), ("bot2", B)):
        bot = Actor(work, name)
        check(f"{name}: `agentkeys agent init` + `agentkeys agent pair`, approved by {master.name} with "
              f"`agentkeys agents approve CODE --label {name}`", lambda bot=bot, master=master: pair_agent(master, bot, bot.name))
        if bot.wallet:
            bots[name] = bot
    bot1, bot2 = bots.get("bot1"), bots.get("bot2")

    # -------------------------------------------------------------- 3. RGW: provider, roles, bucket policy
    t1 = time.monotonic()
    iam, s3_admin = admin_client("iam"), admin_client("s3")
    pol_dir = os.path.join(work, "policies")
    prefixes = [A.wallet, B.wallet, *(b.wallet for b in bots.values())]     # one --expand per tag value
    grant_scope = f"{A.wallet}/inbox"        # the agentkeys_scope tag of A's grant to bot1 (section 6c)
    r = run([BROKER_BIN, "policy", "aws", "--issuer", ISSUER, "--account", "", "--bucket", BUCKET,
             "--role-name", ROLE, "--out-dir", pol_dir, "--with-grants",
             *(arg for w in prefixes for arg in ("--expand", f"agentkeys_user_wallet={w}")),
             "--expand", f"agentkeys_scope={grant_scope}"],
            clean_env(broker.home))
    if r.returncode != 0:
        check("`agentkeys-broker policy aws` prints the policies", lambda: (False, short(r.stderr)))
        return False

    def read(name):
        with open(os.path.join(pol_dir, name)) as f:
            return f.read().strip()
    provider_doc, trust, bucket_policy = json.loads(read("provider.json")), read("trust-policy.json"), read("bucket-policy.json")

    provider_arn = f"arn:aws:iam:::oidc-provider/{ISSUER.split('://', 1)[1]}"
    quiet(iam.delete_open_id_connect_provider, OpenIDConnectProviderArn=provider_arn)
    got = iam.create_open_id_connect_provider(Url=ISSUER, ClientIDList=[AUD], ThumbprintList=[thumbprint])
    created_arn = got["OpenIDConnectProviderArn"]

    def setup_docs():
        problems = []
        if provider_doc.get("arn") != created_arn:
            problems.append(f"provider.json arn {provider_doc.get('arn')} != RGW's {created_arn}")
        if provider_doc.get("client_id") != AUD:
            problems.append(f"client_id {provider_doc.get('client_id')}")
        for name, text in (("trust", trust), ("bucket", bucket_policy)):
            if any(c.isspace() for c in text):
                problems.append(f"{name} policy file is not compact")
        return not problems, "; ".join(problems) or f"provider {created_arn}, compact trust + bucket policy"
    check("`agentkeys-broker policy aws --account \"\" --expand …` documents fit RGW", setup_docs)

    # RGW 16 evaluates every `Null` condition as "the key is absent", whatever its value
    # (Condition::eval: `if (op == Null) return key not in env`). The generated
    # `Null: {aws:RequestTag/agentkeys_actor_omni: "false"}` ("the tag must be present") therefore
    # means the opposite there: RGW refuses every tagged broker token and accepts untagged ones.
    # `StringLike {key: "*"}` says the same thing and RGW evaluates it correctly (so does AWS).
    trust_doc, rewrites = rgw_trust(json.loads(trust))

    def trust_fits_rgw():
        if not rewrites:
            return True, "no Null condition"
        return False, (f"has {'; '.join(rewrites)}: RGW 16 treats any Null condition as 'key absent', so this "
                       "refuses every tagged token and admits untagged ones; StringLike {key: \"*\"} means the same "
                       "on AWS and works on RGW. The rest of this run uses that rewrite")
    check("generated trust policy is evaluated correctly by RGW (no `Null` condition)", trust_fits_rgw)
    if rewrites:
        trust = compact(trust_doc)
    notag_doc = json.loads(trust)
    for st in notag_doc["Statement"]:
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        st["Action"] = [x for x in acts if x != "sts:TagSession"]
    if notag_doc == trust_doc:
        raise SystemExit("generated trust policy has no sts:TagSession to remove")
    broad = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:*", "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}
    for name, doc, perm in ((ROLE, trust, None), (ROLE_NOTAG, compact(notag_doc), None), (ROLE_BROAD, trust, broad)):
        quiet(iam.delete_role_policy, RoleName=name, PolicyName="broad")
        quiet(iam.delete_role, RoleName=name)
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=doc)
        if perm:
            iam.put_role_policy(RoleName=name, PolicyName="broad", PolicyDocument=compact(perm))
    try:
        s3_admin.create_bucket(Bucket=BUCKET)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    s3_admin.put_bucket_policy(Bucket=BUCKET, Policy=bucket_policy)
    for w in (*prefixes, STRANGER, grant_scope, f"{A.wallet}/private"):
        s3_admin.put_object(Bucket=BUCKET, Key=f"{w}/seed.txt", Body=f"seed of {w}".encode())
    info(f"RGW setup (provider, 3 roles, bucket policy, seeds) in {time.monotonic() - t1:.1f}s")

    # -------------------------------------------------------------- 4. STS positive control
    def token(actor, *args):
        r = actor.cli("token", *args)
        if r.returncode != 0:
            raise RuntimeError(f"agentkeys token {' '.join(args)} rc={r.returncode}: {short(r.stderr)}")
        return r.stdout.strip()

    def control():
        r = assume(ROLE, token(A, "--role-arn", role_arn(ROLE)))
        arn = r["AssumedRoleUser"]["Arn"]
        return arn.startswith(f"arn:aws:sts:::assumed-role/{ROLE}/"), f"accepted as {arn}"
    check("control: a fresh broker token (`agentkeys token`) is accepted by STS (unsigned call)", control)

    # -------------------------------------------------------------- 5. credentials through the CLI
    sts_args = ["--sts-endpoint", RGW, "--region", REGION]
    creds = {}

    def creds_json(actor, duration=None):
        need("aws", "credentials")
        args = ["aws", "credentials", "--role-arn", role_arn(ROLE), "--format", "json", *sts_args]
        if duration:
            args += ["--duration", str(duration)]
        r = actor.cli(*args)
        if r.returncode != 0:
            return False, f"rc={r.returncode}: {short(r.stderr)}"
        doc, missing = parse_creds_json(r.stdout)
        if missing or doc.get("Version") != 1:
            return False, f"missing {missing}, Version={doc.get('Version')!r}"
        left = expires_in(doc["Expiration"])
        creds[actor.name] = doc
        if duration and not (duration - 120 <= left <= duration + 5):
            return False, f"Expiration in {left:.0f}s, asked for --duration {duration}"
        return left > 0, f"AccessKeyId {doc['AccessKeyId'][:8]}…, expires in {left:.0f}s"
    check("A: `agentkeys aws credentials --format json --duration 900` (Version 1, keys, Expiration ≈ 15 min)",
          lambda: creds_json(A, 900))
    check("B: `agentkeys aws credentials --format json`", lambda: creds_json(B))

    def creds_env():
        need("aws", "credentials")
        r = A.cli("aws", "credentials", "--role-arn", role_arn(ROLE), "--format", "env", *sts_args)
        if r.returncode != 0:
            return False, f"rc={r.returncode}: {short(r.stderr)}"
        env = parse_exports(r.stdout)
        want = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AGENTKEYS_USER_WALLET"]
        missing = [k for k in want if not env.get(k)]
        bad = []
        if env.get("AWS_REGION") != REGION or env.get("AWS_DEFAULT_REGION") != REGION:
            bad.append(f"region {env.get('AWS_REGION')}/{env.get('AWS_DEFAULT_REGION')}")
        if env.get("AGENTKEYS_USER_WALLET") != A.wallet:
            bad.append(f"AGENTKEYS_USER_WALLET={env.get('AGENTKEYS_USER_WALLET')}")
        if not missing and not bad and "A-env" not in creds:
            creds["A-env"] = {"AccessKeyId": env["AWS_ACCESS_KEY_ID"], "SecretAccessKey": env["AWS_SECRET_ACCESS_KEY"],
                              "SessionToken": env["AWS_SESSION_TOKEN"]}
        return not missing and not bad, (f"missing {missing} " if missing else "") + ("; ".join(bad) or "6 exports")
    check("A: `agentkeys aws credentials --format env` prints the six exports", creds_env)

    # Without `agentkeys aws credentials` (not built yet), the S3 checks still run on credentials
    # from the same real path by hand: `agentkeys token --role-arn` + unsigned AssumeRoleWithWebIdentity.
    via = "agentkeys aws credentials"
    for actor in (A, B):
        if actor.name not in creds:
            via = "agentkeys token + boto3 STS (fallback)"
            try:
                creds[actor.name] = assume(ROLE, token(actor, "--role-arn", role_arn(ROLE)))["Credentials"]
            except Exception as e:  # noqa: BLE001
                check(f"{actor.name}: credentials for the S3 checks", lambda e=e: (False, str(e)))
    info(f"S3 checks use credentials from: {via}")

    # -------------------------------------------------------------- 6. S3 isolation (boto3, path-style)
    if "A" in creds:
        sa = s3_for(creds["A"])
        aw, bw = A.wallet, B.wallet
        body_a = f"written by A at {time.time()}".encode()
        check("A: list own prefix <A>/", allowed(lambda: list_prefix(sa, f"{aw}/")))
        check("A: put <A>/e2e.txt", allowed(lambda: sa.put_object(Bucket=BUCKET, Key=f"{aw}/e2e.txt", Body=body_a)
                                            and "200"))

        def get_own():
            got = sa.get_object(Bucket=BUCKET, Key=f"{aw}/e2e.txt")["Body"].read()
            return got == body_a, "content matches" if got == body_a else f"content {got[:40]!r}"
        check("A: get <A>/e2e.txt back", get_own)
        check("A: list B's prefix <B>/ is AccessDenied", denied(lambda: list_prefix(sa, f"{bw}/")))
        check("A: get <B>/seed.txt is AccessDenied", denied(lambda: sa.get_object(Bucket=BUCKET, Key=f"{bw}/seed.txt")))
        check("A: put <B>/evil.txt is AccessDenied", denied(lambda: sa.put_object(Bucket=BUCKET, Key=f"{bw}/evil.txt",
                                                                                    Body=b"x")))
        check("A: list 0xdeadbeef/ is AccessDenied", denied(lambda: list_prefix(sa, f"{STRANGER}/")))
        check("A: get 0xdeadbeef/seed.txt is AccessDenied",
              denied(lambda: sa.get_object(Bucket=BUCKET, Key=f"{STRANGER}/seed.txt")))
        check("A: put 0xdeadbeef/evil.txt is AccessDenied",
              denied(lambda: sa.put_object(Bucket=BUCKET, Key=f"{STRANGER}/evil.txt", Body=b"x")))
        check("A: list the bucket root is AccessDenied",
              denied(lambda: sa.list_objects_v2(Bucket=BUCKET)))
    if "B" in creds:
        sb = s3_for(creds["B"])
        check("B: list own prefix <B>/", allowed(lambda: list_prefix(sb, f"{B.wallet}/")))
        check("B: list A's prefix <A>/ is AccessDenied", denied(lambda: list_prefix(sb, f"{A.wallet}/")))
        check("B: get <A>/seed.txt is AccessDenied",
              denied(lambda: sb.get_object(Bucket=BUCKET, Key=f"{A.wallet}/seed.txt")))
        check("B: list 0xdeadbeef/ is AccessDenied", denied(lambda: list_prefix(sb, f"{STRANGER}/")))
    if "A-env" in creds:
        check("A: credentials from --format env list own prefix",
              allowed(lambda: list_prefix(s3_for(creds["A-env"]), f"{A.wallet}/")))

    # -------------------------------------------------------------- 6b. agents: own prefix only; suspension
    if bot1:
        def agent_token():
            claims = b64url_json(token(bot1).split(".")[1])
            got = {k: claims.get(k) for k in ("sub", "agentkeys_user_wallet", "agentkeys_actor_omni")}
            want = {"sub": f"agentkeys:agent:{bot1.wallet}", "agentkeys_user_wallet": bot1.wallet,
                    "agentkeys_actor_omni": bot1.wallet}
            leaked = [w for w in (A.wallet, omni("evm", A.wallet)) if w in json.dumps(claims)]
            return got == want and not leaked, f"leaks its master's {leaked}" if leaked else f"{got['sub'][:40]}…"
        check("bot1: `agentkeys token` names only the agent (sub agentkeys:agent:<omni>, wallet tag = its omni)",
              agent_token)
    for bot in (bot1, bot2):
        if bot:
            check(f"{bot.name}: `agentkeys aws credentials --format json` (agent session)", lambda bot=bot: creds_json(bot))
    if bot1 and "bot1" in creds:
        s1 = s3_for(creds["bot1"])
        p1 = f"{bot1.wallet}/"
        body_1 = f"written by bot1 at {time.time()}".encode()
        check("bot1: list own prefix <bot1>/", allowed(lambda: list_prefix(s1, p1)))
        check("bot1: put <bot1>/e2e.txt", allowed(lambda: s1.put_object(Bucket=BUCKET, Key=f"{p1}e2e.txt", Body=body_1)
                                                  and "200"))

        def get_bot1():
            got = s1.get_object(Bucket=BUCKET, Key=f"{p1}e2e.txt")["Body"].read()
            return got == body_1, "content matches" if got == body_1 else f"content {got[:40]!r}"
        check("bot1: get <bot1>/e2e.txt back", get_bot1)
        check("bot1: list its master's prefix <A>/ is AccessDenied", denied(lambda: list_prefix(s1, f"{A.wallet}/")))
        check("bot1: get <A>/seed.txt is AccessDenied",
              denied(lambda: s1.get_object(Bucket=BUCKET, Key=f"{A.wallet}/seed.txt")))
        check("bot1: put <A>/evil.txt is AccessDenied",
              denied(lambda: s1.put_object(Bucket=BUCKET, Key=f"{A.wallet}/evil.txt", Body=b"x")))
        if bot2:
            check("bot1: list <bot2>/ is AccessDenied", denied(lambda: list_prefix(s1, f"{bot2.wallet}/")))
            check("bot1: get <bot2>/seed.txt is AccessDenied",
                  denied(lambda: s1.get_object(Bucket=BUCKET, Key=f"{bot2.wallet}/seed.txt")))
        check("bot1: list 0xdeadbeef/ is AccessDenied", denied(lambda: list_prefix(s1, f"{STRANGER}/")))
        if "A" in creds:
            check("A: list its agent's prefix <bot1>/ is AccessDenied (no tenant-wide rule covers an agent)",
                  denied(lambda: list_prefix(s3_for(creds["A"]), p1)))
    if bot2 and "bot2" in creds:
        s2 = s3_for(creds["bot2"])
        check("bot2: list own prefix <bot2>/", allowed(lambda: list_prefix(s2, f"{bot2.wallet}/")))
        if bot1:
            check("bot2: list <bot1>/ is AccessDenied", denied(lambda: list_prefix(s2, f"{bot1.wallet}/")))
        check("bot2: list its master's prefix <B>/ is AccessDenied", denied(lambda: list_prefix(s2, f"{B.wallet}/")))

    def bot_creds(bot):
        # `aws credentials`, not credential-process: no cache may answer for the broker.
        return bot.cli("aws", "credentials", "--role-arn", role_arn(ROLE), "--format", "json", *sts_args)

    def lifecycle(action):
        r = A.cli("agents", action, "bot1")
        return r.returncode == 0, f"rc={r.returncode}: {short(r.stdout if r.returncode == 0 else r.stderr, 160)}"
    if bot1:
        check("A: `agentkeys agents suspend bot1`", lambda: lifecycle("suspend"))

        def suspended():
            r = bot_creds(bot1)
            ok = r.returncode != 0 and "403 agent_suspended" in r.stderr and not r.stdout.strip()
            return ok, f"rc={r.returncode}: {short(r.stderr, 200)}"
        check("bot1: after suspension `agentkeys aws credentials` fails (mint refused: 403 agent_suspended)", suspended)
        if bot2:
            def unaffected():
                r = bot_creds(bot2)
                return r.returncode == 0, f"rc={r.returncode}" + ("" if r.returncode == 0 else f": {short(r.stderr)}")
            check("bot2: unaffected by bot1's suspension (`agentkeys aws credentials` works)", unaffected)
        check("A: `agentkeys agents resume bot1`", lambda: lifecycle("resume"))

        def resumed():
            r = bot_creds(bot1)
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            c = json.loads(r.stdout)
            return allowed(lambda: list_prefix(s3_for(c), f"{bot1.wallet}/"))()
        check("bot1: after resumption, new credentials list <bot1>/ again", resumed)

    # -------------------------------------------------------------- 6c. grants: bot1 gets A's inbox/, nothing more
    grant = {}
    if bot1:
        def grant_create():
            need("grants", "create")
            r = A.cli("grants", "create", "--agent", "bot1", "--scope", "inbox/", "--expires-in", "1h", "--json")
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            g = json.loads(r.stdout)
            grant.update(g)
            exposure = g.get("worst_case_exposure", {})
            ok = g.get("scope_tag") == grant_scope and g.get("scope") == "inbox/" and bool(exposure.get("explanation"))
            return ok, f"grant {g.get('grant_id', '')[:8]}…, scope_tag {g.get('scope_tag')}, " \
                       f"worst-case exposure {exposure.get('seconds')} s"
        check("A: `agentkeys grants create --agent bot1 --scope inbox/ --expires-in 1h`", grant_create)

    def grant_creds():
        args = ["aws", "credentials", "--role-arn", role_arn(ROLE), "--format", "json", *sts_args]
        return bot1.cli(*args, "--grant", grant["grant_id"])
    if grant:
        def grant_token():
            claims = b64url_json(token(bot1, "--grant", grant["grant_id"]).split(".")[1])
            tags = claims.get(TAGS_CLAIM, {}).get("principal_tags", {})
            got = (claims.get("agentkeys_scope"), tags.get("agentkeys_scope"), claims.get("agentkeys_user_wallet"))
            return got == (grant_scope, [grant_scope], bot1.wallet), f"agentkeys_scope {got[0]}, session tag {got[1]}"
        check("bot1: `agentkeys token --grant ID` carries agentkeys_scope=<A>/inbox (claim and session tag)",
              grant_token)

        def creds_under_grant():
            r = grant_creds()
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            creds["bot1-grant"] = json.loads(r.stdout)
            return True, f"AccessKeyId {creds['bot1-grant']['AccessKeyId'][:8]}…"
        check("bot1: `agentkeys aws credentials --grant ID`", creds_under_grant)
    if "bot1-grant" in creds:
        sg = s3_for(creds["bot1-grant"])
        inbox = f"{grant_scope}/"
        body_g = f"written by bot1 under a grant at {time.time()}".encode()
        check("bot1 (grant): list <A>/inbox/", allowed(lambda: list_prefix(sg, inbox)))

        def get_inbox_seed():
            got = sg.get_object(Bucket=BUCKET, Key=f"{inbox}seed.txt")["Body"].read()
            return got == f"seed of {grant_scope}".encode(), f"content {got[:40]!r}"
        check("bot1 (grant): get <A>/inbox/seed.txt", get_inbox_seed)
        check("bot1 (grant): put <A>/inbox/from-bot1.txt",
              allowed(lambda: sg.put_object(Bucket=BUCKET, Key=f"{inbox}from-bot1.txt", Body=body_g) and "200"))
        if "A" in creds:
            def master_reads():
                got = s3_for(creds["A"]).get_object(Bucket=BUCKET, Key=f"{inbox}from-bot1.txt")["Body"].read()
                return got == body_g, "content matches" if got == body_g else f"content {got[:40]!r}"
            check("A: get <A>/inbox/from-bot1.txt (the agent's write is the master's data)", master_reads)
        check("bot1 (grant): list own prefix <bot1>/ still works", allowed(lambda: list_prefix(sg, f"{bot1.wallet}/")))
        check("bot1 (grant): list A's prefix root <A>/ is AccessDenied", denied(lambda: list_prefix(sg, f"{A.wallet}/")))
        check("bot1 (grant): list <A>/private/ is AccessDenied",
              denied(lambda: list_prefix(sg, f"{A.wallet}/private/")))
        check("bot1 (grant): get <A>/private/seed.txt is AccessDenied",
              denied(lambda: sg.get_object(Bucket=BUCKET, Key=f"{A.wallet}/private/seed.txt")))
        check("bot1 (grant): get <A>/seed.txt is AccessDenied",
              denied(lambda: sg.get_object(Bucket=BUCKET, Key=f"{A.wallet}/seed.txt")))
        check("bot1 (grant): put <A>/private/evil.txt is AccessDenied",
              denied(lambda: sg.put_object(Bucket=BUCKET, Key=f"{A.wallet}/private/evil.txt", Body=b"x")))
        check("bot1 (grant): put <A>/inbox-evil.txt (sibling of the scope) is AccessDenied",
              denied(lambda: sg.put_object(Bucket=BUCKET, Key=f"{A.wallet}/inbox-evil.txt", Body=b"x")))
        check("bot1 (grant): list <B>/ is AccessDenied", denied(lambda: list_prefix(sg, f"{B.wallet}/")))
        if "bot1" in creds:
            check("bot1 (no grant): get <A>/inbox/seed.txt is AccessDenied",
                  denied(lambda: s3_for(creds["bot1"]).get_object(Bucket=BUCKET, Key=f"{inbox}seed.txt")))
        if bot2 and "bot2" in creds:
            check("bot2: list <A>/inbox/ is AccessDenied (the grant is bot1's)",
                  denied(lambda: list_prefix(s3_for(creds["bot2"]), inbox)))
    if grant:
        def grant_revoke():
            r = A.cli("grants", "revoke", grant["grant_id"])
            return r.returncode == 0, f"rc={r.returncode}: {short(r.stdout if r.returncode == 0 else r.stderr, 200)}"
        check("A: `agentkeys grants revoke ID`", grant_revoke)

        def revoked():
            r = grant_creds()
            ok = r.returncode != 0 and "403 grant_revoked" in r.stderr and not r.stdout.strip()
            return ok, f"rc={r.returncode}: {short(r.stderr, 200)}"
        check("bot1: after revocation `agentkeys aws credentials --grant ID` fails (mint refused: 403 grant_revoked)",
              revoked)

    # -------------------------------------------------------------- 6d. access request: bot1 asks, A approves
    # bot1 no longer reaches <A>/inbox/ (its grant was revoked); it asks for it, A approves with a
    # wallet signature, and the grant it receives works at once, for exactly its uses.
    asked = {}
    if bot1:
        def request_access():
            need("grants", "request")
            r = bot1.cli("grants", "request", "--scope", "inbox/", "--uses", "2", "--ttl", "1h",
                         "--reason", "read today's invoices", "--no-wait", "--json")
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            asked.update(json.loads(r.stdout))
            return asked.get("status") == "pending", f"request {asked.get('request_id', '')[:8]}… {asked.get('status')}"
        check("bot1: `agentkeys grants request --scope inbox/ --uses 2 --ttl 1h --reason …` (pending)", request_access)
    if asked:
        rid = asked["request_id"]

        def master_sees():
            r = A.cli("requests", "list", "--json")
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            mine = [q for q in json.loads(r.stdout)["requests"] if q["request_id"] == rid]
            ok = bool(mine) and mine[0]["agent_label"] == "bot1" and mine[0]["scope_tag"] == grant_scope \
                and mine[0]["reason"] == "read today's invoices" and mine[0]["worst_case_exposure"]["seconds"] > 0
            return ok, f"{mine[0]['agent_label']} asks {mine[0]['scope_tag']} ({mine[0]['max_uses']} uses)" if mine else "not listed"
        check("A: `agentkeys requests list` shows bot1's request (scope tag, uses, reason, worst case)", master_sees)

        def approve():
            r = A.cli("requests", "approve", rid, "--key-file", A.key, "--json")
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            done = json.loads(r.stdout)
            return done.get("status") == "approved" and bool(done.get("grant")), f"status {done.get('status')}"
        check("A: `agentkeys requests approve ID --key-file KEY` (a wallet signature over the terms)", approve)

        def received():
            r = bot1.cli("requests", "show", rid, "--wait", "--json")
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            asked["grant"] = json.loads(r.stdout).get("grant") or {}
            return asked["grant"].get("scope_tag") == grant_scope, f"grant {asked['grant'].get('grant_id', '')[:8]}…"
        check("bot1: `agentkeys requests show ID --wait` receives the grant", received)
    if asked.get("grant"):
        def approved_creds():
            args = ["aws", "credentials", "--role-arn", role_arn(ROLE), "--format", "json", *sts_args]
            return bot1.cli(*args, "--grant", asked["grant"]["grant_id"])
        r = approved_creds()
        if r.returncode == 0:
            sa = s3_for(json.loads(r.stdout))
            inbox = f"{grant_scope}/"
            check("bot1 (approved request): list <A>/inbox/", allowed(lambda: list_prefix(sa, inbox)))

            def read_seed():
                got = sa.get_object(Bucket=BUCKET, Key=f"{inbox}seed.txt")["Body"].read()
                return got == f"seed of {grant_scope}".encode(), f"content {got[:40]!r}"
            check("bot1 (approved request): get <A>/inbox/seed.txt", read_seed)
            check("bot1 (approved request): list <A>/private/ is AccessDenied",
                  denied(lambda: list_prefix(sa, f"{A.wallet}/private/")))
            check("bot1 (approved request): get <A>/seed.txt is AccessDenied",
                  denied(lambda: sa.get_object(Bucket=BUCKET, Key=f"{A.wallet}/seed.txt")))
            check("bot1 (approved request): list <B>/ is AccessDenied", denied(lambda: list_prefix(sa, f"{B.wallet}/")))
        else:
            check("bot1: `agentkeys aws credentials --grant ID` with the approved grant",
                  lambda: (False, f"rc={r.returncode}: {short(r.stderr)}"))

        def second_use():
            r = approved_creds()
            return r.returncode == 0, f"rc={r.returncode}" + ("" if r.returncode == 0 else f": {short(r.stderr)}")
        check("bot1: the grant's second (last) use mints", second_use)

        def spent():
            r = approved_creds()
            ok = r.returncode != 0 and "403 grant_exhausted" in r.stderr and not r.stdout.strip()
            return ok, f"rc={r.returncode}: {short(r.stderr, 200)}"
        check("bot1: with its 2 uses spent, the next mint under the grant is refused (403 grant_exhausted)", spent)

    # -------------------------------------------------------------- 7. agentkeys exec + AWS CLI
    exec_args = ["exec", "--role-arn", role_arn(ROLE), *sts_args, "--"]
    s3api = [AWS_CLI, "s3api", "list-objects-v2", "--endpoint-url", RGW, "--bucket", BUCKET]

    def exec_own():
        need("exec")
        r = A.cli(*exec_args, *s3api, "--prefix", f"{A.wallet}/")
        ok = r.returncode == 0 and f"{A.wallet}/seed.txt" in r.stdout
        return ok, f"rc={r.returncode}" + ("" if ok else f": {short(r.stderr or r.stdout)}")
    check("A: `agentkeys exec -- aws s3api list-objects-v2 --prefix <A>/` exits 0", exec_own)

    def exec_stranger():
        need("exec")
        # --debug: the AWS CLI v1 cannot print RGW's S3 errors (their <Message/> is empty and
        # awscli's error-message hook fails on it: "argument of type 'NoneType' is not iterable"),
        # so the proof of AccessDenied is the response body in the debug log.
        r = A.cli(*exec_args, AWS_CLI, "--debug", *s3api[1:], "--prefix", f"{STRANGER}/")
        denied_body = "<Code>AccessDenied</Code>" in r.stderr
        ok = r.returncode != 0 and denied_body
        return ok, f"rc={r.returncode}, response {'is' if denied_body else 'is NOT'} AccessDenied"
    check("A: `agentkeys exec -- aws s3api list-objects-v2 --prefix 0xdeadbeef/` fails with AccessDenied", exec_stranger)

    def exec_rc():
        need("exec")
        r = A.cli(*exec_args, "sh", "-c", "exit 7")
        return r.returncode == 7, f"rc={r.returncode}"
    check("`agentkeys exec` passes the child's exit code through (exit 7)", exec_rc)

    def exec_env():
        need("exec")
        code = ("import json,os;print(json.dumps({k:os.environ.get(k) for k in ['AWS_ACCESS_KEY_ID',"
                "'AWS_SECRET_ACCESS_KEY','AWS_SESSION_TOKEN','AWS_REGION','AWS_DEFAULT_REGION','AGENTKEYS_USER_WALLET']}))")
        r = A.cli(*exec_args, sys.executable, "-c", code)
        if r.returncode != 0:
            return False, f"rc={r.returncode}: {short(r.stderr)}"
        env = json.loads(r.stdout)
        missing = [k for k, v in env.items() if not v]
        ok = not missing and env["AGENTKEYS_USER_WALLET"] == A.wallet and env["AWS_REGION"] == REGION
        return ok, f"missing {missing}" if missing else f"wallet {env['AGENTKEYS_USER_WALLET']}, region {env['AWS_REGION']}"
    check("`agentkeys exec` gives the child the six variables", exec_env)

    # -------------------------------------------------------------- 8. credential_process profile + cache
    aws_home = os.path.join(work, "aws-home")
    os.makedirs(aws_home)
    aws_config = os.path.join(work, "aws-config")
    with open(aws_config, "w") as f:
        f.write("[profile agentkeys-e2e]\n"
                f"credential_process = {AK_BIN} aws credential-process --role-arn {role_arn(ROLE)}"
                f" --sts-endpoint {RGW} --region {REGION}\n"
                f"region = {REGION}\n")
    profile_env = clean_env(aws_home, AWS_CONFIG_FILE=aws_config,
                            AWS_SHARED_CREDENTIALS_FILE=os.path.join(aws_home, "no-credentials"),
                            AWS_PROFILE="agentkeys-e2e", AGENTKEYS_CONFIG_DIR=a_fresh_config)
    mints = {}

    def profile_list(tag):
        need("aws", "credential-process")
        before = broker.mint_count()
        r = run([*s3api, "--prefix", f"{A.wallet}/"], profile_env)
        mints[tag] = broker.mint_count() - before
        ok = r.returncode == 0 and f"{A.wallet}/seed.txt" in r.stdout
        return ok, f"rc={r.returncode}, broker mints during the call: {mints[tag]}" + \
            ("" if ok else f": {short(r.stderr)}")
    check("AWS CLI profile with credential_process = agentkeys … lists <A>/ (first call)",
          lambda: profile_list("first"))

    def profile_cached():
        need("aws", "credential-process")
        ok, detail = profile_list("second")
        if "first" not in mints or mints["first"] < 1:
            return False, f"first call minted {mints.get('first')} tokens; cannot show a cache hit"
        return ok and mints["second"] == 0, detail
    check("second profile call is served from the cache (no new `mint` in the broker's audit log)", profile_cached)

    def credproc_output():
        need("aws", "credential-process")
        outs = []
        for _ in range(2):
            r = run([AK_BIN, "aws", "credential-process", "--role-arn", role_arn(ROLE), *sts_args],
                    clean_env(aws_home, AGENTKEYS_CONFIG_DIR=a_fresh_config))
            if r.returncode != 0:
                return False, f"rc={r.returncode}: {short(r.stderr)}"
            outs.append(r.stdout)
        doc, missing = parse_creds_json(outs[0])
        if missing or doc.get("Version") != 1:
            return False, f"missing {missing}, Version={doc.get('Version')!r}"
        if json.loads(outs[1])["AccessKeyId"] != doc["AccessKeyId"]:
            return False, "two calls returned different credentials (no cache)"
        cached = []
        for dirpath, _, files in os.walk(a_fresh_config):
            for fn in files:
                p = os.path.join(dirpath, fn)
                with open(p, errors="replace") as f:
                    if doc["AccessKeyId"] in f.read():
                        cached.append((p, stat.S_IMODE(os.stat(p).st_mode)))
        if not cached:
            return False, "no cache file under the config dir holds the credentials"
        bad = [f"{p} {m:o}" for p, m in cached if m != 0o600]
        return not bad, "; ".join(bad) or f"Version 1, cache file {os.path.relpath(cached[0][0], a_fresh_config)} (0600)"
    check("`agentkeys aws credential-process` prints Version 1 JSON, cached in a 0600 file", credproc_output)

    # -------------------------------------------------------------- 9. verify-isolation
    def verify(role, expect_ok):
        need("verify-isolation")
        r = A.cli("verify-isolation", "--role-arn", role_arn(role), "--bucket", BUCKET, *sts_args,
                  "--s3-endpoint", RGW)
        out = (r.stdout + r.stderr)
        if expect_ok:
            ok = r.returncode == 0 and "PASS" in out
        else:
            ok = r.returncode != 0
        verdict = [line for line in out.splitlines() if line.strip()][-1:] or ["no output"]
        return ok, f"rc={r.returncode}: {short(verdict[0], 200)}"
    check("`agentkeys verify-isolation` passes for A", lambda: verify(ROLE, True))
    check("`agentkeys verify-isolation` fails against a role with a broad s3:* grant", lambda: verify(ROLE_BROAD, False))
    check("`agentkeys verify-isolation` fails when STS refuses (trust lacks sts:TagSession)",
          lambda: verify(ROLE_NOTAG, False))

    # -------------------------------------------------------------- 10. STS rejections
    # Crafted tokens start from a real broker token's claims and are signed with the broker's own
    # key (same kid), so each differs from an accepted token in exactly one property.
    key = broker.signing_key(kid)

    def base_claims():
        tok = token(A)
        header = b64url_json(tok.split(".")[0])
        if header.get("kid") != kid:
            raise RuntimeError(f"broker token kid {header.get('kid')} is not the JWKS's first key {kid}")
        claims = b64url_json(tok.split(".")[1])
        now = int(time.time())
        claims.update(jti=uuid.uuid4().hex, iat=now, nbf=now - 60, exp=now + 300)
        return claims

    def sign(claims, signer=None):
        return jwt.encode(claims, signer or key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})

    def resigned_control():
        r = assume(ROLE, sign(base_claims()))
        return True, f"accepted as {r['AssumedRoleUser']['Arn']}"
    check("control: a broker token re-signed in Python with the broker's key (same claims) is accepted",
          resigned_control)

    check("STS rejects a token minted with `agentkeys token --audience wrong-audience`",
          sts_rejects(ROLE, lambda: token(A, "--audience", "wrong-audience")))

    def expired():
        c = base_claims()
        now = int(time.time())
        c.update(iat=now - 900, nbf=now - 960, exp=now - 600)
        return sign(c)
    check("STS rejects an expired token (broker key, exp 10 min ago)", sts_rejects(ROLE, expired))

    def untagged():
        c = base_claims()
        del c[TAGS_CLAIM]
        return sign(c)
    check(f"STS rejects a token without the {TAGS_CLAIM} claim (broker key)", sts_rejects(ROLE, untagged))

    def rogue():
        return sign(base_claims(), ec.generate_private_key(ec.SECP256R1()))
    check("STS rejects a token signed by a key not in the JWKS (same kid)", sts_rejects(ROLE, rogue))

    check("STS rejects a valid broker token for a role whose trust lacks sts:TagSession",
          sts_rejects(ROLE_NOTAG, lambda: token(A)))

    # -------------------------------------------------------------- 11. agents' everyday path (agents.py)
    if bot1 and bot2:
        import agents as agents_checks    # noqa: PLC0415 - the second module of this harness run
        agents_checks.run(sys.modules[__name__], broker, A, B, bot1, bot2)
    else:
        check("agents' everyday path (agents.py)", lambda: (False, "needs both paired agents"))

    # -------------------------------------------------------------- 12. audit chain
    def audit():
        r = broker.cli("audit", "verify")
        return r.returncode == 0, f"rc={r.returncode}: {short(r.stdout + r.stderr, 160)}"
    check("`agentkeys-broker audit verify` passes", audit)

    return RESULTS["fail"] == 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run finally-blocks (broker teardown)
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))
    sys.exit(main())
