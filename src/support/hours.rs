//! When live staff answer the support line: weekdays and a daily window in one time zone,
//! minus holidays. Computed in the zone's own calendar, so daylight-saving changes move the
//! window with the local clock.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

#[derive(Debug, Clone)]
pub struct BusinessHours {
    zone: TimeZone,
    /// Indexed from Monday.
    days: [bool; 7],
    opens: Time,
    closes: Time,
    holidays: Vec<Date>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoursError {
    #[error("unknown time zone {0:?} (an IANA name such as America/Los_Angeles)")]
    Zone(String),
    #[error("{0:?} is not a weekday (Mon, Tue, Wed, Thu, Fri, Sat, Sun)")]
    Day(String),
    #[error("{0:?} is not a time of day like 05:00")]
    Time(String),
    #[error("{0:?} is not a date like 2026-12-25")]
    Date(String),
    #[error("opening time {0} is not before closing time {1}")]
    Window(Time, Time),
}

impl BusinessHours {
    pub fn new(
        zone: &str,
        days: &[String],
        opens: &str,
        closes: &str,
        holidays: &[String],
    ) -> Result<Self, HoursError> {
        let zone = TimeZone::get(zone).map_err(|_| HoursError::Zone(zone.into()))?;
        let mut open_days = [false; 7];
        for day in days {
            let weekday = weekday(day).ok_or_else(|| HoursError::Day(day.clone()))?;
            open_days[usize::try_from(weekday.to_monday_zero_offset()).unwrap_or(0)] = true;
        }
        let time = |t: &str| t.parse::<Time>().map_err(|_| HoursError::Time(t.into()));
        let (opens, closes) = (time(opens)?, time(closes)?);
        if opens >= closes {
            return Err(HoursError::Window(opens, closes));
        }
        let holidays = holidays
            .iter()
            .map(|d| d.parse::<Date>().map_err(|_| HoursError::Date(d.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            zone,
            days: open_days,
            opens,
            closes,
            holidays,
        })
    }

    /// Whether staff answer at `at_ms` (Unix milliseconds): from opening time, up to but
    /// not including closing time.
    /// The zone the hours are kept in (the support desk's).
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn is_open(&self, at_ms: i64) -> bool {
        let Ok(at) = Timestamp::from_millisecond(at_ms) else {
            return false;
        };
        let local = at.to_zoned_datetime(self.zone.clone());
        let day = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0);
        let time = local.time();
        self.days[day]
            && !self.holidays.contains(&local.date())
            && self.opens <= time
            && time < self.closes
    }
}

/// `Mon` or `Monday`, any case.
fn weekday(name: &str) -> Option<Weekday> {
    let lower = name.trim().to_ascii_lowercase();
    [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ]
    .into_iter()
    .find(|(full, _)| lower == *full || lower == full[..3])
    .map(|(_, day)| day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacific() -> BusinessHours {
        let days: Vec<String> = ["Mon", "Tue", "Wed", "Thu", "Fri"].map(String::from).into();
        BusinessHours::new(
            "America/Los_Angeles",
            &days,
            "05:00",
            "17:00",
            &["2026-12-25".into()],
        )
        .unwrap()
    }

    fn at(utc: &str) -> i64 {
        utc.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn friday_closes_at_five_pm_pacific() {
        let hours = pacific();
        // Friday 2026-11-20, PST (UTC-8): 16:59 open, 17:00 closed.
        assert!(hours.is_open(at("2026-11-21T00:59:00Z")));
        assert!(hours.is_open(at("2026-11-21T00:59:59.999Z")));
        assert!(!hours.is_open(at("2026-11-21T01:00:00Z")));
    }

    #[test]
    fn monday_opens_at_five_am_pacific() {
        let hours = pacific();
        // Monday 2026-11-23 04:59 PST closed, 05:00 open.
        assert!(!hours.is_open(at("2026-11-23T12:59:00Z")));
        assert!(hours.is_open(at("2026-11-23T13:00:00Z")));
    }

    #[test]
    fn weekends_and_holidays_are_closed() {
        let hours = pacific();
        // Saturday 2026-11-21 noon PST.
        assert!(!hours.is_open(at("2026-11-21T20:00:00Z")));
        // Friday 2026-12-25 noon PST: a holiday.
        assert!(!hours.is_open(at("2026-12-25T20:00:00Z")));
        assert!(hours.is_open(at("2026-12-24T20:00:00Z")));
    }

    #[test]
    fn the_window_follows_daylight_saving_changes() {
        let hours = pacific();
        // DST began Sunday 2026-03-08. Monday 2026-03-09 05:30 PDT is 12:30 UTC: open
        // (a fixed UTC-8 would call it 04:30, closed).
        assert!(hours.is_open(at("2026-03-09T12:30:00Z")));
        assert!(!hours.is_open(at("2026-03-09T11:59:00Z")));
        // Friday 2026-03-06 (still PST): 16:59 is 00:59 UTC.
        assert!(hours.is_open(at("2026-03-07T00:59:00Z")));
        // Friday 2026-03-13 (PDT): 17:00 is 00:00 UTC; 16:59 PDT is 23:59 UTC.
        assert!(hours.is_open(at("2026-03-13T23:59:00Z")));
        assert!(!hours.is_open(at("2026-03-14T00:00:00Z")));
        // DST ended Sunday 2026-11-01: Monday 2026-11-02 05:00 PST is 13:00 UTC.
        assert!(!hours.is_open(at("2026-11-02T12:30:00Z")));
        assert!(hours.is_open(at("2026-11-02T13:00:00Z")));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let days = vec!["Mon".to_string()];
        assert_eq!(
            BusinessHours::new("Mars/Olympus", &days, "05:00", "17:00", &[]).unwrap_err(),
            HoursError::Zone("Mars/Olympus".into())
        );
        assert!(matches!(
            BusinessHours::new("UTC", &["Funday".into()], "05:00", "17:00", &[]),
            Err(HoursError::Day(_))
        ));
        assert!(matches!(
            BusinessHours::new("UTC", &days, "5 am", "17:00", &[]),
            Err(HoursError::Time(_))
        ));
        assert!(matches!(
            BusinessHours::new("UTC", &days, "17:00", "05:00", &[]),
            Err(HoursError::Window(..))
        ));
        assert!(matches!(
            BusinessHours::new("UTC", &days, "05:00", "17:00", &["25/12".into()]),
            Err(HoursError::Date(_))
        ));
        assert!(BusinessHours::new("UTC", &["monday".into()], "05:00", "17:00", &[]).is_ok());
    }
}
