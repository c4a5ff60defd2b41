//! Replica schema, versioned with `PRAGMA user_version`. Migrations run at start in one
//! transaction; each entry upgrades from the previous version.
//!
//! Versions 1–3 held the terminal's own state as well (tokens, audit outbox, lockouts); version
//! 4 drops those tables once the local store has copied them (see `store::local::legacy`), or
//! after the whole file was copied aside when it did not (`store::replica::legacy`).

pub const MIGRATIONS: &[&str] = &[
    // 1: users, roles, credentials, access, sync tokens.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE roles (
        id   TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        rank INTEGER NOT NULL
    );

    CREATE TABLE role_permissions (
        role_id    TEXT NOT NULL REFERENCES roles(id) ON DELETE CASCADE,
        permission TEXT NOT NULL,
        effect     INTEGER NOT NULL CHECK (effect IN (1, 2)),
        PRIMARY KEY (role_id, permission, effect)
    ) WITHOUT ROWID;

    CREATE TABLE users (
        id         TEXT PRIMARY KEY,
        ordinal    INTEGER NOT NULL,
        first_name TEXT NOT NULL,
        last_name  TEXT NOT NULL,
        email      TEXT NOT NULL,
        active     INTEGER NOT NULL CHECK (active IN (0, 1))
    );

    -- digest = HMAC-SHA256(terminal key, argon2id(secret, salt, m, t, p)); login looks it up by
    -- (kind, digest) after one argon2 evaluation per distinct scheme.
    CREATE TABLE credentials (
        user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind       INTEGER NOT NULL CHECK (kind IN (1, 2)),
        m_cost     INTEGER NOT NULL,
        t_cost     INTEGER NOT NULL,
        p_cost     INTEGER NOT NULL,
        output_len INTEGER NOT NULL,
        salt       BLOB NOT NULL,
        digest     BLOB NOT NULL
    );
    CREATE INDEX credentials_by_digest ON credentials(kind, digest);
    CREATE INDEX credentials_by_user ON credentials(user_id);

    -- sales_point_id '' means account-wide.
    CREATE TABLE user_roles (
        user_id        TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        role_id        TEXT NOT NULL REFERENCES roles(id),
        sales_point_id TEXT NOT NULL,
        PRIMARY KEY (user_id, role_id, sales_point_id)
    ) WITHOUT ROWID;
    CREATE INDEX user_roles_by_role ON user_roles(role_id);

    -- kind 1: Sales Point id, kind 2: sub-terminal id.
    CREATE TABLE user_access (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        kind    INTEGER NOT NULL CHECK (kind IN (1, 2)),
        target  TEXT NOT NULL,
        PRIMARY KEY (user_id, kind, target)
    ) WITHOUT ROWID;
    CREATE INDEX user_access_by_target ON user_access(kind, target);

    -- Sync bearer tokens: only SHA-256 digests of 256-bit random tokens are kept.
    CREATE TABLE sync_tokens (
        name       TEXT PRIMARY KEY,
        digest     BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // 2: the audit outbox and the failed-attempt counters (session policy).
    r#"
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
    // 3: the distinct hash schemes are walked through this index, one seek each, instead of a
    // scan of every credential on the first login after each sync change.
    r#"
    CREATE INDEX credentials_by_scheme
        ON credentials(kind, m_cost, t_cost, p_cost, output_len, salt);
    "#,
    // 4: the terminal's own state lives in the local store, which copied these tables before
    // this migration runs (the local store opens first); if it did not, the file was copied
    // aside first (legacy.rs).
    r#"
    DROP TABLE sync_tokens;
    DROP TABLE audit_events;
    DROP TABLE lockouts;
    "#,
    // 5: the last batches applied (digest of central's encoding), so a replay is acknowledged only
    // when it is the same batch. A snapshot empties it.
    r#"
    CREATE TABLE applied_batches (
        epoch         INTEGER NOT NULL,
        revision      INTEGER NOT NULL,
        base_revision INTEGER NOT NULL,
        digest        BLOB NOT NULL,
        PRIMARY KEY (epoch, revision)
    ) WITHOUT ROWID;
    "#,
];

/// The schema version this build writes.
#[cfg(test)]
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}
