-- The per-master audit listing's index, coarse: which blocks of 1,024 consecutive seqs hold at
-- least one event of a master (crate::sqlite::audit::BLOCK_SHIFT). Indexed per event, a mint
-- dirtied one index page of its own master in every commit: with many masters, about half of
-- the commit's pages and of its fsync's wait, on the one writer every mint goes through
-- (docs/performance.md). Now only a master's first event in a block writes an entry.
CREATE TABLE audit_master_blocks (
    master  TEXT NOT NULL,
    block   INTEGER NOT NULL,   -- seq >> 10
    PRIMARY KEY (master, block)
) WITHOUT ROWID;

INSERT INTO audit_master_blocks (master, block)
    SELECT DISTINCT master, seq >> 10 FROM audit_events WHERE master IS NOT NULL
    ORDER BY 1, 2;
DROP INDEX audit_events_master;
