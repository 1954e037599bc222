//! When a TalosEtcdBackupSchedule runs and which of its backups retention keeps: pure functions of
//! times, with no Kubernetes in them, so that every rule is unit-tested on its own.
//!
//! Schedules are read as robfig/cron's `ParseStandard` reads them (the upstream operator's parser):
//! five fields, the `@yearly`/`@annually`/`@monthly`/`@weekly`/`@daily`/`@midnight`/`@hourly`
//! descriptors, `@every <Go duration>`, and a `CRON_TZ=<zone>` (or `TZ=<zone>`) prefix. Across
//! daylight-saving changes a fixed-time run falls right after a skipped hour and happens once in a
//! repeated one (Vixie cron's rule, through the croner crate).

mod retention;

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

pub use retention::{Candidate, Policy, State, to_prune};

/// Why a schedule cannot be used. Messages name what is wrong and how to write it instead.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error(
        "{expression:?} is not a cron schedule: {reason}; write five fields (minute hour day-of-month month \
         day-of-week, for example \"0 2 * * *\"), a descriptor such as @daily, or @every <duration> such as @every 6h"
    )]
    Cron { expression: String, reason: String },
    #[error("{expression:?}: @every needs a duration of at least 1s such as 30m, 6h or 1h30m: {reason}")]
    Every { expression: String, reason: String },
    #[error("unknown time zone {name:?}: use an IANA name such as Europe/Berlin or America/New_York")]
    TimeZone { name: String },
    #[error("the schedule names time zone {in_schedule:?} (CRON_TZ) and spec.timeZone names {in_spec:?}: set only one")]
    ConflictingTimeZones { in_schedule: String, in_spec: String },
    #[error("{expression:?} never matches a date (for example the 30th of February)")]
    NeverRuns { expression: String },
}

/// A parsed schedule: when backups are due.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: Kind,
    time_zone: TimeZone,
}

#[derive(Clone, Debug)]
enum Kind {
    Cron(Box<Cron>),
    /// robfig's ConstantDelaySchedule: whole seconds, counted from the previous run.
    Every(SignedDuration),
}

/// What a schedule owes at a given moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing until the next scheduled time.
    NotYet,
    /// The most recent scheduled time that has passed without a run: run it now (once, whatever
    /// number of earlier times were missed too).
    Run(Timestamp),
    /// The most recent scheduled time passed longer ago than the starting deadline allows: skip it.
    Missed(Timestamp),
}

