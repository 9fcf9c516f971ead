"""Rotation under load, checked by an independent relying party (docs/reliability.md).

The real broker mints at c=32 (the reliability_load client) while this script rotates and
retires its signing keys on the shortest safe schedule with `agentkeys-broker keys`. A relying
party that knows only the issuer URL verifies every token with PyJWT against a JWKS cache that
honours the served `Cache-Control: max-age`, as cloud verifiers do: it refreshes the JWKS when
its copy expires and never on an unknown kid. Each token is checked against the copy that cache
held when the token was minted (its `iat`), and verified before its `exp`. At the end every
token must still verify against the JWKS then served, and `keys list` must publish each key at
least until the last `exp` it signed.

    python3 rotation.py [--seconds 40] [--rotations 3] [--control]

--control rotates with no overlap under a 10 s JWKS cache (a broken schedule): the relying
party must see tokens signed by a key its cache does not hold yet, and the run must fail.
"""

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

import jwt
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Broker, Failure, binary, log  # noqa: E402

AUDIENCE = "sts.amazonaws.com"
REQUIRED = ["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]
KEY_REFRESH_SECONDS = 1


def b64json(part):
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class JwksCache:
    """A verifier's JWKS cache: a copy fetched now and kept for the served max-age, refreshed
    when it expires (a fetcher thread keeps it fresh, as steady traffic would). Every copy is
    kept with the time it was fetched, so a token can be checked against the copy in force when
    it was minted."""

    def __init__(self, jwks_uri):
        self.jwks_uri = jwks_uri
        self.copies = []  # (fetched_at, {kid: key}, max_age)
        self.fetches = 0
        self.stop = threading.Event()
        self.fetch()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def fetch(self):
        r = requests.get(self.jwks_uri, timeout=10)
        r.raise_for_status()
        m = re.search(r"max-age=(\d+)", r.headers.get("Cache-Control", ""))
        if not m:
            raise Failure(f"JWKS without Cache-Control max-age: {r.headers.get('Cache-Control')!r}")
        keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(r.json()).keys}
        self.copies.append((time.time(), keys, int(m.group(1))))
        self.fetches += 1

    def run(self):
        while not self.stop.is_set():
            fetched_at, _, max_age = self.copies[-1]
            if self.stop.wait(max(0.0, fetched_at + max_age - time.time())):
                return
            self.fetch()

    def at(self, t):
        """The copy the cache held at time t."""
        held = self.copies[0][1]
        for fetched_at, keys, _ in self.copies:
            if fetched_at > t:
                break
            held = keys
        return held


def published_until(broker):
    """kid -> unix time its publication ends (None while it is active or pending)."""
    out = broker.cli("keys", "list").stdout.splitlines()[1:]
    until = {}
    for line in out:
        fields = line.split()
        if len(fields) < 5:
            continue
        last = " ".join(fields[4:])
        until[fields[0]] = (None if last.startswith("(")
                            else datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp())
    return until


def active_kid(broker):
    for line in broker.cli("keys", "list").stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "active":
            return fields[0]
    return None


