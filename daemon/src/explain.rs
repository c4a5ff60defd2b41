//! "Why can't this user log in here?" as data, and the report of shared PINs and keys: pure
//! functions over facts the store reads, no I/O.
//!
//! Shared credentials are visible because central hashes every secret of an account with one
//! salt: equal secrets give equal digests. Credentials hashed under different salts or costs
//! cannot be compared, and are not reported as shared.

use std::collections::HashSet;

use crate::model::CredentialKind;
use crate::resolve::{Candidate, Resolution, may_log_in, resolve};

/// A user as the checklist shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub user_id: String,
    pub first_name: String,
    pub last_name: String,
    pub ordinal: i64,
    pub active: bool,
    pub assigned_here: bool,
}

impl Person {
    fn candidate(&self) -> Candidate {
        Candidate {
            user_id: self.user_id.clone(),
            ordinal: self.ordinal,
            active: self.active,
            assigned_here: self.assigned_here,
        }
    }
}

/// What the replica holds about the user being explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub person: Person,
    pub assigned_to_sales_point: bool,
    pub assigned_to_sub_terminal: bool,
    /// Roles and effective permissions at this terminal.
    pub role_ids: Vec<String>,
    pub permissions: Vec<String>,
}

/// One credential of the user, with everyone holding the same secret (the user included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCredential {
    pub kind: CredentialKind,
    /// 0 for the PIN, 1-based position among the user's keys.
    pub index: u32,
    pub holders: Vec<Person>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialCheck {
    pub kind: CredentialKind,
    pub index: u32,
    pub shared_with: Vec<Person>,
    /// Who logs in here when it is presented.
    pub logs_in: Option<Person>,
    pub wins: bool,
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub user_id: String,
    pub facts: Option<UserFacts>,
    pub has_pin: bool,
    pub keys: u32,
    pub credentials: Vec<CredentialCheck>,
    pub can_log_in: bool,
    pub problems: Vec<String>,
}

fn order(people: &mut [Person]) {
    people.sort_by(|a, b| (a.ordinal, &a.user_id).cmp(&(b.ordinal, &b.user_id)));
}

fn label(kind: CredentialKind, index: u32) -> String {
    match kind {
        CredentialKind::Pin => "PIN".to_owned(),
        CredentialKind::Key => format!("key {index}"),
    }
}

fn check(user_id: &str, held: HeldCredential) -> CredentialCheck {
    let mut holders = held.holders;
    order(&mut holders);
    let resolution = resolve(holders.iter().map(Person::candidate).collect());
    let find = |id: &str| holders.iter().find(|p| p.user_id == id).cloned();
    let (logs_in, outcome) = match &resolution {
        Resolution::Accepted { user_id: winner } if winner == user_id => {
            (find(winner), "logs in as this user".to_owned())
        }
        Resolution::Accepted { user_id: winner } => {
            let ordinal = find(winner).map(|p| p.ordinal).unwrap_or_default();
            (
                find(winner),
                format!(
                    "logs in as {winner} instead (shares it and comes first: ordinal {ordinal})"
                ),
            )
        }
        Resolution::Denied {
            user_id: first,
            reason,
        } if first == user_id => (None, format!("refused: {reason}")),
        Resolution::Denied {
            user_id: first,
            reason,
        } => (
            None,
            format!("refused: {reason} (of {first}, who holds it too and comes first)"),
        ),
        Resolution::NoMatch => (None, "matches nobody".to_owned()),
    };
    let wins = logs_in.as_ref().is_some_and(|p| p.user_id == user_id);
    CredentialCheck {
        kind: held.kind,
        index: held.index,
        shared_with: holders
            .into_iter()
            .filter(|p| p.user_id != user_id)
            .collect(),
        logs_in,
        wins,
        outcome,
    }
}

