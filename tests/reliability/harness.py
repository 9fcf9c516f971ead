"""Reliability harnesses against the real broker binary (docs/reliability.md).

    python3 harness.py kill9     [--database-url URL] [--cycles 5] [--control]
    python3 harness.py full-disk [--control]
    python3 harness.py soak      [--seconds 120] [--concurrency 8] [--window 10] [--control]

Binaries come from the environment: AGENTKEYS_BROKER_BIN (agentkeys-broker) and
RELIABILITY_LOAD_BIN (the reliability_load example). RELIABILITY_PORT pins the broker's port
(default: a free loopback port). Every loop is bounded in count and time; everything listens on
127.0.0.1 only. Exits non-zero, naming what broke, when a promise does not hold; with
--control, a deliberate fault is injected and the harness must catch it.
"""

import argparse
import base64
import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

READY_TIMEOUT_S = 60
# Nine SQLite connections × 2 MiB of page cache, plus 2 MiB.
PAGE_CACHE_BUDGET_KB = 20 * 1024


class Failure(Exception):
    pass


def log(msg):
    print(f"[reliability] {msg}", flush=True)


def binary(var):
    path = os.environ.get(var)
    if not path or not os.access(path, os.X_OK):
        raise SystemExit(f"{var} must name an executable (tests/reliability/run.sh sets it)")
    return path


