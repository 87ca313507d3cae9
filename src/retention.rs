//! Retention: which complete backups a `prune` keeps, as a pure function (backups in, a
//! keep/remove decision with its reasons out), applied to each namespace/PVC on its own.
//!
//! The policy is restic's `forget` policy ("Removing snapshots according to a policy",
//! restic docs; rules as in restic 0.17's `internal/restic/snapshot_policy.go`):
//! - the backups of one PVC are sorted newest first;
//! - `--keep-last n` keeps the n newest;
//! - `--keep-hourly/daily/weekly/monthly n` keep, for the last n hours/days/weeks/months that
//!   hold one or more backups (counted from the newest backup, not from now), the newest
//!   backup of each; weeks are ISO 8601 weeks (Monday first, the week-year at year ends);
//! - a rule whose count is not used up when the oldest backup is reached keeps that oldest
//!   backup too ("oldest daily"), so a young history is not thinned below what was asked
//!   (restic 0.17: "If there are not enough snapshots to keep one for each duration related
//!   --keep-* option, the oldest snapshot in the group is kept additionally");
//! - a backup kept by several rules lists every reason.
//!
//! Unlike restic, which buckets by the local time of the machine running `forget`, buckets
//! here are UTC days, weeks and months: the same destination prunes the same way from every
//! machine, and backup ids and `created` are UTC already.
//!
//! On top of the policy, the newest complete backup of a PVC is never removed (with any
//! `--keep-*` above zero the rules keep it anyway; this holds it even if they change).

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

/// How many backups each rule keeps; 0 = the rule is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Policy {
    /// Whether any rule is on: an empty policy would keep only the newest backups, which is
    /// never what someone who forgot a flag meant (restic refuses it too).
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(_, n)| *n == 0)
    }

    fn rules(&self) -> [(Rule, u32); 5] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Rule {
    /// The bucket a backup falls in; `index` makes every backup its own bucket for
    /// `--keep-last`.
    fn bucket(self, t: DateTime<Utc>, index: usize) -> i64 {
        let (y, m, d, h) = (
            t.year() as i64,
            t.month() as i64,
            t.day() as i64,
            t.hour() as i64,
        );
        match self {
            Rule::Last => index as i64,
            Rule::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Rule::Daily => (y * 100 + m) * 100 + d,
            Rule::Weekly => {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }
            Rule::Monthly => y * 100 + m,
        }
    }

    fn reason(self, oldest: bool) -> Reason {
        match (self, oldest) {
            (Rule::Last, _) => Reason::Last,
            (Rule::Hourly, false) => Reason::Hourly,
            (Rule::Daily, false) => Reason::Daily,
            (Rule::Weekly, false) => Reason::Weekly,
            (Rule::Monthly, false) => Reason::Monthly,
            (Rule::Hourly, true) => Reason::OldestHourly,
            (Rule::Daily, true) => Reason::OldestDaily,
            (Rule::Weekly, true) => Reason::OldestWeekly,
            (Rule::Monthly, true) => Reason::OldestMonthly,
        }
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    OldestHourly,
    OldestDaily,
    OldestWeekly,
    OldestMonthly,
    /// The newest complete backup of its PVC, which is never removed.
    NewestComplete,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Last => "last",
            Reason::Hourly => "hourly",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::OldestHourly => "oldest-hourly",
            Reason::OldestDaily => "oldest-daily",
            Reason::OldestWeekly => "oldest-weekly",
            Reason::OldestMonthly => "oldest-monthly",
            Reason::NewestComplete => "newest-complete",
        }
    }
}

/// A complete backup of one PVC, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub namespace: String,
    pub pvc: String,
    /// The header's `created`.
    pub created: DateTime<Utc>,
}

/// The decision for `candidates[index]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub index: usize,
    /// Empty: remove.
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Newest first: by `created`, the id breaking ties between equal timestamps (an id starts
/// with the same time and ends in random hex).
fn newer_first(x: &Candidate, y: &Candidate) -> std::cmp::Ordering {
    y.created.cmp(&x.created).then(y.id.cmp(&x.id))
}

/// The newest of the backups of `namespace/pvc` among `candidates` (all complete), in the
/// order [`plan`] counts them: what `drill --latest` drills and what prune never removes.
pub fn newest<'a>(
    candidates: &'a [Candidate],
    namespace: &str,
    pvc: &str,
) -> Option<&'a Candidate> {
    candidates
        .iter()
        .filter(|c| c.namespace == namespace && c.pvc == pvc)
        .min_by(|x, y| newer_first(x, y))
}