/// The checklist: present, active, assigned here, has a PIN / a key, roles and permissions here,
/// and for each credential who logs in with it here.
pub fn explain(
    user_id: &str,
    facts: Option<UserFacts>,
    credentials: Vec<HeldCredential>,
    sales_point_id: &str,
    sub_terminal_id: Option<&str>,
) -> Explanation {
    let Some(facts) = facts else {
        return Explanation {
            user_id: user_id.to_owned(),
            facts: None,
            has_pin: false,
            keys: 0,
            credentials: vec![],
            can_log_in: false,
            problems: vec![format!(
                "user \"{user_id}\" is not in this terminal's replica (not synced yet, or deleted by central)"
            )],
        };
    };
    let has_pin = credentials.iter().any(|c| c.kind == CredentialKind::Pin);
    let keys = credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::Key)
        .count() as u32;
    let checks: Vec<CredentialCheck> = credentials.into_iter().map(|c| check(user_id, c)).collect();
    let mut problems = Vec::new();
    if !facts.person.active {
        problems.push("user is inactive".to_owned());
    }
    if !facts.person.assigned_here {
        let place = match sub_terminal_id {
            Some(sub) => format!("Sales Point \"{sales_point_id}\" nor to sub-terminal \"{sub}\""),
            None => format!("Sales Point \"{sales_point_id}\""),
        };
        problems.push(format!("user is not assigned to {place}"));
    }
    if !has_pin && keys == 0 {
        problems.push("user has no PIN and no key".to_owned());
    }
    if facts.role_ids.is_empty() {
        problems.push(format!(
            "no role of the user applies at Sales Point \"{sales_point_id}\""
        ));
    } else if facts.permissions.is_empty() {
        problems
            .push("the user's roles here grant no permission (or deny all they grant)".to_owned());
    }
    if may_log_in(facts.person.active, facts.person.assigned_here).is_ok() {
        for c in checks.iter().filter(|c| !c.wins) {
            problems.push(format!("{}: {}", label(c.kind, c.index), c.outcome));
        }
    }
    Explanation {
        user_id: user_id.to_owned(),
        can_log_in: checks.iter().any(|c| c.wins),
        facts: Some(facts),
        has_pin,
        keys,
        credentials: checks,
        problems,
    }
}

/// Users sharing one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub kind: CredentialKind,
    /// Everyone holding it, in resolution order.
    pub members: Vec<Person>,
    pub winner: Option<Person>,
}

