//! History only moves forward: whether a snapshot or an incremental batch may be applied at the
//! replica's cursor, or is a verified replay. Pure: the store passes in the cursor and what it
//! remembers of the batches it applied, so every rule is tested without I/O.

use sha2::{Digest, Sha256};

use crate::model::Cursor;

/// How many applied batches the replica remembers (revision and digest), so a replay can be told
/// apart from a different batch at the same revision.
pub const REMEMBERED_BATCHES: u64 = 64;

/// SHA-256 of a batch as central encoded it (base, new revision, every upsert and delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDigest(pub [u8; 32]);

impl BatchDigest {
    pub fn of(encoded_batch: &[u8]) -> BatchDigest {
        BatchDigest(Sha256::digest(encoded_batch).into())
    }
}

/// What the replica remembers of one batch it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedBatch {
    pub base: Cursor,
    pub new_revision: u64,
    pub digest: BatchDigest,
}

/// Why a snapshot or batch would move the replica's history backwards (or sideways).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "epoch {offered} is older than the replica's {current}: central must send its current epoch"
    )]
    StaleEpoch { current: Cursor, offered: u64 },
    #[error("snapshot {target} is older than the replica's {current} in the same epoch")]
    StaleSnapshot { current: Cursor, target: Cursor },
    #[error(
        "a different batch ending at {epoch}:{revision} was already applied (replica at {current}): \
         central's history changed, start a new epoch and send a snapshot"
    )]
    ConflictingBatch {
        current: Cursor,
        epoch: u64,
        revision: u64,
    },
    #[error(
        "replica is at {current}, the batch is based on {base}: send the missing changes or a snapshot"
    )]
    CursorMismatch { current: Cursor, base: Cursor },
    #[error(
        "the batch ends at {epoch}:{revision}, at or before the replica's {current}, and is not one \
         of the last {REMEMBERED_BATCHES} batches applied: continue from the replica's cursor"
    )]
    UnverifiableReplay {
        current: Cursor,
        epoch: u64,
        revision: u64,
    },
}

impl HistoryError {
    /// The replica's cursor, reported to central with every refusal.
    pub fn current(&self) -> Cursor {
        match *self {
            HistoryError::StaleEpoch { current, .. }
            | HistoryError::StaleSnapshot { current, .. }
            | HistoryError::ConflictingBatch { current, .. }
            | HistoryError::CursorMismatch { current, .. }
            | HistoryError::UnverifiableReplay { current, .. } => current,
        }
    }
}

/// A snapshot may replace the replica when its epoch is not older, and within the same epoch its
/// revision is not older. An empty replica takes any snapshot.
pub fn check_snapshot(current: Cursor, target: Cursor) -> Result<(), HistoryError> {
    if current.needs_snapshot() {
        return Ok(());
    }
    if target.epoch < current.epoch {
        return Err(HistoryError::StaleEpoch {
            current,
            offered: target.epoch,
        });
    }
    if target.epoch == current.epoch && target.revision < current.revision {
        return Err(HistoryError::StaleSnapshot { current, target });
    }
    Ok(())
}

/// What to do with an incremental batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchDecision {
    /// Apply it: it continues from the replica's cursor.
    Apply,
    /// The same batch was applied before, or it is central's heartbeat (an empty batch from the
    /// current cursor to the same revision): acknowledge again, change nothing.
    Replay,
}

/// An incremental batch as the history rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base: Cursor,
    pub new_revision: u64,
    /// The batch upserts and deletes nothing.
    pub empty: bool,
    pub digest: BatchDigest,
}

