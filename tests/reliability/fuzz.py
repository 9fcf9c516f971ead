"""Every route, fuzzed from its own contract (docs/reliability.md).

Schemathesis reads the broker's served /openapi.json and runs every operation (examples,
coverage, fuzzing and stateful phases, every check) three times: without credentials, as a
signed-in wallet master and as a paired agent (the `reliability_load sessions` fixture signs
both in and gives the agent a grant). Passes when Schemathesis reports no failure (no answer
>= 500, none outside the documented statuses, content types and schemas) and the broker log has
no panic and no error-level line. The broker logs every answer (tower_http at debug), so the
request count and the status histogram come from the server's side.

    python3 fuzz.py [--max-examples 25] [--max-time 60] [--control]

--control serves the API from a spec with one response status removed (the fuzzer must then
report an undocumented status code), proving the run can fail.
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Broker, Failure, binary, log  # noqa: E402

# Operations that end the very session the pass authenticates with: fuzzed without
# credentials only, or the rest of an authenticated pass would test a revoked session.
SESSION_ENDING = r"^/v1/(session/logout|session/logout-all|sessions/\{id\}/revoke)$"


def schemathesis(schema, base_url, work, name, args, headers=(), extra=()):
    cmd = [os.path.join(os.path.dirname(sys.executable), "schemathesis"), "run", schema,
           "--url", base_url,
           "--checks", "all",
           # The broker validates more than JSON Schema can say (signatures, email and scope
           # shapes, RFC 3339 times it parses, providers it has): a schema-valid request may
           # get a documented 4xx. Integral floats (1.0 for an integer) are refused too.
           "--exclude-checks", "positive_data_acceptance",
           "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(args.max_examples),
           "--max-time", str(args.max_time),
           "--workers", str(args.workers),
           "--request-timeout", "10",
           "--no-color",
           "--suppress-health-check", "all",
           "--report", "junit", "--report-dir", os.path.join(work, f"report-{name}")]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    for h in headers:
        cmd += ["-H", h]
    cmd += list(extra)
    out_path = os.path.join(work, f"schemathesis-{name}.txt")
    with open(out_path, "w") as out:
        p = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work,
                           timeout=args.max_time * 4 + 600)
    text = open(out_path).read()
    summary = re.search(r"^=+ .* in [\d.]+s =+$", text, re.M)
    log(f"pass {name}: exit {p.returncode}; {summary.group(0).strip('= ') if summary else '?'}")
    # A pass that ran out of time before testing every selected operation proves nothing.
    selected = re.search(r"^\s*Selected: (\d+)/", text, re.M)
    tested = re.search(r"^\s*Tested: (\d+)", text, re.M)
    if not (selected and tested and selected.group(1) == tested.group(1)):
        raise Failure(f"pass {name} did not test every selected operation "
                      f"(selected {selected and selected.group(1)}, tested "
                      f"{tested and tested.group(1)}); give it more --max-time")
    return p.returncode, text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-examples", type=int, default=25)
    p.add_argument("--max-time", type=int, default=60, help="seconds per pass (three passes)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int)
    p.add_argument("--control", action="store_true")
    a = p.parse_args()
    if not (1 <= a.max_examples <= 100000 and 1 <= a.max_time <= 86400):
        raise SystemExit("--max-examples 1..100000, --max-time 1..86400")
    work = tempfile.mkdtemp(prefix="agentkeys-fuzz-", dir=os.environ.get("TMPDIR", "/tmp"))
    ok = False
    try:
        run(a, work)
        ok = True
    except Failure as e:
        log(f"FAILED: {e} (outputs in {work})")
    finally:
        if (ok != a.control) or not os.environ.get("RELIABILITY_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    if a.control:
        log("control: the undocumented status was " + ("MISSED" if ok else "caught, as it must be"))
        sys.exit(1 if ok else 0)
    sys.exit(0 if ok else 1)


def run(a, work):
    broker = Broker(work, extra_env={
        # Email sign-in is exercised too: links go to the log instead of an SMTP server.
        "BROKER_EMAIL_DEV_LOG_LINKS": "true",
        # One line per answer, for the request count and the status histogram.
        "BROKER_LOG": "info,tower_http=debug",
    })
    broker.start()
    failures = []
    try:
        fixture = subprocess.run([binary("RELIABILITY_LOAD_BIN"), "sessions", "--url", broker.url],
                                 capture_output=True, text=True, timeout=120)
        if fixture.returncode != 0:
            raise Failure(f"signing in the fixture failed: {fixture.stdout}{fixture.stderr}")
        sessions = json.loads(fixture.stdout)
        spec = requests.get(f"{broker.url}/openapi.json", timeout=10).json()
        if a.control:
            # A status the broker does answer, dropped from the contract.
            del spec["paths"]["/v1/mint-oidc-jwt"]["post"]["responses"]["401"]
        schema = os.path.join(work, "openapi.json")
        with open(schema, "w") as f:
            json.dump(spec, f)
        operations = sum(len([m for m in item if m in ("get", "post", "delete", "put", "patch")])
                         for item in spec["paths"].values())
        log(f"{operations} operations in {broker.url}/openapi.json")

        passes = [("anonymous", [], [])]
        if not a.control:
            # The agent first: the master's pass may suspend or remove it (stateful links).
            passes += [
                ("agent", [f"Authorization: Bearer {sessions['agent']}"],
                 ["--exclude-path-regex", SESSION_ENDING]),
                ("master", [f"Authorization: Bearer {sessions['master']}"],
                 ["--exclude-path-regex", SESSION_ENDING]),
            ]
        for name, headers, extra in passes:
            rc, text = schemathesis(schema, broker.url, work, name, a, headers, extra)
            if rc != 0:
                first = re.search(r"^_{3,} .+ _{3,}$(.|\n){0,1500}", text, re.M)
                failures.append(f"pass {name}: Schemathesis reported failures:\n"
                                + (first.group(0) if first else text[-3000:]))
        # The master's session survived its pass (or the pass fuzzed a revoked session).
        for who in ("master",):
            r = requests.get(f"{broker.url}/v1/session", timeout=10,
                             headers={"Authorization": f"Bearer {sessions[who]}"})
            if not a.control and r.status_code != 200:
                failures.append(f"the {who} session was lost during the run: {r.status_code}")
    finally:
        broker.stop()

    statuses = collections.Counter()
    with open(broker.log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = re.search(r"finished processing request.* status=(\d+)", line)
            if m:
                statuses[int(m.group(1))] += 1
    log(f"broker answered {sum(statuses.values())} requests: "
        + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())))
    server_errors = sum(n for s, n in statuses.items() if s >= 500)
    if server_errors:
        failures.append(f"{server_errors} answers >= 500")
    problems = broker.log_problems()
    if problems:
        failures.append(f"{len(problems)} panic/error line(s) in the broker log: {problems[0]}")
    if failures:
        raise Failure("\n".join(failures))
    verified, _ = broker.audit()
    log(f"fuzz ok: {verified}")


if __name__ == "__main__":
    main()