impl Schedule {
    /// Parses `expression` in `time_zone` (an IANA name; UTC when `None`), or in the zone its
    /// `CRON_TZ=`/`TZ=` prefix names.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Schedule, Error> {
        let trimmed = expression.trim();
        let (prefix_zone, body) = match trimmed.strip_prefix("CRON_TZ=").or_else(|| trimmed.strip_prefix("TZ=")) {
            Some(rest) => {
                let (zone, body) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                (Some(zone), body.trim())
            }
            None => (None, trimmed),
        };
        let zone_name = match (prefix_zone, time_zone) {
            (Some(a), Some(b)) if a != b => {
                return Err(Error::ConflictingTimeZones { in_schedule: a.to_owned(), in_spec: b.to_owned() });
            }
            (Some(zone), _) | (None, Some(zone)) => zone,
            (None, None) => "UTC",
        };
        let time_zone = TimeZone::get(zone_name).map_err(|_| Error::TimeZone { name: zone_name.to_owned() })?;
        let kind = match body.strip_prefix("@every") {
            Some(duration) => Kind::Every(parse_every(expression, duration.trim())?),
            None => Kind::Cron(Box::new(parse_cron(expression, body)?)),
        };
        let schedule = Schedule { kind, time_zone };
        if schedule.next_after(Timestamp::now()).is_none() {
            return Err(Error::NeverRuns { expression: expression.to_owned() });
        }
        Ok(schedule)
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// The first scheduled time strictly after `after`. For `@every`, runs are counted from `after`
    /// (the previous run, or the schedule's creation), in whole seconds.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(every) => whole_seconds(after).checked_add(*every).ok(),
            Kind::Cron(cron) => {
                cron.find_next_occurrence(&after.to_zoned(self.time_zone.clone()), false).ok().map(|z| z.timestamp())
            }
        }
    }

    /// The latest scheduled time in `(since, now]`, if any.
    pub fn latest_between(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let first = self.next_after(since).filter(|first| *first <= now)?;
        match &self.kind {
            Kind::Every(every) => {
                let periods = now.duration_since(first).as_secs() / every.as_secs();
                first.checked_add(*every * periods as i32).ok()
            }
            Kind::Cron(cron) => cron
                .find_previous_occurrence(&now.to_zoned(self.time_zone.clone()), true)
                .ok()
                .map(|z| z.timestamp())
                .filter(|latest| *latest >= first),
        }
    }

    /// What is due at `now` when the previous run was at `since` (or the schedule was created then).
    /// A scheduled time is taken if it is at most `deadline` old; never more than one is taken, so an
    /// operator that was down for many runs does not fire a burst of catch-ups.
    pub fn due(&self, since: Timestamp, now: Timestamp, deadline: Option<Duration>) -> Due {
        match self.latest_between(since, now) {
            None => Due::NotYet,
            Some(at) => match deadline {
                Some(deadline)
                    if now.duration_since(at) > SignedDuration::try_from(deadline).unwrap_or(SignedDuration::MAX) =>
                {
                    Due::Missed(at)
                }
                _ => Due::Run(at),
            },
        }
    }

    /// When a schedule whose last success was at `since` counts as stale: two scheduled runs have passed
    /// since then without a success, plus half an interval for the second one to finish.
    pub fn stale_at(&self, since: Timestamp) -> Option<Timestamp> {
        let first = self.next_after(since)?;
        let second = self.next_after(first)?;
        second.checked_add(second.duration_since(first) / 2).ok()
    }
}

