//! A MapReduce's cron schedule: five fields read as a CronJob reads them, in a time zone.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rigging_crds::FieldError;
use rigging_crds::map_reduce::Schedule;

/// A schedule, parsed.
#[derive(Debug, Clone)]
pub struct Compiled {
    cron: Cron,
    zone: TimeZone,
}

/// `schedule` parsed, or why not, naming the field.
pub fn compile(schedule: &Schedule) -> Result<Compiled, FieldError> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(&schedule.cron).map_err(|e| {
        FieldError::new(
            "spec.schedule.cron",
            format!(
                "{:?} is not a cron schedule of five fields (minute hour day-of-month month day-of-week): {e}",
                schedule.cron
            ),
        )
    })?;
    let zone = match schedule.time_zone.as_deref() {
        None => TimeZone::UTC,
        Some(name) => TimeZone::get(name).map_err(|e| {
            FieldError::new(
                "spec.schedule.timeZone",
                format!("{name:?} is not an IANA time zone (Europe/Paris, America/New_York): {e}"),
            )
        })?,
    };
    Ok(Compiled { cron, zone })
}

impl Compiled {
    /// The latest time of the schedule after `after` and at or before `now`, if any: an
    /// operator that was down across several times starts the latest, never a backlog.
    pub fn due(&self, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let latest = self
            .cron
            .find_previous_occurrence(&now.to_zoned(self.zone.clone()), true)
            .ok()?
            .timestamp();
        (latest > after).then_some(latest)
    }

    /// The first time of the schedule after `now`.
    pub fn next(&self, now: Timestamp) -> Option<Timestamp> {
        let at = now.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|z| z.timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: Option<&str>) -> Schedule {
        Schedule {
            cron: cron.into(),
            time_zone: zone.map(Into::into),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_latest_missed_time_is_due_and_only_once() {
        let hourly = compile(&schedule("0 * * * *", None)).unwrap();
        let after = at("2026-12-06T09:30:00Z");
        assert_eq!(hourly.due(after, at("2026-12-06T09:59:59Z")), None);
        assert_eq!(
            hourly.due(after, at("2026-12-06T10:00:00Z")),
            Some(at("2026-12-06T10:00:00Z"))
        );
        assert_eq!(
            hourly.due(after, at("2026-12-06T13:20:00Z")),
            Some(at("2026-12-06T13:00:00Z")),
            "three missed: the latest only"
        );
        assert_eq!(
            hourly.due(at("2026-12-06T13:00:00Z"), at("2026-12-06T13:20:00Z")),
            None
        );
        let minutely = compile(&schedule("* * * * *", None)).unwrap();
        assert_eq!(
            minutely.due(after, at("2026-12-09T09:30:30Z")),
            Some(at("2026-12-09T09:30:00Z")),
            "three days down: the latest of 4,320 times, and only it"
        );
        assert_eq!(
            hourly.next(at("2026-12-06T13:20:00Z")),
            Some(at("2026-12-06T14:00:00Z"))
        );
    }

    #[test]
    fn a_schedule_is_read_in_its_time_zone() {
        let paris = compile(&schedule("0 8 * * *", Some("Europe/Paris"))).unwrap();
        assert_eq!(
            paris.next(at("2026-12-06T00:00:00Z")),
            Some(at("2026-12-06T07:00:00Z"))
        );
    }

    #[test]
    fn a_bad_schedule_or_zone_is_refused_naming_the_field() {
        let e = compile(&schedule("0 * * *", None)).unwrap_err();
        assert_eq!(e.field, "spec.schedule.cron", "{e}");
        let e = compile(&schedule("0 * * * * *", None)).unwrap_err();
        assert_eq!(e.field, "spec.schedule.cron", "{e}");
        let e = compile(&schedule("0 * * * *", Some("Mars/Olympus"))).unwrap_err();
        assert_eq!(e.field, "spec.schedule.timeZone", "{e}");
    }
}