/// Decides on a batch given the replica's cursor and `remembered(revision)`: the applied batch
/// that ended at that revision in the current epoch, if still remembered. A batch is a replay
/// only when it is byte for byte the one applied.
pub fn check_batch(
    current: Cursor,
    batch: &BatchHeader,
    remembered: impl FnOnce(u64) -> Option<AppliedBatch>,
) -> Result<BatchDecision, HistoryError> {
    let BatchHeader {
        base,
        new_revision,
        empty,
        digest,
    } = *batch;
    if current.needs_snapshot() {
        return Err(HistoryError::CursorMismatch { current, base });
    }
    if base.epoch < current.epoch {
        return Err(HistoryError::StaleEpoch {
            current,
            offered: base.epoch,
        });
    }
    if base.epoch > current.epoch {
        return Err(HistoryError::CursorMismatch { current, base });
    }
    if empty && base == current && new_revision == current.revision {
        return Ok(BatchDecision::Replay);
    }
    if new_revision <= current.revision {
        return match remembered(new_revision) {
            Some(applied)
                if applied.digest == digest
                    && applied.base == base
                    && applied.new_revision == new_revision =>
            {
                Ok(BatchDecision::Replay)
            }
            Some(_) => Err(HistoryError::ConflictingBatch {
                current,
                epoch: base.epoch,
                revision: new_revision,
            }),
            None => Err(HistoryError::UnverifiableReplay {
                current,
                epoch: base.epoch,
                revision: new_revision,
            }),
        };
    }
    if base != current {
        return Err(HistoryError::CursorMismatch { current, base });
    }
    Ok(BatchDecision::Apply)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn c(epoch: u64, revision: u64) -> Cursor {
        Cursor { epoch, revision }
    }

    const D1: BatchDigest = BatchDigest([1; 32]);
    const D2: BatchDigest = BatchDigest([2; 32]);

    fn h(base: Cursor, new_revision: u64, empty: bool, digest: BatchDigest) -> BatchHeader {
        BatchHeader {
            base,
            new_revision,
            empty,
            digest,
        }
    }

    fn none(_: u64) -> Option<AppliedBatch> {
        None
    }

    #[test]
    fn snapshot_of_a_lower_epoch_is_stale_even_with_a_higher_revision() {
        assert_eq!(
            check_snapshot(c(2, 1), c(1, 9)),
            Err(HistoryError::StaleEpoch {
                current: c(2, 1),
                offered: 1
            })
        );
        assert_eq!(
            check_snapshot(c(2, 5), c(2, 4)),
            Err(HistoryError::StaleSnapshot {
                current: c(2, 5),
                target: c(2, 4)
            })
        );
        assert_eq!(check_snapshot(c(2, 5), c(2, 5)), Ok(()));
        assert_eq!(check_snapshot(c(2, 5), c(2, 6)), Ok(()));
        assert_eq!(check_snapshot(c(2, 5), c(3, 1)), Ok(()));
        assert_eq!(check_snapshot(Cursor::EMPTY, c(1, 1)), Ok(()));
    }

    #[test]
    fn batch_from_a_lower_epoch_is_stale() {
        let err = check_batch(c(2, 3), &h(c(1, 3), 4, false, D1), none).unwrap_err();
        assert_eq!(
            err,
            HistoryError::StaleEpoch {
                current: c(2, 3),
                offered: 1
            }
        );
        assert_eq!(err.current(), c(2, 3));
        // Even one that looks like an old replay.
        assert!(matches!(
            check_batch(c(2, 3), &h(c(1, 1), 2, false, D1), none),
            Err(HistoryError::StaleEpoch { .. })
        ));
    }

    #[test]
    fn batch_continuing_the_cursor_applies_and_gaps_do_not() {
        assert_eq!(
            check_batch(c(2, 3), &h(c(2, 3), 4, false, D1), none),
            Ok(BatchDecision::Apply)
        );
        assert_eq!(
            check_batch(c(2, 3), &h(c(2, 4), 5, false, D1), none),
            Err(HistoryError::CursorMismatch {
                current: c(2, 3),
                base: c(2, 4)
            })
        );
        assert!(matches!(
            check_batch(c(2, 3), &h(c(3, 3), 4, false, D1), none),
            Err(HistoryError::CursorMismatch { .. })
        ));
        assert!(matches!(
            check_batch(Cursor::EMPTY, &h(c(0, 0), 1, false, D1), none),
            Err(HistoryError::CursorMismatch { .. })
        ));
    }

    #[test]
    fn a_replay_is_acknowledged_only_when_it_is_the_same_batch() {
        let applied = AppliedBatch {
            base: c(2, 3),
            new_revision: 4,
            digest: D1,
        };
        let remembered = |revision: u64| (revision == 4).then_some(applied);
        assert_eq!(
            check_batch(c(2, 5), &h(c(2, 3), 4, false, D1), remembered),
            Ok(BatchDecision::Replay)
        );
        assert_eq!(
            check_batch(c(2, 5), &h(c(2, 3), 4, false, D2), remembered),
            Err(HistoryError::ConflictingBatch {
                current: c(2, 5),
                epoch: 2,
                revision: 4
            })
        );
        // Same contents, another base: not the batch that was applied.
        assert!(matches!(
            check_batch(c(2, 5), &h(c(2, 2), 4, false, D1), remembered),
            Err(HistoryError::ConflictingBatch { .. })
        ));
        // Nothing remembered at that revision (reached by a snapshot, or long ago).
        assert_eq!(
            check_batch(c(2, 5), &h(c(2, 2), 3, false, D1), remembered),
            Err(HistoryError::UnverifiableReplay {
                current: c(2, 5),
                epoch: 2,
                revision: 3
            })
        );
    }

    #[test]
    fn an_empty_batch_at_the_current_cursor_is_a_heartbeat() {
        assert_eq!(
            check_batch(c(2, 5), &h(c(2, 5), 5, true, D1), none),
            Ok(BatchDecision::Replay)
        );
        // Not empty: a different batch at the current revision.
        assert!(matches!(
            check_batch(c(2, 5), &h(c(2, 5), 5, false, D1), none),
            Err(HistoryError::UnverifiableReplay { .. })
        ));
        // Empty but from an older base: not a heartbeat, nor a remembered batch.
        assert!(matches!(
            check_batch(c(2, 5), &h(c(2, 4), 5, true, D1), none),
            Err(HistoryError::UnverifiableReplay { .. })
        ));
    }

    #[test]
    fn digest_depends_on_every_byte() {
        assert_eq!(BatchDigest::of(b"abc"), BatchDigest::of(b"abc"));
        assert_ne!(BatchDigest::of(b"abc"), BatchDigest::of(b"abd"));
    }
}
