//! Local store schema, versioned with `PRAGMA user_version` like the replica's. The table
//! definitions are those the single-file releases kept in the replica (schema versions 1–3),
//! so the rows copy over as they are.

pub const MIGRATIONS: &[&str] = &[
    // 1: identity, sync tokens, the audit outbox, the failed-attempt counters.
    r#"
    -- stream_id: the audit stream's random id, made with this file (see PullAuditEvents).
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- Sync bearer tokens: only SHA-256 digests of 256-bit random tokens are kept.
    CREATE TABLE sync_tokens (
        name       TEXT PRIMARY KEY,
        digest     BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );

    -- Append-only; rows are deleted only once central acknowledges them (a prefix by seq).
    -- AUTOINCREMENT: a seq is never reused, also after the rows before it were deleted.
    -- Never holds a PIN or a key id.
    CREATE TABLE audit_events (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        uuid            TEXT NOT NULL UNIQUE,
        at_ms           INTEGER NOT NULL,
        kind            TEXT NOT NULL,
        method          INTEGER CHECK (method IN (1, 2)),
        source          TEXT NOT NULL,
        outcome         TEXT NOT NULL,
        user_id         TEXT,
        session_user_id TEXT,
        permission      TEXT,
        reason          TEXT NOT NULL
    );

    -- One row per input source (and one for the whole terminal) with failed attempts,
    -- a running lockout or remembered strikes. Times are Unix milliseconds.
    CREATE TABLE lockouts (
        scope           TEXT PRIMARY KEY,
        failures        INTEGER NOT NULL,
        window_start_ms INTEGER NOT NULL,
        strikes         INTEGER NOT NULL,
        locked_until_ms INTEGER NOT NULL,
        last_failure_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2: the guess throttle replaces the window counters (see `lockout.rs`): times on the
    // monotonic clock of the boot that wrote them (`boot`, hex), the terminal budget's level in
    // thousandths of a failure. Counters of the old shape are carried over by the legacy copy
    // only (a local store of schema 1 never ran with them).
    r#"
    DROP TABLE lockouts;
    CREATE TABLE lockouts (
        scope           TEXT PRIMARY KEY,
        failures        INTEGER NOT NULL,
        level_milli     INTEGER NOT NULL,
        boot            TEXT NOT NULL,
        updated_ms      INTEGER NOT NULL,
        locked_until_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 3: enrolment rows carry the new credential's PHC string (a hash, never the secret) and
    // who approved it.
    r#"
    ALTER TABLE audit_events ADD COLUMN phc TEXT;
    ALTER TABLE audit_events ADD COLUMN authorizer TEXT;
    "#,
    // 4: audit coalescing (see `coalesce.rs`). A streak row per budget scope whose first hashed
    // failure since its last success has its own row; the later ones are counted per label
    // ("login.no_match") in the transaction that records them, until their summary row.
    r#"
    CREATE TABLE failure_streaks (
        scope    TEXT PRIMARY KEY,
        method   INTEGER NOT NULL CHECK (method IN (1, 2)),
        first_ms INTEGER,
        last_ms  INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE coalesced_failures (
        scope TEXT NOT NULL,
        label TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (scope, label)
    ) WITHOUT ROWID;
    "#,
    // 5: streaks end when idle: `idle` is set by each `audit.summary_interval` tick and cleared by
    // the scope's next wrong credential; a tick that finds it set deletes the streak (see
    // `summary.rs`), so the table holds only the scopes that failed in the last interval or two.
    r#"
    ALTER TABLE failure_streaks ADD COLUMN idle INTEGER NOT NULL DEFAULT 0;
    "#,
];