/// Decides, for every candidate, keep (with reasons) or remove. Output order: by namespace,
/// PVC, then newest first.
pub fn plan(policy: &Policy, candidates: &[Candidate]) -> Vec<Decision> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&candidates[a], &candidates[b]);
        (&x.namespace, &x.pvc)
            .cmp(&(&y.namespace, &y.pvc))
            .then(newer_first(x, y))
    });
    let mut out = Vec::with_capacity(order.len());
    for group in order.chunk_by(|&a, &b| {
        candidates[a].namespace == candidates[b].namespace && candidates[a].pvc == candidates[b].pvc
    }) {
        let mut rules: Vec<(Rule, u32, Option<i64>)> = policy
            .rules()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r, n, None))
            .collect();
        for (nr, &index) in group.iter().enumerate() {
            let oldest = nr == group.len() - 1;
            let mut reasons = Vec::new();
            for (rule, left, last) in rules.iter_mut() {
                if *left == 0 {
                    continue;
                }
                let bucket = rule.bucket(candidates[index].created, nr);
                if Some(bucket) != *last || oldest {
                    reasons.push(rule.reason(Some(bucket) == *last));
                    *last = Some(bucket);
                    *left -= 1;
                }
            }
            if nr == 0 && reasons.is_empty() {
                reasons.push(Reason::NewestComplete);
            }
            out.push(Decision { index, reasons });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backups(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .enumerate()
            .map(|(i, t)| Candidate {
                id: format!("b{i:02}"),
                namespace: "shop".into(),
                pvc: "db".into(),
                created: t.parse().unwrap(),
            })
            .collect()
    }

    /// `(created, reasons)` of what is kept, newest first.
    fn kept(policy: Policy, c: &[Candidate]) -> Vec<(String, Vec<&'static str>)> {
        plan(&policy, c)
            .into_iter()
            .filter(|d| d.keep())
            .map(|d| {
                (
                    c[d.index].created.format("%Y-%m-%d %H:%M").to_string(),
                    d.reasons.iter().map(|r| r.as_str()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn newest_is_the_latest_created_of_that_pvc_only() {
        let mut c = backups(&[
            "2026-11-01T03:00:00Z",
            "2026-11-03T03:00:00Z",
            "2026-11-02T03:00:00Z",
        ]);
        // Another PVC's and another namespace's newer backups are not candidates.
        c.push(Candidate {
            pvc: "media".into(),
            ..backups(&["2026-12-01T03:00:00Z"])[0].clone()
        });
        c.push(Candidate {
            namespace: "blog".into(),
            ..backups(&["2026-12-01T03:00:00Z"])[0].clone()
        });
        assert_eq!(newest(&c, "shop", "db").map(|c| c.id.as_str()), Some("b01"));
        assert_eq!(
            newest(&c, "shop", "media").map(|c| c.created.to_rfc3339()),
            Some("2026-12-01T03:00:00+00:00".into())
        );
        assert!(newest(&c, "shop", "nope").is_none());
        // Equal timestamps: the greater id (same time, random tail) is the newer, as in plan.
        let tie = vec![
            Candidate {
                id: "20261101-a".into(),
                ..c[0].clone()
            },
            Candidate {
                id: "20261101-f".into(),
                ..c[0].clone()
            },
        ];
        assert_eq!(
            newest(&tie, "shop", "db").map(|c| c.id.as_str()),
            Some("20261101-f")
        );
    }

    /// restic's documented example: "a backup every day at 11:00 … for the last two weeks"
    /// style history; here a daily backup at 10:15 from 2026-11-01 to 2026-11-30, plus a
    /// second one on the last two days.
    fn month() -> Vec<Candidate> {
        let mut t: Vec<String> = (1..=30)
            .map(|d| format!("2026-11-{d:02}T10:15:00Z"))
            .collect();
        t.push("2026-11-29T22:00:00Z".into());
        t.push("2026-11-30T22:00:00Z".into());
        backups(&t.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let k = kept(
            Policy {
                last: 3,
                ..Default::default()
            },
            &month(),
        );
        assert_eq!(
            k,
            [
                ("2026-11-30 22:00".into(), vec!["last"]),
                ("2026-11-30 10:15".into(), vec!["last"]),
                ("2026-11-29 22:00".into(), vec!["last"]),
            ]
        );
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_last_n_days_and_lists_every_reason() {
        let k = kept(
            Policy {
                last: 2,
                daily: 7,
                ..Default::default()
            },
            &month(),
        );
        let mut want = vec![
            ("2026-11-30 22:00".to_string(), vec!["last", "daily"]),
            ("2026-11-30 10:15".to_string(), vec!["last"]),
            ("2026-11-29 22:00".to_string(), vec!["daily"]),
        ];
        for d in (24..=28).rev() {
            want.push((format!("2026-11-{d} 10:15"), vec!["daily"]));
        }
        assert_eq!(k, want);
    }

    #[test]
    fn weeks_are_iso_weeks_counted_from_the_newest_backup() {
        // 2026-11-30 is a Monday: it opens ISO week 49 alone. Sundays close weeks 48, 47, 46.
        let k = kept(
            Policy {
                weekly: 3,
                ..Default::default()
            },
            &month(),
        );
        assert_eq!(
            k,
            [
                ("2026-11-30 22:00".into(), vec!["weekly"]),
                ("2026-11-29 22:00".into(), vec!["weekly"]),
                ("2026-11-22 10:15".into(), vec!["weekly"]),
            ]
        );
        // Across a year end, the ISO week-year counts: 2026-12-31 (Thu) and 2027-01-01 (Fri)
        // are both in week 53 of 2026, one bucket; the second week is 51 (2026-12-20).
        let k = kept(
            Policy {
                weekly: 2,
                ..Default::default()
            },
            &backups(&[
                "2027-01-01T00:00:00Z",
                "2026-12-31T00:00:00Z",
                "2026-12-20T00:00:00Z",
            ]),
        );
        assert_eq!(
            k,
            [
                ("2027-01-01 00:00".into(), vec!["weekly"]),
                ("2026-12-20 00:00".into(), vec!["weekly"]),
            ]
        );
    }

    #[test]
    fn hourly_and_monthly_buckets() {
        let c = backups(&[
            "2026-11-30T10:59:00Z",
            "2026-11-30T10:01:00Z",
            "2026-11-30T09:30:00Z",
            "2026-10-31T23:00:00Z",
            "2026-10-01T00:00:00Z",
            "2026-09-15T00:00:00Z",
        ]);
        assert_eq!(
            kept(
                Policy {
                    hourly: 2,
                    ..Default::default()
                },
                &c
            ),
            [
                ("2026-11-30 10:59".into(), vec!["hourly"]),
                ("2026-11-30 09:30".into(), vec!["hourly"]),
            ]
        );
        assert_eq!(
            kept(
                Policy {
                    monthly: 2,
                    ..Default::default()
                },
                &c
            ),
            [
                ("2026-11-30 10:59".into(), vec!["monthly"]),
                ("2026-10-31 23:00".into(), vec!["monthly"]),
            ]
        );
    }

    #[test]
    fn a_rule_not_used_up_keeps_the_oldest_backup_too() {
        // Two days of backups and --keep-daily 7: both days' newest, and the oldest (restic
        // 0.17 "oldest daily snapshot").
        let c = backups(&[
            "2026-11-30T12:00:00Z",
            "2026-11-29T12:00:00Z",
            "2026-11-29T06:00:00Z",
            "2026-11-29T01:00:00Z",
        ]);
        assert_eq!(
            kept(
                Policy {
                    daily: 7,
                    ..Default::default()
                },
                &c
            ),
            [
                ("2026-11-30 12:00".into(), vec!["daily"]),
                ("2026-11-29 12:00".into(), vec!["daily"]),
                ("2026-11-29 01:00".into(), vec!["oldest-daily"]),
            ]
        );
        // Used up: no extra.
        assert_eq!(
            kept(
                Policy {
                    daily: 1,
                    ..Default::default()
                },
                &c
            )
            .len(),
            1
        );
    }

    #[test]
    fn each_pvc_is_pruned_on_its_own_and_keeps_its_newest() {
        let mut c = month();
        c.push(Candidate {
            id: "x".into(),
            namespace: "shop".into(),
            pvc: "cache".into(),
            created: "2025-01-01T00:00:00Z".parse().unwrap(),
        });
        let d = plan(
            &Policy {
                last: 1,
                ..Default::default()
            },
            &c,
        );
        let keep: Vec<&str> = d
            .iter()
            .filter(|d| d.keep())
            .map(|d| c[d.index].id.as_str())
            .collect();
        // The year-old cache backup is the newest of its PVC.
        assert_eq!(keep, ["x", "b31"]);
        assert_eq!(d.len(), c.len());
    }

    #[test]
    fn an_empty_policy_is_empty() {
        assert!(Policy::default().is_empty());
        assert!(!Policy {
            monthly: 1,
            ..Default::default()
        }
        .is_empty());
    }
}
