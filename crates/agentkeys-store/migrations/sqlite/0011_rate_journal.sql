-- Rate-limit windows are counted in the writer's memory (crate::sqlite::limits). Each commit
-- that changed a window appends one row here, in its own transaction: the new count of every
-- window it changed. Every second the changed windows are written to `rate_limits` and these
-- rows deleted, in one transaction; opening the store loads `rate_limits` and replays them.
CREATE TABLE rate_journal (
    id       INTEGER PRIMARY KEY,
    windows  TEXT NOT NULL   -- JSON: [[bucket, window_secs, window_start, count], ...]
);
