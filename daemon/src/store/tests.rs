#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn placeholder_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (replica, outcome) = Replica::open(&dir.path().join("r.db"), &[1; 32]).unwrap();
    assert_eq!(outcome, OpenOutcome::Opened);
    assert!(replica.state().unwrap().cursor.needs_snapshot());
}
