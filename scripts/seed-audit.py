#!/usr/bin/env python3
"""Appends N mint events to a broker's SQLite audit log, as a valid continuation of its chain.

    scripts/seed-audit.py DATABASE N [--masters M]

For benchmarks only (scripts/bench-curves.sh): it makes a log of millions of events in minutes,
where minting them through the broker would take hours on a small machine. The broker must not
be running. Each event is shaped like a real mint's (actor and master one of M synthetic
masters, the details a mint writes) and hashed as the broker hashes (RFC 8785 canonical form,
`hash_format` 2), so `agentkeys-broker audit verify` still passes afterwards. Each master's
blocks of 1,024 seqs go into the per-master listing's index (`audit_master_blocks`), as the
broker's appends do.
"""

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time

GENESIS = "0" * 64
BATCH = 50_000


def canonical(seq, ev):
    # RFC 8785 for what these events hold (ASCII strings, small integers, null): sorted keys,
    # no whitespace; Python's json writes exactly that.
    obj = dict(ev, seq=seq)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("database")
    p.add_argument("events", type=int)
    p.add_argument("--masters", type=int, default=10_000)
    a = p.parse_args()
    if a.events < 0 or a.events > 50_000_000 or a.masters < 1:
        sys.exit("seed-audit: events must be 0..50,000,000 and masters at least 1")
    db = sqlite3.connect(a.database, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 10000")
    db.execute("BEGIN IMMEDIATE")
    head = db.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = head if head else (0, GENESIS)
    masters = [hashlib.sha256(b"seed-master-%d" % i).hexdigest() for i in range(a.masters)]
    now = int(time.time())
    sql = ("INSERT INTO audit_events (seq, time, kind, actor, master, outcome, details, "
           "prev_hash, hash, hash_format) VALUES (?, ?, 'mint', ?, ?, 'ok', ?, ?, ?, 2)")
    rows = []
    for i in range(a.events):
        seq += 1
        t = now - (a.events - i) // 1000
        m = masters[i % a.masters]
        details = {"aud": "sts.amazonaws.com", "exp": t + 900, "grant": None,
                   "jti": os.urandom(16).hex(), "kid": "seed", "role_arn": None,
                   "session": m[:16]}
        ev = {"actor": m, "details": details, "kind": "mint", "master": m, "outcome": "ok",
              "time": t}
        h = hashlib.sha256((prev + canonical(seq, ev)).encode()).hexdigest()
        rows.append((seq, t, m, m, json.dumps(details, separators=(",", ":")), prev, h))
        prev = h
        if len(rows) == BATCH:
            db.executemany(sql, rows)
            rows.clear()
    db.executemany(sql, rows)
    # The listing's index, as crate::sqlite::audit::BLOCK_SHIFT defines it.
    db.execute("INSERT OR IGNORE INTO audit_master_blocks (master, block) "
               "SELECT DISTINCT master, seq >> 10 FROM audit_events WHERE seq > ?",
               (seq - a.events,))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    print(f"seeded {a.events} events; head seq {seq}")


if __name__ == "__main__":
    main()