fn parse_cron(expression: &str, body: &str) -> Result<Cron, Error> {
    let invalid = |reason: String| Error::Cron { expression: expression.to_owned(), reason };
    // robfig's descriptors; croner knows all but @midnight.
    let body = match body {
        "@midnight" => "@daily",
        other => other,
    };
    if body.starts_with('@') && !matches!(body, "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@hourly")
    {
        return Err(invalid(format!("unknown descriptor {body:?}")));
    }
    let fields = body.split_whitespace().count();
    if !body.starts_with('@') && fields != 5 {
        return Err(invalid(format!("it has {fields} fields, not 5")));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        // robfig reads `5/15` as "from 5, every 15"; croner does with sloppy ranges.
        .sloppy_ranges(true)
        .build()
        .parse(body)
        .map_err(|e| invalid(e.to_string()))
}

/// A Go duration (`90s`, `1h30m`, `1.5h`), as robfig's `@every` takes it: whole seconds, at least one.
fn parse_every(expression: &str, text: &str) -> Result<SignedDuration, Error> {
    let invalid = |reason: &str| Error::Every { expression: expression.to_owned(), reason: reason.to_owned() };
    if text.is_empty() {
        return Err(invalid("the duration is missing"));
    }
    let duration: SignedDuration = text.parse().map_err(|_| invalid("not a duration"))?;
    let seconds = duration.as_secs();
    if seconds < 1 {
        return Err(invalid("shorter than 1s"));
    }
    Ok(SignedDuration::from_secs(seconds))
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(expression: &str, zone: Option<&str>, after: &str) -> String {
        let schedule = Schedule::parse(expression, zone).unwrap();
        schedule.next_after(at(after)).unwrap().to_string()
    }

    #[test]
    fn five_fields_and_descriptors_in_utc() {
        assert_eq!(next("0 2 * * *", None, "2026-03-01T02:00:00Z"), "2026-03-02T02:00:00Z");
        assert_eq!(next("*/15 * * * *", None, "2026-03-01T02:07:00Z"), "2026-03-01T02:15:00Z");
        assert_eq!(next("0 0 * * SUN", None, "2026-11-24T10:00:00Z"), "2026-11-29T00:00:00Z");
        assert_eq!(next("@daily", None, "2026-11-24T10:00:00Z"), "2026-11-25T00:00:00Z");
        assert_eq!(next("@midnight", None, "2026-11-24T10:00:00Z"), "2026-11-25T00:00:00Z");
        assert_eq!(next("@hourly", None, "2026-11-24T10:00:00Z"), "2026-11-24T11:00:00Z");
        assert_eq!(next("@weekly", None, "2026-11-24T10:00:00Z"), "2026-11-29T00:00:00Z");
        assert_eq!(next("@monthly", None, "2026-11-24T10:00:00Z"), "2026-12-01T00:00:00Z");
        assert_eq!(next("@yearly", None, "2026-11-24T10:00:00Z"), "2027-01-01T00:00:00Z");
        assert_eq!(next("@annually", None, "2026-11-24T10:00:00Z"), "2027-01-01T00:00:00Z");
        // robfig's "from 5, every 15" and names of months.
        assert_eq!(next("5/15 * * * *", None, "2026-11-24T10:21:00Z"), "2026-11-24T10:35:00Z");
        assert_eq!(next("0 3 1 JAN *", None, "2026-11-24T10:00:00Z"), "2027-01-01T03:00:00Z");
        // Day of month and day of week both restricted: either matches (Vixie and robfig).
        assert_eq!(next("0 0 1 * MON", None, "2026-11-24T10:00:00Z"), "2026-11-30T00:00:00Z");
    }

    #[test]
    fn time_zones_from_the_spec_or_the_prefix() {
        // 02:00 in Berlin is 01:00 UTC in winter.
        assert_eq!(next("0 2 * * *", Some("Europe/Berlin"), "2026-11-24T10:00:00Z"), "2026-11-25T01:00:00Z");
        assert_eq!(next("CRON_TZ=Europe/Berlin 0 2 * * *", None, "2026-11-24T10:00:00Z"), "2026-11-25T01:00:00Z");
        assert_eq!(next("TZ=America/New_York 0 2 * * *", None, "2026-11-24T10:00:00Z"), "2026-11-25T07:00:00Z");
        assert_eq!(
            next("CRON_TZ=Europe/Berlin 0 2 * * *", Some("Europe/Berlin"), "2026-11-24T10:00:00Z"),
            "2026-11-25T01:00:00Z"
        );
    }

    #[test]
    fn daylight_saving_changes_neither_skip_nor_double_a_daily_run() {
        // Berlin springs forward on 2026-03-29 (02:00 -> 03:00): 02:30 does not exist that day; the run
        // happens right after the gap, at 03:00 CEST (01:00 UTC).
        let s = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).unwrap();
        let runs: Vec<String> = std::iter::successors(Some(at("2026-03-27T12:00:00Z")), |t| s.next_after(*t))
            .skip(1)
            .take(4)
            .map(|t| t.to_string())
            .collect();
        assert_eq!(
            runs,
            ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
        );
        // It falls back on 2026-10-25 (03:00 -> 02:00): 02:30 happens twice, the run only once.
        let runs: Vec<String> = std::iter::successors(Some(at("2026-10-23T12:00:00Z")), |t| s.next_after(*t))
            .skip(1)
            .take(3)
            .map(|t| t.to_string())
            .collect();
        assert_eq!(runs, ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]);
        // An hourly schedule keeps running every real hour through both changes.
        let hourly = Schedule::parse("0 * * * *", Some("America/New_York")).unwrap();
        let start = at("2026-11-01T04:30:00Z"); // 00:30 EDT, the night New York falls back
        let runs: Vec<Timestamp> =
            std::iter::successors(Some(start), |t| hourly.next_after(*t)).skip(1).take(4).collect();
        for pair in runs.windows(2) {
            assert_eq!(pair[1].duration_since(pair[0]), SignedDuration::from_hours(1), "{runs:?}");
        }
    }

    #[test]
    fn every_counts_whole_seconds_from_the_previous_run() {
        let s = Schedule::parse("@every 10s", None).unwrap();
        assert_eq!(s.next_after(at("2026-11-24T10:00:00.700Z")).unwrap(), at("2026-11-24T10:00:10Z"));
        for (text, seconds) in [("1h30m", 5400), ("1.5h", 5400), ("90s", 90), ("2h45m30s", 9930), ("1500ms", 1)] {
            let s = Schedule::parse(&format!("@every {text}"), None).unwrap();
            let start = at("2026-01-01T00:00:00Z");
            assert_eq!(s.next_after(start).unwrap().duration_since(start).as_secs(), seconds, "{text}");
        }
    }

    #[test]
    fn invalid_schedules_say_what_is_wrong() {
        let err = |e: &str, z: Option<&str>| Schedule::parse(e, z).unwrap_err().to_string();
        assert!(err("0 2 * *", None).contains("it has 4 fields, not 5"), "{}", err("0 2 * *", None));
        assert!(err("0 0 2 * * *", None).contains("6 fields"));
        assert!(err("61 * * * *", None).contains("not a cron schedule"));
        assert!(err("@fortnightly", None).contains("unknown descriptor \"@fortnightly\""));
        assert!(err("@every", None).contains("the duration is missing"));
        assert!(err("@every 500ms", None).contains("shorter than 1s"));
        assert!(err("@every soon", None).contains("not a duration"));
        assert!(err("0 2 * * *", Some("Mars/Olympus")).contains("unknown time zone \"Mars/Olympus\""));
        assert!(err("CRON_TZ=Nowhere 0 2 * * *", None).contains("unknown time zone \"Nowhere\""));
        assert!(err("CRON_TZ=UTC 0 2 * * *", Some("Europe/Berlin")).contains("set only one"));
        assert!(err("0 0 30 2 *", None).contains("never matches"));
        assert!(err("", None).contains("not a cron schedule"));
    }

    #[test]
    fn one_missed_run_is_taken_within_the_deadline_and_never_a_burst() {
        let s = Schedule::parse("@every 10s", None).unwrap();
        let created = at("2026-11-24T10:00:00Z");
        assert_eq!(s.due(created, at("2026-11-24T10:00:09Z"), None), Due::NotYet);
        assert_eq!(s.due(created, at("2026-11-24T10:00:10Z"), None), Due::Run(at("2026-11-24T10:00:10Z")));
        // Down for a minute: the latest time only.
        assert_eq!(s.due(created, at("2026-11-24T10:01:03Z"), None), Due::Run(at("2026-11-24T10:01:00Z")));
        let deadline = Some(Duration::from_secs(5));
        assert_eq!(s.due(created, at("2026-11-24T10:01:03Z"), deadline), Due::Run(at("2026-11-24T10:01:00Z")));
        assert_eq!(s.due(created, at("2026-11-24T10:01:07Z"), deadline), Due::Missed(at("2026-11-24T10:01:00Z")));
        let daily = Schedule::parse("0 2 * * *", None).unwrap();
        let since = at("2026-11-20T02:00:00Z");
        assert_eq!(daily.due(since, at("2026-11-24T03:00:00Z"), None), Due::Run(at("2026-11-24T02:00:00Z")));
        assert_eq!(daily.due(since, at("2026-11-20T23:00:00Z"), None), Due::NotYet);
    }

    #[test]
    fn stale_after_two_runs_without_success() {
        let s = Schedule::parse("@every 10s", None).unwrap();
        assert_eq!(s.stale_at(at("2026-11-24T10:00:00Z")).unwrap(), at("2026-11-24T10:00:25Z"));
        // A weekday schedule does not go stale over the weekend.
        let weekdays = Schedule::parse("0 2 * * 1-5", None).unwrap();
        let friday = at("2026-11-27T02:05:00Z");
        assert_eq!(weekdays.stale_at(friday).unwrap(), at("2026-12-01T14:00:00Z"));
    }
}