def rotate_and_retire(broker, rotations, overlap, started, errors, done):
    """Rotates `rotations` times; after each new key signs, retires the one before it."""
    try:
        time.sleep(3)
        for n in range(1, rotations + 1):
            old = active_kid(broker)
            out = broker.cli("keys", "rotate", "--overlap-seconds", str(overlap)).stdout.strip()
            new = out.split()[1].rstrip(":")
            deadline = time.monotonic() + overlap + 30
            # The broker picks the new key up within its refresh interval after activation.
            while active_kid(broker) != new:
                if time.monotonic() > deadline:
                    raise Failure(f"rotation {n}: {new} never became active")
                time.sleep(0.5)
            time.sleep(KEY_REFRESH_SECONDS + 1)
            broker.cli("keys", "retire", old)
            log(f"t+{time.time() - started:.0f}s rotation {n}: {old[:8]}… retired, "
                f"{new[:8]}… signs (overlap {overlap} s)")
    except Exception as e:  # reported by the main thread
        errors.append(e)
    finally:
        done.set()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=int, default=40)
    p.add_argument("--rotations", type=int, default=3, choices=range(1, 4),
                   help="at most 3: the JWKS holds 4 keys, and a retired key stays published "
                        "for the longest token lifetime plus a margin")
    p.add_argument("--control", action="store_true")
    a = p.parse_args()
    if not 10 <= a.seconds <= 1800:
        raise SystemExit("--seconds must be 10..1800")
    max_age = 10 if a.control else 2
    overlap = 0 if a.control else max_age + KEY_REFRESH_SECONDS + 3
    work = tempfile.mkdtemp(prefix="agentkeys-rotation-", dir=os.environ.get("TMPDIR", "/tmp"))
    ok = False
    try:
        run(a, work, max_age, overlap)
        ok = True
    except Failure as e:
        log(f"FAILED: {e}")
    finally:
        if ok or not os.environ.get("RELIABILITY_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    if a.control:
        log("control: the broken schedule was " + ("MISSED" if ok else "caught, as it must be"))
        sys.exit(1 if ok else 0)
    sys.exit(0 if ok else 1)


def run(a, work, max_age, overlap):
    broker = Broker(work, extra_env={
        "BROKER_JWKS_MAX_AGE_SECONDS": str(max_age),
        "BROKER_KEY_REFRESH_SECONDS": str(KEY_REFRESH_SECONDS),
    })
    broker.start()
    jwts_path = os.path.join(work, "jwts")
    open(jwts_path, "w").close()
    try:
        discovery = requests.get(f"{broker.url}/.well-known/openid-configuration", timeout=10).json()
        issuer = discovery["issuer"]
        cache = JwksCache(discovery["jwks_uri"])
        started = time.time()
        client = subprocess.Popen(
            [binary("RELIABILITY_LOAD_BIN"), "mint", "--url", broker.url, "--masters", "64",
             "--concurrency", "32", "--seconds", str(a.seconds), "--jwt-out", jwts_path],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        errors, rotated = [], threading.Event()
        rotator = threading.Thread(target=rotate_and_retire,
                                   args=(broker, a.rotations, overlap, started, errors, rotated))
        rotator.start()

        tokens, failures, kids, max_lag = [], [], {}, 0.0
        with open(jwts_path) as f:
            pending = ""
            deadline = time.monotonic() + a.seconds + 600
            while True:
                chunk = f.readline()
                if not chunk:
                    if client.poll() is not None and rotated.is_set():
                        rest = f.read()
                        if not rest:
                            break
                        chunk = rest
                    else:
                        if time.monotonic() > deadline:
                            client.kill()
                            raise Failure("the run exceeded its time bound")
                        time.sleep(0.05)
                        continue
                pending += chunk
                if not pending.endswith("\n"):
                    continue
                for token in pending.split():
                    tokens.append(token)
                    header = jwt.get_unverified_header(token)
                    claims = b64json(token.split(".")[1])
                    kid = header.get("kid")
                    kids.setdefault(kid, 0)
                    kids[kid] += 1
                    key = cache.at(claims["iat"]).get(kid)
                    if key is None:
                        failures.append(f"jti {claims['jti']}: kid {kid} not in the JWKS the "
                                        f"cache held at iat {claims['iat']}")
                        continue
                    try:
                        jwt.decode(token, key, algorithms=["ES256"], audience=AUDIENCE,
                                   issuer=issuer, options={"require": REQUIRED}, leeway=0)
                    except jwt.PyJWTError as e:
                        failures.append(f"jti {claims['jti']}: {type(e).__name__}: {e}")
                    max_lag = max(max_lag, time.time() - claims["iat"])
                pending = ""
        out, _ = client.communicate(timeout=60)
        rotator.join(timeout=120)
        cache.stop.set()
        print(out, end="")
        if errors:
            raise Failure(f"rotating: {errors[0]}")
        if client.returncode != 0:
            raise Failure(f"the load client exited {client.returncode}")

        # Afterwards: every token still verifies with the JWKS served now (it is within its
        # lifetime), and each key stays published past the last exp it signed.
        final = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(
            requests.get(discovery["jwks_uri"], timeout=10).json()).keys}
        last_exp = {}
        for token in tokens:
            kid = jwt.get_unverified_header(token)["kid"]
            claims = b64json(token.split(".")[1])
            last_exp[kid] = max(last_exp.get(kid, 0), claims["exp"])
            if time.time() >= claims["exp"]:
                continue  # a long run: this one's lifetime is over
            if kid not in final:
                failures.append(f"jti {claims['jti']}: its key {kid} left the JWKS before its exp")
        until = published_until(broker)
        for kid, exp in last_exp.items():
            if until.get(kid) is not None and until[kid] < exp:
                failures.append(f"key {kid} published until {until[kid]}, a token it signed "
                                f"expires at {exp}")
    finally:
        broker.stop()
    log(f"{len(tokens)} tokens from {len(kids)} keys ({', '.join(f'{k[:8]}…: {n}' for k, n in kids.items())}); "
        f"{cache.fetches} JWKS fetches (max-age {max_age} s); verification lag max {max_lag:.1f} s; "
        f"{len(failures)} failures")
    if failures:
        raise Failure(f"{len(failures)} token(s) did not verify, e.g. {failures[0]}")
    if len(tokens) == 0 or len(kids) < a.rotations + 1:
        raise Failure(f"the load did not span the rotations ({len(kids)} keys signed)")
    problems = broker.log_problems()
    if problems:
        raise Failure(f"{len(problems)} panic/error line(s) in the broker log: {problems[0]}")
    verified, _ = broker.audit()
    log(f"rotation ok: {verified}")


if __name__ == "__main__":
    main()
