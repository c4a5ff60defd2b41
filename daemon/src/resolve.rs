//! First-match resolution and permission merging: pure functions, no I/O.
//!
//! Rules (the README's "first match" section):
//! 1. Among the users whose credential matches, the first by (`ordinal`, `id`) that is active
//!    and assigned to this terminal logs in.
//! 2. If only inactive or unassigned users match, the attempt is refused with the reason of the
//!    first of them.
//! 3. No match at all says nothing about users.
//! 4. Effective permissions are the union of the ALLOWs of the roles that apply here, minus
//!    every permission any of them DENYs.

use std::collections::BTreeSet;
use std::fmt;

use crate::model::Effect;

/// A user whose credential matched the secret, with what decides whether it may log in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub user_id: String,
    pub ordinal: i64,
    pub active: bool,
    pub assigned_here: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialReason {
    Inactive,
    NoAccessHere,
}

impl fmt::Display for DenialReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenialReason::Inactive => "user inactive",
            DenialReason::NoAccessHere => "no access to this Sales Point",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// This user logs in.
    Accepted {
        user_id: String,
    },
    /// Only users who may not log in here matched; the first one's reason.
    Denied {
        user_id: String,
        reason: DenialReason,
    },
    NoMatch,
}

/// May a user log in at this terminal: active, and assigned here (to this Sales Point or this
/// sub-terminal: the store's `ACCESS_HERE`). The one place this is decided — resolution, the
/// re-check before a session starts, the session's re-evaluation after a sync, `explain` and the
/// users-at-terminal count all ask it.
pub fn may_log_in(active: bool, assigned_here: bool) -> Result<(), DenialReason> {
    if !active {
        Err(DenialReason::Inactive)
    } else if !assigned_here {
        Err(DenialReason::NoAccessHere)
    } else {
        Ok(())
    }
}

impl Candidate {
    fn may_log_in(&self) -> Result<(), DenialReason> {
        may_log_in(self.active, self.assigned_here)
    }
}

/// Applies rules 1–3 to the users whose credential matched, in any order.
pub fn resolve(mut candidates: Vec<Candidate>) -> Resolution {
    candidates.sort_by(|a, b| (a.ordinal, &a.user_id).cmp(&(b.ordinal, &b.user_id)));
    let mut first_refusal = None;
    for candidate in candidates {
        match candidate.may_log_in() {
            Ok(()) => {
                return Resolution::Accepted {
                    user_id: candidate.user_id,
                };
            }
            Err(reason) => {
                first_refusal.get_or_insert(Resolution::Denied {
                    user_id: candidate.user_id,
                    reason,
                });
            }
        }
    }
    first_refusal.unwrap_or(Resolution::NoMatch)
}

/// Merges the permissions of the roles that apply at this terminal: a denial beats a permission.
pub fn effective_permissions<'a>(
    grants: impl IntoIterator<Item = (&'a str, Effect)>,
) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for (name, effect) in grants {
        match effect {
            Effect::Allow => allowed.insert(name),
            Effect::Deny => denied.insert(name),
        };
    }
    allowed
        .difference(&denied)
        .map(|name| (*name).to_owned())
        .collect()
}

/// Does an assignment scoped to `scope` (None: account-wide) apply at this Sales Point?
pub fn assignment_applies(scope: Option<&str>, sales_point_id: &str) -> bool {
    scope.is_none_or(|sp| sp == sales_point_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cand(id: &str, ordinal: i64, active: bool, assigned: bool) -> Candidate {
        Candidate {
            user_id: id.into(),
            ordinal,
            active,
            assigned_here: assigned,
        }
    }

    #[test]
    fn may_log_in_needs_active_and_assigned_inactive_first() {
        assert_eq!(may_log_in(true, true), Ok(()));
        assert_eq!(may_log_in(false, true), Err(DenialReason::Inactive));
        assert_eq!(may_log_in(true, false), Err(DenialReason::NoAccessHere));
        assert_eq!(may_log_in(false, false), Err(DenialReason::Inactive));
    }

    #[test]
    fn rule1_first_active_assigned_by_ordinal_wins() {
        let r = resolve(vec![
            cand("zed", 2, true, true),
            cand("amy", 1, true, true),
            cand("bob", 0, false, true),
        ]);
        assert_eq!(
            r,
            Resolution::Accepted {
                user_id: "amy".into()
            }
        );
    }

    #[test]
    fn rule1_equal_ordinals_break_ties_by_id() {
        let r = resolve(vec![cand("b", 5, true, true), cand("a", 5, true, true)]);
        assert_eq!(
            r,
            Resolution::Accepted {
                user_id: "a".into()
            }
        );
    }

    #[test]
    fn rule2_only_ineligible_users_give_first_users_reason() {
        let r = resolve(vec![
            cand("late", 9, true, false),
            cand("early", 1, false, true),
        ]);
        assert_eq!(
            r,
            Resolution::Denied {
                user_id: "early".into(),
                reason: DenialReason::Inactive
            }
        );
        let r = resolve(vec![cand("x", 1, true, false)]);
        assert_eq!(
            r,
            Resolution::Denied {
                user_id: "x".into(),
                reason: DenialReason::NoAccessHere
            }
        );
        assert_eq!(
            DenialReason::NoAccessHere.to_string(),
            "no access to this Sales Point"
        );
        assert_eq!(DenialReason::Inactive.to_string(), "user inactive");
    }

    #[test]
    fn inactive_and_unassigned_reports_inactive() {
        let r = resolve(vec![cand("x", 1, false, false)]);
        assert!(matches!(
            r,
            Resolution::Denied {
                reason: DenialReason::Inactive,
                ..
            }
        ));
    }

    #[test]
    fn rule3_no_candidates_is_no_match() {
        assert_eq!(resolve(vec![]), Resolution::NoMatch);
    }

    #[test]
    fn rule4_denial_beats_permission_across_roles() {
        let perms = effective_permissions([
            ("sale.create", Effect::Allow),
            ("drawer.open", Effect::Allow),
            ("drawer.open", Effect::Deny),
            ("refund.create", Effect::Deny),
        ]);
        assert_eq!(perms.into_iter().collect::<Vec<_>>(), vec!["sale.create"]);
    }

    #[test]
    fn assignment_scope() {
        assert!(assignment_applies(None, "sp1"));
        assert!(assignment_applies(Some("sp1"), "sp1"));
        assert!(!assignment_applies(Some("sp2"), "sp1"));
    }

    proptest! {
        #[test]
        fn winner_is_order_independent(mut users in proptest::collection::vec((0i64..5, "[a-d]", any::<bool>(), any::<bool>()), 0..8)) {
            users.sort();
            users.dedup_by(|a, b| a.1 == b.1);
            let list: Vec<Candidate> = users.iter().map(|(o, id, a, s)| cand(id, *o, *a, *s)).collect();
            let mut reversed = list.clone();
            reversed.reverse();
            prop_assert_eq!(resolve(list), resolve(reversed));
        }

        #[test]
        fn denied_never_granted(grants in proptest::collection::vec(("[a-c]", any::<bool>()), 0..12)) {
            let input: Vec<(&str, Effect)> = grants.iter().map(|(n, allow)| (n.as_str(), if *allow { Effect::Allow } else { Effect::Deny })).collect();
            let perms = effective_permissions(input.clone());
            for (name, effect) in input {
                if effect == Effect::Deny {
                    prop_assert!(!perms.contains(name));
                }
            }
        }
    }
}