def free_port():
    if os.environ.get("RELIABILITY_PORT"):
        return int(os.environ["RELIABILITY_PORT"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=10):
    """(status, parsed JSON or text); never raises on an HTTP status."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def jwt_claims(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Broker:
    """One `agentkeys-broker serve --dev` on loopback over a data dir (and maybe PostgreSQL)."""

    def __init__(self, work, database_url=None, extra_env=None):
        self.bin = binary("AGENTKEYS_BROKER_BIN")
        self.work = work
        self.data = os.path.join(work, "data")
        self.log_path = os.path.join(work, "broker.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        # The load comes from one address: the per-client limits would otherwise be the test.
        env.update(
            BROKER_MINT_RATE_PER_MINUTE="100000000",
            BROKER_MINT_RATE_PER_HOUR="100000000",
            BROKER_ANON_RATE_PER_IP_PER_MINUTE="1000000",
            BROKER_ANON_RATE_GLOBAL_PER_SECOND="1000000",
            BROKER_PAIRING_APPROVE_RATE_PER_IP_PER_HOUR="1000000",
            BROKER_PAIRING_APPROVE_RATE_GLOBAL_PER_MINUTE="1000000",
        )
        if database_url:
            kek = os.path.join(work, "kek")
            with open(os.open(kek, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode())
            env.update(BROKER_DATABASE_URL=database_url, BROKER_KEY_ENCRYPTION_KEY_FILE=kek)
        env.update(extra_env or {})
        self.env = env
        self.cli("keys", "generate")

    def cli(self, *args, check=True, timeout=300):
        p = subprocess.run([self.bin, *args, "--data-dir", self.data], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise Failure(f"agentkeys-broker {' '.join(args)} exited {p.returncode}: "
                          f"{p.stderr.strip()}")
        return p

    def start(self):
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.bin, "serve", "--dev", "--data-dir", self.data,
                 "--listen", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"broker exited {self.proc.returncode} at start; log {self.log_path}")
            try:
                if http("GET", f"{self.url}/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failure(f"broker not ready within {READY_TIMEOUT_S}s; log {self.log_path}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_problems(self, errors_too=True):
        """Panics (and, unless told otherwise, error-level lines) in the broker log."""
        bad = []
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if "panicked" in line or (errors_too and re.search(r"(^|\s)ERROR\s", line)):
                    bad.append(line.rstrip())
        return bad

    def audit(self):
        """`audit verify` must pass; returns the exported events."""
        verify = self.cli("audit", "verify", check=False)
        if verify.returncode != 0:
            raise Failure(f"audit verify failed: {verify.stdout.strip()} {verify.stderr.strip()}")
        events = [json.loads(l) for l in self.cli("audit", "export").stdout.splitlines() if l]
        return verify.stdout.strip(), events


def check_chain(events, received_jtis):
    """Every received jti is in the audit log; seq runs 1..n without a gap or a repeat."""
    seqs = [e["seq"] for e in events]
    if seqs != list(range(1, len(seqs) + 1)):
        dup = len(seqs) - len(set(seqs))
        raise Failure(f"audit seq not contiguous from 1: {len(seqs)} events, {dup} duplicated")
    audited = {e["details"].get("jti") for e in events if e["kind"] == "mint"}
    missing = [j for j in received_jtis if j not in audited]
    if missing:
        raise Failure(f"{len(missing)} received JWT(s) not in the audit log, e.g. jti {missing[0]}")
    return len(audited)


def read_jtis(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        # A line cut by a kill of the *client* cannot happen here (the client outlives the
        # broker), but be strict: every line must be a whole JWT.
        return [jwt_claims(line.strip())["jti"] for line in f if line.strip()]


def load(*args, timeout):
    cmd = [binary("RELIABILITY_LOAD_BIN"), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), timeout


def finish(proc_and_timeout):
    proc, timeout = proc_and_timeout
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def fresh_database(admin_url):
    """A new database on the cluster of `admin_url`, for one run; returns (url, drop)."""
    name = f"ak_rel_{os.getpid()}_{random.randrange(1 << 30)}"
    subprocess.run(["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE DATABASE {name}"],
                   check=True, timeout=60)
    url = re.sub(r"/[^/?]*(\?|$)", f"/{name}\\1", admin_url.split("://", 1)[1], count=1)
    url = admin_url.split("://", 1)[0] + "://" + url

    def drop():
        subprocess.run(["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       timeout=60)
    return url, drop


# ---- kill -9 under load ------------------------------------------------------------------------

def kill9(args, work):
    drop = None
    database_url = None
    if args.database_url:
        database_url, drop = fresh_database(args.database_url)
    try:
        broker = Broker(work, database_url)
        broker.start()
        jwts = os.path.join(work, "jwts")
        stop = os.path.join(work, "stop")
        client = load("mint", "--url", broker.url, "--masters", 64, "--concurrency", 32,
                      "--seconds", 600, "--jwt-out", jwts, "--stop-file", stop,
                      "--tolerate-outage", timeout=700)
        rng = random.Random(args.seed)
        previous = 0
        try:
            for cycle in range(1, args.cycles + 1):
                # Wait for the load to be flowing, then kill at a random moment.
                deadline = time.monotonic() + 120
                while len(read_jtis(jwts)) < previous + 50:
                    if client[0].poll() is not None or time.monotonic() > deadline:
                        raise Failure(f"cycle {cycle}: the load client minted nothing new "
                                      f"({client[0].poll()=})")
                    time.sleep(0.2)
                time.sleep(rng.uniform(0.2, 3.0))
                broker.kill9()
                received = read_jtis(jwts)
                if args.control and cycle == args.cycles:
                    # A token the client "received" that the broker never audited.
                    received.append("control-%032x" % rng.getrandbits(128))
                verified, events = broker.audit()
                audited = check_chain(events, received)
                log(f"cycle {cycle}: SIGKILL after {len(received) - previous} new JWTs; "
                    f"{len(received)} received, all in the audit ({audited} mint events, "
                    f"{len(events)} events, seq 1..{len(events)}); {verified}")
                previous = len(received)
                broker.start()
        finally:
            open(stop, "w").close()
            rc, out = finish(client)
            broker.stop()
        print(out, end="")
        if rc != 0:
            raise Failure(f"load client exited {rc}")
        if not re.search(r"^ok: [1-9]", out, re.M):
            raise Failure("the load client minted nothing")
        statuses = re.findall(r"^status_(\d+): (\d+)", out, re.M)
        if statuses:
            raise Failure(f"non-200 answers while the broker was up: {statuses}")
        _, events = broker.audit()
        check_chain(events, read_jtis(jwts))
        problems = broker.log_problems()
        if problems:
            raise Failure(f"{len(problems)} panic/error line(s) in the broker log: {problems[0]}")
        log(f"kill -9 x{args.cycles}: 0 missing, seq contiguous, {len(read_jtis(jwts))} JWTs")
    finally:
        if drop:
            drop()


# ---- full disk -----------------------------------------------------------------------------------

def fill(path):
    """Writes zeros to `path` until the file system is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
        # The last few bytes a smaller write still fits.
        for size in (4096, 512, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return written


def full_disk(args, work):
    if os.geteuid() != 0:
        raise SystemExit("full-disk mounts a tmpfs: run as root (CI does)")
    mnt = os.path.join(work, "disk")
    os.makedirs(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", mnt], check=True)
    try:
        broker = Broker(mnt)
        broker.log_path = os.path.join(work, "broker.log")  # the log must not share the disk
        broker.start()
        tokens = os.path.join(work, "tokens")
        jwts = os.path.join(work, "jwts")
        try:
            rc, out = finish(load("mint", "--url", broker.url, "--masters", 16, "--concurrency", 8,
                                  "--max-requests", 200, "--tokens-out", tokens,
                                  "--jwt-out", jwts, timeout=120))
            if rc != 0:
                raise Failure(f"baseline mints failed:\n{out}")
            log("baseline: 200 mints ok")

            filler = os.path.join(mnt, "filler")
            if not args.control:
                log(f"filled the data dir's file system with {fill(filler)} bytes")
            # Mint until the store has to grow and cannot (a bounded number of requests).
            rc, out = finish(load("mint", "--url", broker.url, "--tokens-in", tokens,
                                  "--concurrency", 8, "--max-requests", 3000, "--seconds", 60,
                                  "--jwt-out", jwts, "--allow-status", 500,
                                  "--allow-status", 503, timeout=180))
            print(out, end="")
            if rc != 0:
                raise Failure("with the disk full, a mint answered other than 200/500/503, "
                              "or an error answer carried a JWT")
            failed = sum(int(c) for c in re.findall(r"^status_50[03]: (\d+)", out, re.M))
            if failed == 0:
                raise Failure("no mint failed with the data dir's disk full")
            status, body = http("POST", f"{broker.url}/v1/mint-oidc-jwt",
                                token=open(tokens).readline().strip())
            if status not in (500, 503) or not isinstance(body, dict) or not body.get("message"):
                raise Failure(f"a mint on a full disk answered {status} {body!r}")
            log(f"full: {failed} mints failed closed; e.g. {status} {body}")
            status, body = http("GET", f"{broker.url}/readyz")
            if status != 503:
                raise Failure(f"/readyz answered {status} {body} with the disk full")
            log(f"full: /readyz {status} {body}")

            os.remove(filler) if os.path.exists(filler) else None
            deadline = time.monotonic() + 60
            while True:
                status, body = http("POST", f"{broker.url}/v1/mint-oidc-jwt",
                                    token=open(tokens).readline().strip())
                if status == 200:
                    with open(jwts, "a") as f:
                        f.write(body["jwt"] + "\n")
                    break
                if time.monotonic() > deadline:
                    raise Failure(f"no recovery within 60 s of freeing space: {status} {body}")
                time.sleep(0.5)
            rc, out = finish(load("mint", "--url", broker.url, "--tokens-in", tokens,
                                  "--concurrency", 8, "--max-requests", 200, "--jwt-out", jwts,
                                  timeout=120))
            if rc != 0:
                raise Failure(f"mints after freeing space failed:\n{out}")
            status, body = http("GET", f"{broker.url}/readyz")
            if status != 200:
                raise Failure(f"/readyz answered {status} {body} after space was freed")
            if broker.proc.poll() is not None:
                raise Failure("the broker exited")
            log("freed: mints and /readyz recovered without a restart")
        finally:
            broker.stop()
        verified, events = broker.audit()
        n = check_chain(events, read_jtis(jwts))
        log(f"chain: {verified}; all {len(read_jtis(jwts))} received JWTs among {n} mint events")
        panics = broker.log_problems(errors_too=False)
        if panics:
            raise Failure(f"the broker panicked: {panics[0]}")
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)


# ---- soak ---------------------------------------------------------------------------------------

def soak(args, work):
    # The control: the client leaks idle connections and the broker is configured to keep an
    # idle connection for 300 s instead of 10, so they pile up as a descriptor leak would.
    broker = Broker(work, extra_env={"BROKER_HEADER_READ_TIMEOUT_SECONDS": "300"}
                    if args.control else None)
    broker.start()
    try:
        leak = ["--leak-connections", 4] if args.control else []
        rc, out = finish(load("soak", "--url", broker.url, "--concurrency", args.concurrency,
                              "--seconds", args.seconds, "--window", args.window,
                              "--server-pid", broker.proc.pid, *leak,
                              timeout=args.seconds + 300))
    finally:
        broker.stop()
    print(out, end="")
    if rc != 0:
        raise Failure("the soak saw errors (first_error above)")
    windows = [dict(zip(("ops", "errors", "p99", "rss", "fds"),
                        (int(m[0]), int(m[1]), float(m[2]), int(m[3]), int(m[4]))))
               for m in re.findall(r"^window \d+: ops (\d+) errors (\d+) p50_ms \S+ p99_ms (\S+) "
                                   r"rss_kb (\d+) fds (\d+)", out, re.M)]
    # The last window may be cut short; warm-up is the first quarter.
    steady = windows[max(1, len(windows) // 4):-1] if len(windows) > 4 else windows[1:]
    if len(steady) < 2:
        raise Failure("too few windows to judge; run longer")
    first, last = steady[0], steady[-1]
    rss_growth = (max(w["rss"] for w in steady) - first["rss"]) / first["rss"]
    fd_growth = max(w["fds"] for w in steady) - first["fds"]
    half = len(steady) // 2
    p99_a = sorted(w["p99"] for w in steady[:half])[half // 2] if half else first["p99"]
    p99_b = sorted(w["p99"] for w in steady[half:])[(len(steady) - half) // 2]
    log(f"after warm-up: RSS {first['rss']} -> {last['rss']} kB (max growth "
        f"{rss_growth:.1%}), fds {first['fds']} -> {last['fds']} (max +{fd_growth}), "
        f"median window p99 {p99_a} ms -> {p99_b} ms")
    # Bounds that a leak (per request or per session) or a slowing store would exceed within
    # the run, and that a shared machine's noise does not.
    # The SQLite connections' page caches (one writer, up to eight readers, 2 MiB each) fill
    # over the first minutes of a run whatever its length: growth within that budget is not a
    # leak. A 2-minute run is mostly warm-up; the long run is the one that judges.
    grown_kb = max(w["rss"] for w in steady) - first["rss"]
    if rss_growth > args.max_rss_growth and grown_kb > PAGE_CACHE_BUDGET_KB:
        raise Failure(f"RSS grew {rss_growth:.1%} ({grown_kb} kB) after warm-up (bound "
                      f"{args.max_rss_growth:.0%} or {PAGE_CACHE_BUDGET_KB} kB)")
    if fd_growth > 8:
        raise Failure(f"open descriptors grew by {fd_growth} after warm-up")
    if p99_b > max(4 * p99_a, 50):
        raise Failure(f"p99 rose from {p99_a} ms to {p99_b} ms")
    problems = broker.log_problems()
    if problems:
        raise Failure(f"{len(problems)} panic/error line(s) in the broker log: {problems[0]}")
    verified, _ = broker.audit()
    log(f"soak ok: {verified}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    k = sub.add_parser("kill9")
    k.add_argument("--database-url", help="PostgreSQL admin URL; a fresh database is made on it")
    k.add_argument("--cycles", type=int, default=5, choices=range(1, 51))
    k.add_argument("--seed", type=int, default=None)
    k.add_argument("--control", action="store_true")
    f = sub.add_parser("full-disk")
    f.add_argument("--control", action="store_true", help="do not fill the disk")
    s = sub.add_parser("soak")
    s.add_argument("--seconds", type=int, default=120)
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--window", type=int, default=10)
    s.add_argument("--max-rss-growth", type=float, default=0.25)
    s.add_argument("--control", action="store_true",
                   help="idle connections pile up (client leaks them, broker keeps them 300 s); "
                        "the descriptor check must fail")
    a = p.parse_args()
    if getattr(a, "seconds", 1) > 7200:
        raise SystemExit("--seconds must be at most 7200")
    work = tempfile.mkdtemp(prefix=f"agentkeys-{a.part}-", dir=os.environ.get("TMPDIR", "/tmp"))
    ok = False
    try:
        {"kill9": kill9, "full-disk": full_disk, "soak": soak}[a.part](a, work)
        ok = True
    except Failure as e:
        log(f"FAILED: {e}")
    finally:
        if ok or not os.environ.get("RELIABILITY_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"kept {work}")
    if getattr(a, "control", False):
        log("control: the injected fault was " + ("MISSED" if ok else "caught, as it must be"))
        sys.exit(1 if ok else 0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
