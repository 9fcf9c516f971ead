-- Rate-limit windows are counted in the writer's memory (crate::sqlite::limits). Each commit
-- that changed a window appends one row here, in its own transaction: the new count of every
-- window it changed. About every second a fold writes the changed windows to `rate_limits`, a
-- chunk per commit, and then deletes the rows written before it started; opening the store
-- loads `rate_limits` and replays these rows.
CREATE TABLE rate_journal (
    id       INTEGER PRIMARY KEY,
    windows  TEXT NOT NULL   -- JSON: [[bucket, window_secs, window_start, count], ...]
);
