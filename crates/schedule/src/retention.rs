//! Which backups of a schedule retention keeps: the newest N successful ones, together with
//! (grandfather-father-son) the newest successful one of each of the last hours, days, weeks and
//! months asked for; the newest few failed ones; every running one. The newest successful backup is
//! never pruned, nor the newest good one: a successful backup that holds far fewer objects than the
//! good one before it ([`State::Suspect`]) counts as a successful one, but never pushes out the last
//! good backup.

use std::collections::HashSet;

use jiff::Timestamp;
use jiff::tz::TimeZone;

/// How many of each to keep.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Newest successful backups kept (at least one is always kept).
    pub keep_last: usize,
    pub keep_hourly: usize,
    pub keep_daily: usize,
    pub keep_weekly: usize,
    pub keep_monthly: usize,
    /// Newest failed backups kept.
    pub keep_failed: usize,
    /// Where hours, days, weeks (ISO, Monday first) and months begin.
    pub time_zone: TimeZone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Succeeded,
    /// Stored, but holding far fewer objects than the newest good backup before it (a wiped member,
    /// a deleted namespace): a successful backup that is not a good one.
    Suspect,
    Failed,
}

/// One backup of the schedule.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// When it was taken (scheduled); orders backups and places them in periods.
    pub time: Timestamp,
    pub state: State,
}

/// The names of the backups to delete, oldest first.
pub fn to_prune<'a>(candidates: &[Candidate<'a>], policy: &Policy) -> Vec<&'a str> {
    let newest_first = |states: &[State]| {
        let mut list: Vec<&Candidate<'a>> = candidates.iter().filter(|c| states.contains(&c.state)).collect();
        list.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.name.cmp(a.name)));
        list
    };
    let succeeded = newest_first(&[State::Succeeded, State::Suspect]);
    let mut keep: HashSet<&str> = succeeded.iter().take(policy.keep_last.max(1)).map(|c| c.name).collect();
    keep.extend(newest_first(&[State::Succeeded]).first().map(|c| c.name));
    let periods = [
        (policy.keep_hourly, Period::Hour),
        (policy.keep_daily, Period::Day),
        (policy.keep_weekly, Period::Week),
        (policy.keep_monthly, Period::Month),
    ];
    for (count, period) in periods {
        let mut seen = HashSet::new();
        for backup in &succeeded {
            if seen.len() == count {
                break;
            }
            if seen.insert(period.of(backup.time, &policy.time_zone)) {
                keep.insert(backup.name);
            }
        }
    }
    keep.extend(newest_first(&[State::Failed]).iter().take(policy.keep_failed).map(|c| c.name));
    let mut pruned: Vec<&Candidate<'a>> =
        candidates.iter().filter(|c| c.state != State::Running && !keep.contains(c.name)).collect();
    pruned.sort_by_key(|c| c.time);
    pruned.into_iter().map(|c| c.name).collect()
}

#[derive(Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    /// The period `t` falls in: (year, day of year, hour) or (ISO year, week) or (year, month).
    fn of(self, t: Timestamp, tz: &TimeZone) -> (i16, i16, i8) {
        let local = t.to_zoned(tz.clone()).datetime();
        match self {
            Period::Hour => (local.year(), local.day_of_year(), local.hour()),
            Period::Day => (local.year(), local.day_of_year(), 0),
            Period::Week => {
                let week = local.date().iso_week_date();
                (week.year(), 0, week.week())
            }
            Period::Month => (local.year(), 0, local.month()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep_last: usize) -> Policy {
        Policy {
            keep_last,
            keep_hourly: 0,
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_failed: 3,
            time_zone: TimeZone::UTC,
        }
    }

    /// Backups named by their time, every `step` hours from 2026-01-01T00:00Z.
    fn series(count: usize, step_hours: i64, state: State) -> Vec<(String, Timestamp, State)> {
        let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        (0..count)
            .map(|i| {
                let t = start.checked_add(jiff::SignedDuration::from_hours(step_hours * i as i64)).unwrap();
                (t.strftime("%Y%m%d%H").to_string(), t, state)
            })
            .collect()
    }

    fn candidates(list: &[(String, Timestamp, State)]) -> Vec<Candidate<'_>> {
        list.iter().map(|(name, time, state)| Candidate { name, time: *time, state: *state }).collect()
    }

    #[test]
    fn keeps_the_newest_n_successful_ones() {
        let list = series(8, 1, State::Succeeded);
        let pruned = to_prune(&candidates(&list), &policy(5));
        assert_eq!(pruned, ["2026010100", "2026010101", "2026010102"]);
        assert!(to_prune(&candidates(&list[..3]), &policy(5)).is_empty());
    }

    #[test]
    fn running_ones_are_never_pruned_and_failed_ones_are_capped() {
        let mut list = series(6, 1, State::Failed);
        list.extend(series(1, 10, State::Running));
        list[0].0 = "running-old".into();
        list[0].2 = State::Running;
        let pruned = to_prune(&candidates(&list), &policy(5));
        assert_eq!(pruned, ["2026010101", "2026010102"]);
    }

    #[test]
    fn suspect_backups_count_as_successful_but_never_push_out_the_last_good_one() {
        // Two good backups, then five that hold far fewer objects (a wiped member).
        let mut list = series(7, 1, State::Succeeded);
        list[2..].iter_mut().for_each(|b| b.2 = State::Suspect);
        let pruned = to_prune(&candidates(&list), &policy(3));
        // Keep-last 3 keeps the three newest suspects; the newest good one stays besides.
        assert_eq!(pruned, ["2026010100", "2026010102", "2026010103"]);
        // A good one again: retention counts as before, the suspects go as they age.
        list.extend(series(8, 1, State::Succeeded).into_iter().skip(7));
        let pruned = to_prune(&candidates(&list), &policy(3));
        assert_eq!(pruned, ["2026010100", "2026010101", "2026010102", "2026010103", "2026010104"]);
    }

    #[test]
    fn the_newest_success_survives_even_with_keep_zero() {
        let list = series(3, 1, State::Succeeded);
        assert_eq!(to_prune(&candidates(&list), &policy(0)), ["2026010100", "2026010101"]);
    }

    #[test]
    fn grandfather_father_son_is_a_union_with_keep_last() {
        // Every 6 hours for 70 days.
        let list = series(4 * 70, 6, State::Succeeded);
        let p = Policy { keep_last: 2, keep_daily: 7, keep_weekly: 4, keep_monthly: 3, ..policy(2) };
        let pruned = to_prune(&candidates(&list), &p);
        let kept: Vec<&str> =
            list.iter().map(|(n, _, _)| n.as_str()).filter(|n| !pruned.contains(n)).collect::<Vec<_>>();
        // Newest two; the last backup of each of the last 7 days (the newest one is one of them);
        // of the last 4 ISO weeks; of the last 3 months.
        assert_eq!(
            kept,
            [
                "2026013118", // January
                "2026022218", // ISO week 8
                "2026022818", // February
                "2026030118", // ISO week 9
                "2026030518",
                "2026030618",
                "2026030718", // days
                "2026030818", // a day, ISO week 10
                "2026030918",
                "2026031018", // days
                "2026031112", // the second newest
                "2026031118", // the newest: keep-last, its day, week and month
            ]
        );
    }
}