/// From groups of users holding one equal credential (one group per distinct digest), the ones
/// where at least two users are assigned to this terminal, with who logs in. Ordered PINs first,
/// then by the winner's (or first member's) order.
pub fn collisions(groups: Vec<(CredentialKind, Vec<Person>)>) -> Vec<Collision> {
    let mut out: Vec<Collision> = groups
        .into_iter()
        .filter_map(|(kind, mut members)| {
            order(&mut members);
            let mut seen = HashSet::new();
            members.retain(|p| seen.insert(p.user_id.clone()));
            if members.iter().filter(|p| p.assigned_here).count() < 2 {
                return None;
            }
            let winner = match resolve(members.iter().map(Person::candidate).collect()) {
                Resolution::Accepted { user_id } => {
                    members.iter().find(|p| p.user_id == user_id).cloned()
                }
                _ => None,
            };
            Some(Collision {
                kind,
                members,
                winner,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        let key = |c: &Collision| {
            let p = c.winner.as_ref().or(c.members.first());
            (c.kind, p.map(|p| (p.ordinal, p.user_id.clone())))
        };
        key(a).cmp(&key(b))
    });
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn person(id: &str, ordinal: i64, active: bool, here: bool) -> Person {
        Person {
            user_id: id.into(),
            first_name: id.to_uppercase(),
            last_name: String::new(),
            ordinal,
            active,
            assigned_here: here,
        }
    }

    fn facts(p: Person) -> UserFacts {
        UserFacts {
            assigned_to_sales_point: p.assigned_here,
            assigned_to_sub_terminal: false,
            person: p,
            role_ids: vec!["cashier".into()],
            permissions: vec!["sale.create".into()],
        }
    }

    fn pin(holders: Vec<Person>) -> HeldCredential {
        HeldCredential {
            kind: CredentialKind::Pin,
            index: 0,
            holders,
        }
    }

    #[test]
    fn absent_user_is_the_only_problem() {
        let e = explain("ghost", None, vec![], "sp", None);
        assert!(!e.can_log_in);
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].contains("not in this terminal's replica"),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn a_user_who_wins_with_their_pin_has_no_problems() {
        let ben = person("ben", 20, true, true);
        let e = explain(
            "ben",
            Some(facts(ben.clone())),
            vec![pin(vec![ben])],
            "sp",
            None,
        );
        assert!(e.can_log_in && e.has_pin && e.keys == 0);
        assert!(e.problems.is_empty(), "{:?}", e.problems);
        assert_eq!(e.credentials[0].outcome, "logs in as this user");
    }

    #[test]
    fn a_shared_pin_names_who_wins_first() {
        let anna = person("anna", 10, true, true);
        let ben = person("ben", 20, true, true);
        let e = explain(
            "ben",
            Some(facts(ben.clone())),
            vec![pin(vec![ben, anna.clone()])],
            "sp",
            None,
        );
        assert!(!e.can_log_in);
        let c = &e.credentials[0];
        assert_eq!(c.logs_in.as_ref().unwrap().user_id, "anna");
        assert_eq!(c.shared_with, vec![anna]);
        assert!(!c.wins);
        assert_eq!(
            e.problems,
            vec!["PIN: logs in as anna instead (shares it and comes first: ordinal 10)"]
        );
    }

    #[test]
    fn an_earlier_inactive_holder_does_not_shadow() {
        let dora = person("dora", 1, false, true);
        let ben = person("ben", 20, true, true);
        let e = explain(
            "ben",
            Some(facts(ben.clone())),
            vec![pin(vec![dora, ben])],
            "sp",
            None,
        );
        assert!(e.can_log_in);
    }

    #[test]
    fn inactive_and_unassigned_users_list_every_failed_check() {
        let erik = person("erik", 5, false, false);
        let mut f = facts(erik.clone());
        f.role_ids.clear();
        f.permissions.clear();
        let e = explain("erik", Some(f), vec![], "sp", Some("sp-2"));
        assert_eq!(
            e.problems,
            vec![
                "user is inactive",
                "user is not assigned to Sales Point \"sp\" nor to sub-terminal \"sp-2\"",
                "user has no PIN and no key",
                "no role of the user applies at Sales Point \"sp\"",
            ]
        );
        let e = explain(
            "erik",
            Some(facts(erik.clone())),
            vec![pin(vec![erik])],
            "sp",
            None,
        );
        assert_eq!(e.credentials[0].outcome, "refused: user inactive");
    }

    #[test]
    fn keys_are_checked_one_by_one() {
        let max = person("max", 1, true, true);
        let fay = person("fay", 0, true, true);
        let creds = vec![
            HeldCredential {
                kind: CredentialKind::Key,
                index: 1,
                holders: vec![max.clone()],
            },
            HeldCredential {
                kind: CredentialKind::Key,
                index: 2,
                holders: vec![max.clone(), fay],
            },
        ];
        let e = explain("max", Some(facts(max)), creds, "sp", None);
        assert!(e.can_log_in && !e.has_pin && e.keys == 2);
        assert!(e.credentials[0].wins && !e.credentials[1].wins);
        assert_eq!(e.problems.len(), 1);
        assert!(
            e.problems[0].starts_with("key 2: logs in as fay"),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn collisions_need_two_users_at_this_terminal() {
        let groups = vec![
            (
                CredentialKind::Pin,
                vec![
                    person("ben", 20, true, true),
                    person("anna", 10, true, true),
                ],
            ),
            // Only one of them is here: not a collision at this terminal.
            (
                CredentialKind::Pin,
                vec![person("x", 1, true, true), person("y", 2, true, false)],
            ),
            (
                CredentialKind::Key,
                vec![
                    person("dora", 1, false, true),
                    person("carl", 3, true, true),
                ],
            ),
            // Both here but neither may log in.
            (
                CredentialKind::Pin,
                vec![person("i1", 7, false, true), person("i2", 8, false, true)],
            ),
        ];
        let report = collisions(groups);
        assert_eq!(report.len(), 3);
        assert_eq!(report[0].kind, CredentialKind::Pin);
        let ids = |c: &Collision| {
            c.members
                .iter()
                .map(|p| p.user_id.clone())
                .collect::<Vec<_>>()
        };
        // PINs first, ordered by who wins (or the first holder when nobody may).
        assert_eq!(ids(&report[0]), vec!["i1", "i2"]);
        assert!(report[0].winner.is_none());
        assert_eq!(ids(&report[1]), vec!["anna", "ben"]);
        assert_eq!(report[1].winner.as_ref().unwrap().user_id, "anna");
        assert_eq!(report[2].kind, CredentialKind::Key);
        assert_eq!(report[2].winner.as_ref().unwrap().user_id, "carl");
    }
}
