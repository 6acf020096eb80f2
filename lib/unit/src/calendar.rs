//! Calendar events as `OnCalendar=` of .timer units writes them (systemd.time(7)):
//! `[WEEKDAYS] [DATE] [TIME] [UTC]`, e.g. `Mon..Fri *-*-* 09:00`, `*:0/15`,
//! `*-02~03`, or a shorthand such as `daily`. Every field takes `*`, lists `a,b`,
//! ranges `a..b` and repetitions `a/r` or `a..b/r`; `~` counts days from the end
//! of the month. Times are UTC, as basalt machines run in UTC: a trailing `UTC`
//! is accepted, any other zone is refused, and so are fractional seconds.
//! Years run from 1970 to 2199, like systemd's.

use std::fmt;

const YEAR_MIN: u32 = 1970;
const YEAR_MAX: u32 = 2199;
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const WEEKDAYS_LONG: [&str; 7] = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"];

/// One item of a field's comma-separated list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    /// `a`, `a..b`, `a/r` or `a..b/r`: a, a+r, a+2r, ... up to b (or the field's maximum); r is 1 for plain ranges.
    Values { start: u32, stop: Option<u32>, repeat: u32 },
}

/// A field: `None` is `*`, otherwise a sorted, deduplicated list.
type Field = Option<Vec<Item>>;

#[derive(Debug, Clone, PartialEq)]
pub struct CalendarSpec {
    /// Bit 0 is Monday, bit 6 Sunday.
    weekdays: u8,
    year: Field,
    month: Field,
    day: Field,
    /// `~`: day values count from the end of the month, `~01` being the last day.
    end_of_month: bool,
    hour: Field,
    minute: Field,
    second: Field,
    /// A trailing `UTC` was written (it is kept in the normalized form).
    utc: bool,
}

impl CalendarSpec {
    /// Parses a systemd calendar event expression; the error names what is wrong, e.g. "OnCalendar=Mon 25:00: hour 25 is out of range 0..23".
    pub fn parse(text: &str) -> Result<CalendarSpec, String> {
        parse(text).map_err(|e| format!("OnCalendar={}: {e}", text.trim()))
    }

    /// The first time strictly after `unix_secs` (seconds since the epoch, UTC) that matches, or None if none ever will (e.g. a fixed date in the past).
    pub fn next_after(&self, unix_secs: i64) -> Option<i64> {
        let start = unix_secs.checked_add(1)?;
        let days = start.div_euclid(86400);
        let secs = start.rem_euclid(86400) as u32;
        let (y, mo, d) = civil_from_days(days);
        if y < YEAR_MIN as i64 {
            return self.next_after(days_from_civil(YEAR_MIN as i64, 1, 1) * 86400 - 1);
        }
        if y > YEAR_MAX as i64 {
            return None;
        }
        let masks = Masks {
            year: year_mask(&self.year),
            month: field_mask(&self.month, 1, 12),
            day: if self.end_of_month { eom_mask(&self.day) } else { field_mask(&self.day, 1, 31) },
            hour: field_mask(&self.hour, 0, 23),
            minute: field_mask(&self.minute, 0, 59),
            second: field_mask(&self.second, 0, 59),
        };
        let (mut y, mut mo, mut d) = (y as u32, mo, d);
        let (mut h, mut mi, mut s) = (secs / 3600, secs / 60 % 60, secs % 60);
        // Each step moves one field to its next allowed value, or carries into the field above
        // and resets the ones below to their smallest value; it never walks second by second.
        loop {
            if y > YEAR_MAX {
                return None;
            }
            if masks.year[(y - YEAR_MIN) as usize] == 0 {
                match (y + 1..=YEAR_MAX).find(|&n| masks.year[(n - YEAR_MIN) as usize] != 0) {
                    Some(n) => (y, mo, d, h, mi, s) = (n, 1, 1, 0, 0, 0),
                    None => return None,
                }
            }
            match next_bit(masks.month, mo) {
                Some(m) if m <= 12 => {
                    if m != mo {
                        (mo, d, h, mi, s) = (m, 1, 0, 0, 0);
                    }
                }
                _ => {
                    (y, mo, d, h, mi, s) = (y + 1, 1, 1, 0, 0, 0);
                    continue;
                }
            }
            let last = days_in_month(y, mo);
            let first_weekday = weekday(days_from_civil(y as i64, mo, 1));
            let day_ok = |day: u32| {
                let bit = if self.end_of_month { last - day + 1 } else { day };
                masks.day & (1 << bit) != 0 && self.weekdays & (1 << ((first_weekday + day - 1) % 7)) != 0
            };
            match (d..=last).find(|&n| day_ok(n)) {
                Some(n) => {
                    if n != d {
                        (d, h, mi, s) = (n, 0, 0, 0);
                    }
                }
                None => {
                    (mo, d, h, mi, s) = (mo + 1, 1, 0, 0, 0);
                    if mo > 12 {
                        (y, mo) = (y + 1, 1);
                    }
                    continue;
                }
            }
            match next_bit(masks.hour, h) {
                Some(n) if n <= 23 => {
                    if n != h {
                        (h, mi, s) = (n, 0, 0);
                    }
                }
                _ => {
                    (d, h, mi, s) = (d + 1, 0, 0, 0);
                    if d > last {
                        (mo, d) = (mo + 1, 1);
                        if mo > 12 {
                            (y, mo) = (y + 1, 1);
                        }
                    }
                    continue;
                }
            }
            match next_bit(masks.minute, mi) {
                Some(n) if n <= 59 => {
                    if n != mi {
                        (mi, s) = (n, 0);
                    }
                }
                _ => {
                    (h, mi, s) = (h + 1, 0, 0);
                    if h > 23 {
                        (d, h) = (d + 1, 0);
                        if d > last {
                            (mo, d) = (mo + 1, 1);
                            if mo > 12 {
                                (y, mo) = (y + 1, 1);
                            }
                        }
                    }
                    continue;
                }
            }
            match next_bit(masks.second, s) {
                Some(n) if n <= 59 => s = n,
                _ => {
                    (mi, s) = (mi + 1, 0);
                    if mi > 59 {
                        (h, mi) = (h + 1, 0);
                        if h > 23 {
                            (d, h) = (d + 1, 0);
                            if d > last {
                                (mo, d) = (mo + 1, 1);
                                if mo > 12 {
                                    (y, mo) = (y + 1, 1);
                                }
                            }
                        }
                    }
                    continue;
                }
            }
            return Some(days_from_civil(y as i64, mo, d) * 86400 + (h * 3600 + mi * 60 + s) as i64);
        }
    }
}

struct Masks {
    /// One entry per year from YEAR_MIN, non-zero if the year matches.
    year: Vec<u8>,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
}

/// The smallest set bit at or above `from`.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask >> from;
    (rest != 0).then(|| from + rest.trailing_zeros())
}

fn values(field: &Field, min: u32, max: u32, mut f: impl FnMut(u32)) {
    match field {
        None => (min..=max).for_each(f),
        Some(items) => {
            for Item::Values { start, stop, repeat } in items {
                if *repeat == 0 {
                    // A single value (ranges always step by at least 1).
                    if *start <= max {
                        f(*start);
                    }
                    continue;
                }
                let end = stop.unwrap_or(max).min(max);
                let mut v = *start;
                while v <= end {
                    f(v);
                    v += repeat;
                }
            }
        }
    }
}

fn field_mask(field: &Field, min: u32, max: u32) -> u64 {
    let mut mask = 0u64;
    values(field, min, max, |v| mask |= 1 << v);
    mask
}

/// Days counted from the end of the month: bit v set means the v-th last day.
/// A repetition walks towards the end of the month, so `~07/2` is the 7th, 5th, 3rd and last day.
fn eom_mask(field: &Field) -> u64 {
    let mut mask = 0u64;
    match field {
        None => mask = field_mask(&None, 1, 31),
        Some(items) => {
            for Item::Values { start, stop, repeat } in items {
                match stop {
                    Some(stop) => {
                        // `~a..b` is the a-th to the b-th last day; systemd does not step these.
                        for v in *start..=*stop {
                            mask |= 1 << v;
                        }
                    }
                    None => {
                        let mut v = *start as i64;
                        while v >= 1 {
                            mask |= 1 << v;
                            if *repeat == 0 {
                                break;
                            }
                            v -= *repeat as i64;
                        }
                    }
                }
            }
        }
    }
    mask
}

fn year_mask(field: &Field) -> Vec<u8> {
    let mut mask = vec![0u8; (YEAR_MAX - YEAR_MIN + 1) as usize];
    values(field, YEAR_MIN, YEAR_MAX, |v| mask[(v - YEAR_MIN) as usize] = 1);
    mask
}

fn is_leap(y: u32) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// 0 is Monday; day 0 of the epoch was a Thursday.
fn weekday(days: i64) -> u32 {
    (days + 3).rem_euclid(7) as u32
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { era * 400 + yoe + 1 } else { era * 400 + yoe }, m, d)
}

fn parse(text: &str) -> Result<CalendarSpec, String> {
    let mut tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.is_empty() {
        return Err("empty calendar expression".into());
    }
    let mut utc = false;
    if tokens.len() > 1 {
        let last = tokens[tokens.len() - 1];
        if last.chars().any(|c| c.is_ascii_alphabetic()) {
            if last != "UTC" {
                return Err(format!("time zone {last} is not supported, only UTC (basalt runs in UTC)"));
            }
            utc = true;
            tokens.pop();
        }
    }
    if tokens.len() == 1 {
        if let Some(spec) = shorthand(tokens[0], utc) {
            return Ok(spec);
        }
    }
    let mut weekdays = 0x7f;
    if tokens[0].starts_with(|c: char| c.is_ascii_alphabetic()) {
        weekdays = parse_weekdays(tokens[0])?;
        tokens.remove(0);
    }
    let (date, time) = match tokens[..] {
        [] => (None, None),
        [one] if one.contains(':') => (None, Some(one)),
        [one] => (Some(one), None),
        [date, time] => (Some(date), Some(time)),
        _ => return Err(format!("unexpected {:?}: expected [weekdays] [date] [time] [UTC]", tokens[2..].join(" "))),
    };
    let mut spec = CalendarSpec { weekdays, year: None, month: None, day: None, end_of_month: false, hour: zero(), minute: zero(), second: zero(), utc };
    if let Some(date) = date {
        if date.contains(':') {
            return Err(format!("date {date:?} contains ':'"));
        }
        let (head, day, eom) = match date.split_once('~') {
            Some((head, day)) => (head, day, true),
            None => match date.rsplit_once('-') {
                Some((head, day)) => (head, day, false),
                None => return Err(format!("date {date:?} is not YYYY-MM-DD, MM-DD or MM~DD")),
            },
        };
        let (year, month) = match head.split('-').collect::<Vec<_>>()[..] {
            [month] => (None, month),
            [year, month] => (Some(year), month),
            _ => return Err(format!("date {date:?} is not YYYY-MM-DD, MM-DD or MM~DD")),
        };
        if let Some(year) = year {
            spec.year = parse_field(year, "year", YEAR_MIN, YEAR_MAX)?;
        }
        spec.month = parse_field(month, "month", 1, 12)?;
        spec.day = parse_field(day, "day", 1, 31)?;
        spec.end_of_month = eom;
        if eom {
            if let Some(items) = &spec.day {
                for Item::Values { start, stop, repeat } in items {
                    if stop.is_some() && *repeat != 1 {
                        return Err(format!("day ~{start:02}..{:02}/{repeat}: a range counted from the end of the month cannot repeat", stop.unwrap_or(0)));
                    }
                }
            }
        }
    }
    if let Some(time) = time {
        let parts: Vec<&str> = time.split(':').collect();
        let (h, m, s) = match parts[..] {
            [h, m] => (h, m, None),
            [h, m, s] => (h, m, Some(s)),
            _ => return Err(format!("time {time:?} is not HH:MM or HH:MM:SS")),
        };
        spec.hour = parse_field(h, "hour", 0, 23)?;
        spec.minute = parse_field(m, "minute", 0, 59)?;
        if let Some(s) = s {
            if s.contains('.') {
                return Err(format!("fractional seconds {s:?} are not supported"));
            }
            spec.second = parse_field(s, "second", 0, 59)?;
        }
    }
    Ok(spec)
}

fn zero() -> Field {
    Some(vec![Item::Values { start: 0, stop: None, repeat: 0 }])
}

fn one(v: u32) -> Item {
    Item::Values { start: v, stop: None, repeat: 0 }
}

fn shorthand(word: &str, utc: bool) -> Option<CalendarSpec> {
    let mut spec = CalendarSpec { weekdays: 0x7f, year: None, month: None, day: None, end_of_month: false, hour: zero(), minute: zero(), second: zero(), utc };
    let first = Some(vec![one(1)]);
    match word {
        "minutely" => (spec.hour, spec.minute) = (None, None),
        "hourly" => (spec.hour, spec.minute) = (None, zero()),
        "daily" => {}
        "weekly" => spec.weekdays = 1,
        "monthly" => spec.day = first,
        "yearly" | "annually" => (spec.month, spec.day) = (first.clone(), first),
        "quarterly" => (spec.month, spec.day) = (Some(vec![one(1), one(4), one(7), one(10)]), first),
        "semiannually" => (spec.month, spec.day) = (Some(vec![one(1), one(7)]), first),
        _ => return None,
    }
    Some(spec)
}

fn parse_weekday(name: &str) -> Result<u32, String> {
    let lower = name.to_ascii_lowercase();
    WEEKDAYS_LONG.iter().position(|long| lower == *long || lower == long[..3]).map(|i| i as u32).ok_or_else(|| format!("unknown weekday {name:?}"))
}

fn parse_weekdays(text: &str) -> Result<u8, String> {
    let mut mask = 0u8;
    for item in text.split(',') {
        match item.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (parse_weekday(a)?, parse_weekday(b)?);
                if a > b {
                    return Err(format!("weekday range {item:?} runs backwards (weeks run Mon..Sun)"));
                }
                (a..=b).for_each(|d| mask |= 1 << d);
            }
            None => mask |= 1 << parse_weekday(item)?,
        }
    }
    Ok(mask)
}

fn parse_number(text: &str, what: &str, min: u32, max: u32) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {text:?} is not a number"));
    }
    let mut n: u32 = text.parse().map_err(|_| format!("{what} {text} is out of range {min}..{max}"))?;
    // Two-digit years are 1970..2069, as systemd reads them.
    if what == "year" && text.len() == 2 {
        n += if n < 70 { 2000 } else { 1900 };
    }
    if n < min || n > max {
        return Err(format!("{what} {n} is out of range {min}..{max}"));
    }
    Ok(n)
}

fn parse_field(text: &str, what: &str, min: u32, max: u32) -> Result<Field, String> {
    if text == "*" {
        return Ok(None);
    }
    let mut items = Vec::new();
    for item in text.split(',') {
        if item == "*" {
            return Err(format!("{what} {text:?}: '*' cannot be part of a list"));
        }
        let (range, repeat) = match item.split_once('/') {
            Some((range, repeat)) => {
                let r = parse_number(repeat, &format!("{what} repetition"), 1, max.max(1)).map_err(|e| if repeat == "0" { format!("{what} repetition in {item:?} must be at least 1") } else { e })?;
                (range, r)
            }
            None => (item, 0),
        };
        if range == "*" {
            return Err(format!("{what} {item:?}: '*' cannot repeat, write {min}/{repeat}"));
        }
        let (start, stop) = match range.split_once("..") {
            Some((a, b)) => {
                let (a, b) = (parse_number(a, what, min, max)?, parse_number(b, what, min, max)?);
                if a > b {
                    return Err(format!("{what} range {range:?} runs backwards"));
                }
                (a, Some(b))
            }
            None => (parse_number(range, what, min, max)?, None),
        };
        let repeat = if stop.is_some() && repeat == 0 { 1 } else { repeat };
        items.push(Item::Values { start, stop, repeat });
    }
    items.sort();
    items.dedup();
    Ok(Some(items))
}

fn fmt_field(f: &mut fmt::Formatter<'_>, field: &Field, width: usize) -> fmt::Result {
    let Some(items) = field else { return f.write_str("*") };
    for (i, Item::Values { start, stop, repeat }) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{start:0width$}")?;
        if let Some(stop) = stop {
            write!(f, "..{stop:0width$}")?;
        }
        if *repeat > 1 || (*repeat == 1 && stop.is_none()) {
            write!(f, "/{repeat}")?;
        }
    }
    Ok(())
}

impl fmt::Display for CalendarSpec {
    /// The normalized form `systemd-analyze calendar` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weekdays != 0x7f {
            let mut first = true;
            let mut d = 0;
            while d < 7 {
                if self.weekdays & (1 << d) == 0 {
                    d += 1;
                    continue;
                }
                let mut end = d;
                while end + 1 < 7 && self.weekdays & (1 << (end + 1)) != 0 {
                    end += 1;
                }
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                if end - d >= 2 {
                    write!(f, "{}..{}", WEEKDAYS[d], WEEKDAYS[end])?;
                    d = end + 1;
                } else {
                    f.write_str(WEEKDAYS[d])?;
                    d += 1;
                }
            }
            f.write_str(" ")?;
        }
        fmt_field(f, &self.year, 4)?;
        f.write_str("-")?;
        fmt_field(f, &self.month, 2)?;
        f.write_str(if self.end_of_month { "~" } else { "-" })?;
        fmt_field(f, &self.day, 2)?;
        f.write_str(" ")?;
        fmt_field(f, &self.hour, 2)?;
        f.write_str(":")?;
        fmt_field(f, &self.minute, 2)?;
        f.write_str(":")?;
        fmt_field(f, &self.second, 2)?;
        if self.utc {
            f.write_str(" UTC")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-27 12:34:56 UTC, a Tuesday in a leap year's February.
    const BASE: i64 = 1709037296;

    fn show(t: i64) -> String {
        let (y, mo, d) = civil_from_days(t.div_euclid(86400));
        let s = t.rem_euclid(86400);
        format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    fn elapses(spec: &CalendarSpec, from: i64, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = from;
        while out.len() < n {
            match spec.next_after(t) {
                Some(next) => {
                    assert!(next > t, "{spec}: {next} is not after {t}");
                    out.push(show(next));
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// Expected values are what `TZ=UTC systemd-analyze calendar --iterations=5 --base-time=@1709037296 EXPR`
    /// of systemd 252 prints: the normalized form and the elapses after BASE.
    #[test]
    fn matches_systemd_analyze() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("minutely", "*-*-* *:*:00", &["2024-02-27 12:35:00", "2024-02-27 12:36:00", "2024-02-27 12:37:00", "2024-02-27 12:38:00", "2024-02-27 12:39:00"]),
            ("hourly", "*-*-* *:00:00", &["2024-02-27 13:00:00", "2024-02-27 14:00:00", "2024-02-27 15:00:00", "2024-02-27 16:00:00", "2024-02-27 17:00:00"]),
            ("daily", "*-*-* 00:00:00", &["2024-02-28 00:00:00", "2024-02-29 00:00:00", "2024-03-01 00:00:00", "2024-03-02 00:00:00", "2024-03-03 00:00:00"]),
            ("weekly", "Mon *-*-* 00:00:00", &["2024-03-04 00:00:00", "2024-03-11 00:00:00", "2024-03-18 00:00:00", "2024-03-25 00:00:00", "2024-04-01 00:00:00"]),
            ("monthly", "*-*-01 00:00:00", &["2024-03-01 00:00:00", "2024-04-01 00:00:00", "2024-05-01 00:00:00", "2024-06-01 00:00:00", "2024-07-01 00:00:00"]),
            ("yearly", "*-01-01 00:00:00", &["2025-01-01 00:00:00", "2026-01-01 00:00:00", "2027-01-01 00:00:00", "2028-01-01 00:00:00", "2029-01-01 00:00:00"]),
            ("annually", "*-01-01 00:00:00", &["2025-01-01 00:00:00", "2026-01-01 00:00:00", "2027-01-01 00:00:00", "2028-01-01 00:00:00", "2029-01-01 00:00:00"]),
            ("quarterly", "*-01,04,07,10-01 00:00:00", &["2024-04-01 00:00:00", "2024-07-01 00:00:00", "2024-10-01 00:00:00", "2025-01-01 00:00:00", "2025-04-01 00:00:00"]),
            ("semiannually", "*-01,07-01 00:00:00", &["2024-07-01 00:00:00", "2025-01-01 00:00:00", "2025-07-01 00:00:00", "2026-01-01 00:00:00", "2026-07-01 00:00:00"]),
            ("Mon..Fri *-*-* 9:00", "Mon..Fri *-*-* 09:00:00", &["2024-02-28 09:00:00", "2024-02-29 09:00:00", "2024-03-01 09:00:00", "2024-03-04 09:00:00", "2024-03-05 09:00:00"]),
            ("Mon,Tue", "Mon,Tue *-*-* 00:00:00", &["2024-03-04 00:00:00", "2024-03-05 00:00:00", "2024-03-11 00:00:00", "2024-03-12 00:00:00", "2024-03-18 00:00:00"]),
            ("monday", "Mon *-*-* 00:00:00", &["2024-03-04 00:00:00", "2024-03-11 00:00:00", "2024-03-18 00:00:00", "2024-03-25 00:00:00", "2024-04-01 00:00:00"]),
            ("MON 1:00", "Mon *-*-* 01:00:00", &["2024-03-04 01:00:00", "2024-03-11 01:00:00", "2024-03-18 01:00:00", "2024-03-25 01:00:00", "2024-04-01 01:00:00"]),
            ("Wednesday,friday", "Wed,Fri *-*-* 00:00:00", &["2024-02-28 00:00:00", "2024-03-01 00:00:00", "2024-03-06 00:00:00", "2024-03-08 00:00:00", "2024-03-13 00:00:00"]),
            ("Fri,Sat,Sun,Mon", "Mon,Fri..Sun *-*-* 00:00:00", &["2024-03-01 00:00:00", "2024-03-02 00:00:00", "2024-03-03 00:00:00", "2024-03-04 00:00:00", "2024-03-08 00:00:00"]),
            ("Sat,Mon..Wed,Thu", "Mon..Thu,Sat *-*-* 00:00:00", &["2024-02-28 00:00:00", "2024-02-29 00:00:00", "2024-03-02 00:00:00", "2024-03-04 00:00:00", "2024-03-05 00:00:00"]),
            ("mon..wed 1:00", "Mon..Wed *-*-* 01:00:00", &["2024-02-28 01:00:00", "2024-03-04 01:00:00", "2024-03-05 01:00:00", "2024-03-06 01:00:00", "2024-03-11 01:00:00"]),
            ("*:0/15", "*-*-* *:00/15:00", &["2024-02-27 12:45:00", "2024-02-27 13:00:00", "2024-02-27 13:15:00", "2024-02-27 13:30:00", "2024-02-27 13:45:00"]),
            ("*:0/15 UTC", "*-*-* *:00/15:00 UTC", &["2024-02-27 12:45:00", "2024-02-27 13:00:00", "2024-02-27 13:15:00", "2024-02-27 13:30:00", "2024-02-27 13:45:00"]),
            ("*:*:0/20", "*-*-* *:*:00/20", &["2024-02-27 12:35:00", "2024-02-27 12:35:20", "2024-02-27 12:35:40", "2024-02-27 12:36:00", "2024-02-27 12:36:20"]),
            ("*-*-* *:*:*", "*-*-* *:*:*", &["2024-02-27 12:34:57", "2024-02-27 12:34:58", "2024-02-27 12:34:59", "2024-02-27 12:35:00", "2024-02-27 12:35:01"]),
            ("*:*", "*-*-* *:*:00", &["2024-02-27 12:35:00", "2024-02-27 12:36:00", "2024-02-27 12:37:00", "2024-02-27 12:38:00", "2024-02-27 12:39:00"]),
            ("12:00", "*-*-* 12:00:00", &["2024-02-28 12:00:00", "2024-02-29 12:00:00", "2024-03-01 12:00:00", "2024-03-02 12:00:00", "2024-03-03 12:00:00"]),
            ("*-*-* 1:2", "*-*-* 01:02:00", &["2024-02-28 01:02:00", "2024-02-29 01:02:00", "2024-03-01 01:02:00", "2024-03-02 01:02:00", "2024-03-03 01:02:00"]),
            ("00/5:00", "*-*-* 00/5:00:00", &["2024-02-27 15:00:00", "2024-02-27 20:00:00", "2024-02-28 00:00:00", "2024-02-28 05:00:00", "2024-02-28 10:00:00"]),
            ("*:5,3,1..2", "*-*-* *:01..02,03,05:00", &["2024-02-27 13:01:00", "2024-02-27 13:02:00", "2024-02-27 13:03:00", "2024-02-27 13:05:00", "2024-02-27 14:01:00"]),
            ("5,5,1:00", "*-*-* 01,05:00:00", &["2024-02-28 01:00:00", "2024-02-28 05:00:00", "2024-02-29 01:00:00", "2024-02-29 05:00:00", "2024-03-01 01:00:00"]),
            ("1..3,2..5:00", "*-*-* 01..03,02..05:00:00", &["2024-02-28 01:00:00", "2024-02-28 02:00:00", "2024-02-28 03:00:00", "2024-02-28 04:00:00", "2024-02-28 05:00:00"]),
            ("2024-*-01/2", "2024-*-01/2 00:00:00", &["2024-02-29 00:00:00", "2024-03-01 00:00:00", "2024-03-03 00:00:00", "2024-03-05 00:00:00", "2024-03-07 00:00:00"]),
            ("*-02~03", "*-02~03 00:00:00", &["2025-02-26 00:00:00", "2026-02-26 00:00:00", "2027-02-26 00:00:00", "2028-02-27 00:00:00", "2029-02-26 00:00:00"]),
            ("*-05~07/1", "*-05~07/1 00:00:00", &["2024-05-25 00:00:00", "2024-05-26 00:00:00", "2024-05-27 00:00:00", "2024-05-28 00:00:00", "2024-05-29 00:00:00"]),
            ("*-*~07/2", "*-*~07/2 00:00:00", &["2024-02-29 00:00:00", "2024-03-25 00:00:00", "2024-03-27 00:00:00", "2024-03-29 00:00:00", "2024-03-31 00:00:00"]),
            ("*-*~01..03", "*-*~01..03 00:00:00", &["2024-02-28 00:00:00", "2024-02-29 00:00:00", "2024-03-29 00:00:00", "2024-03-30 00:00:00", "2024-03-31 00:00:00"]),
            ("*-*-31", "*-*-31 00:00:00", &["2024-03-31 00:00:00", "2024-05-31 00:00:00", "2024-07-31 00:00:00", "2024-08-31 00:00:00", "2024-10-31 00:00:00"]),
            ("*-02-29 01:02", "*-02-29 01:02:00", &["2024-02-29 01:02:00", "2028-02-29 01:02:00", "2032-02-29 01:02:00", "2036-02-29 01:02:00", "2040-02-29 01:02:00"]),
            ("*-02-30", "*-02-30 00:00:00", &[]),
            ("2024-02-29", "2024-02-29 00:00:00", &["2024-02-29 00:00:00"]),
            ("2023-01-01", "2023-01-01 00:00:00", &[]),
            ("24-01-01", "2024-01-01 00:00:00", &[]),
            ("12-25", "*-12-25 00:00:00", &["2024-12-25 00:00:00", "2025-12-25 00:00:00", "2026-12-25 00:00:00", "2027-12-25 00:00:00", "2028-12-25 00:00:00"]),
            ("*-01/3-01", "*-01/3-01 00:00:00", &["2024-04-01 00:00:00", "2024-07-01 00:00:00", "2024-10-01 00:00:00", "2025-01-01 00:00:00", "2025-04-01 00:00:00"]),
            ("*-*-1..5/2", "*-*-01..05/2 00:00:00", &["2024-03-01 00:00:00", "2024-03-03 00:00:00", "2024-03-05 00:00:00", "2024-04-01 00:00:00", "2024-04-03 00:00:00"]),
            ("Mon *-*-* 01:02:03", "Mon *-*-* 01:02:03", &["2024-03-04 01:02:03", "2024-03-11 01:02:03", "2024-03-18 01:02:03", "2024-03-25 01:02:03", "2024-04-01 01:02:03"]),
            ("2199-12-31 23:59:59", "2199-12-31 23:59:59", &["2199-12-31 23:59:59"]),
            ("Sat *-*-29,30,31 23:59:59", "Sat *-*-29,30,31 23:59:59", &["2024-03-30 23:59:59", "2024-06-29 23:59:59", "2024-08-31 23:59:59", "2024-11-30 23:59:59", "2025-03-29 23:59:59"]),
            ("Fri *-*-13", "Fri *-*-13 00:00:00", &["2024-09-13 00:00:00", "2024-12-13 00:00:00", "2025-06-13 00:00:00", "2026-02-13 00:00:00", "2026-03-13 00:00:00"]),
            ("*-*-* 23:59:59", "*-*-* 23:59:59", &["2024-02-27 23:59:59", "2024-02-28 23:59:59", "2024-02-29 23:59:59", "2024-03-01 23:59:59", "2024-03-02 23:59:59"]),
            ("2025,2027-02-28..29 12:00", "2025,2027-02-28..29 12:00:00", &["2025-02-28 12:00:00", "2027-02-28 12:00:00"]),
            ("Mon *-05~07/1 06:30", "Mon *-05~07/1 06:30:00", &["2024-05-27 06:30:00", "2025-05-26 06:30:00", "2026-05-25 06:30:00", "2027-05-31 06:30:00", "2028-05-29 06:30:00"]),
            ("2024..2026-12-31 23:00", "2024..2026-12-31 23:00:00", &["2024-12-31 23:00:00", "2025-12-31 23:00:00", "2026-12-31 23:00:00"]),
            ("Sun *-02-29", "Sun *-02-29 00:00:00", &["2032-02-29 00:00:00", "2060-02-29 00:00:00", "2088-02-29 00:00:00", "2128-02-29 00:00:00", "2156-02-29 00:00:00"]),
        ];
        for (text, normalized, expected) in cases {
            let spec = CalendarSpec::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(spec.to_string(), *normalized, "normalized form of {text:?}");
            assert_eq!(elapses(&spec, BASE, 5), *expected, "elapses of {text:?}");
            // The normalized form means the same.
            let again = CalendarSpec::parse(normalized).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again.to_string(), *normalized);
            assert_eq!(elapses(&again, BASE, 5), *expected, "elapses of {normalized:?}");
        }
    }

    #[test]
    fn strictly_after() {
        let spec = CalendarSpec::parse("*-*-* 12:34:56").unwrap();
        assert_eq!(spec.next_after(BASE - 1), Some(BASE));
        assert_eq!(spec.next_after(BASE), Some(BASE + 86400));
    }

    #[test]
    fn before_the_epoch_and_past_the_end() {
        let spec = CalendarSpec::parse("daily").unwrap();
        assert_eq!(spec.next_after(-86400 * 400), Some(0));
        assert_eq!(spec.next_after(i64::MAX), None);
        let last = CalendarSpec::parse("2199-12-31 23:59:59").unwrap();
        let at = last.next_after(BASE).unwrap();
        assert_eq!(last.next_after(at), None);
        assert_eq!(spec.next_after(at), None);
    }

    #[test]
    fn leap_years() {
        assert!(is_leap(2000) && is_leap(2024) && !is_leap(1900) && !is_leap(2100) && !is_leap(2023));
        let spec = CalendarSpec::parse("*-02-29").unwrap();
        // 2100 is not a leap year: 2096 is followed by 2104.
        let base = days_from_civil(2096, 3, 1) * 86400;
        assert_eq!(elapses(&spec, base, 1), ["2104-02-29 00:00:00"]);
        for days in [-1, 0, 59, 365, 11016, 19780, 47482, 84000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn never_is_found_quickly() {
        // Impossible combinations are given up on at the end of 2199 without scanning second by second.
        for text in ["*-02-30", "Mon 2024-02-27", "*-04-31 23:59:59", "Sat *-02~01 23:59:59"] {
            let spec = CalendarSpec::parse(text).unwrap();
            let found = spec.next_after(0);
            if text.starts_with("Sat") {
                assert!(found.is_some());
            } else {
                assert_eq!(found, None, "{text}");
            }
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("Mon 25:00", "OnCalendar=Mon 25:00: hour 25 is out of range 0..23"),
            ("00:60", "minute 60 is out of range 0..59"),
            ("*:*:60", "second 60 is out of range 0..59"),
            ("2024-13-01", "month 13 is out of range 1..12"),
            ("*-*-32", "day 32 is out of range 1..31"),
            ("*-*-0", "day 0 is out of range 1..31"),
            ("*-*~00", "day 0 is out of range 1..31"),
            ("1969-01-01", "year 1969 is out of range 1970..2199"),
            ("2200-01-01", "year 2200 is out of range 1970..2199"),
            ("*-*-* 12:00:00.5", "fractional seconds \"00.5\" are not supported"),
            ("*:0/15 Europe/Berlin", "time zone Europe/Berlin is not supported, only UTC"),
            ("12:00 CET", "time zone CET is not supported, only UTC"),
            ("Mon,Funday", "unknown weekday \"Funday\""),
            ("Sat..Mon", "weekday range \"Sat..Mon\" runs backwards"),
            ("*-*-5..1", "day range \"5..1\" runs backwards"),
            ("0/0:00", "hour repetition in \"0/0\" must be at least 1"),
            ("*/10:00", "hour \"*/10\": '*' cannot repeat"),
            ("1,*:00", "'*' cannot be part of a list"),
            ("1:2:3:4", "time \"1:2:3:4\" is not HH:MM or HH:MM:SS"),
            ("2024-1-1-1", "is not YYYY-MM-DD"),
            ("2024~01", "month 2024 is out of range 1..12"),
            ("x1:00", "unknown weekday \"x1:00\""),
            ("1a:00", "hour \"1a\" is not a number"),
            ("", "empty calendar expression"),
            ("Mon 2024-01-01 12:00 13:00", "unexpected \"13:00\""),
            ("*-*~07..03", "day range \"07..03\" runs backwards"),
            ("*-*~01..03/2", "a range counted from the end of the month cannot repeat"),
        ];
        for (text, message) in cases {
            match CalendarSpec::parse(text) {
                Ok(spec) => panic!("{text:?} parsed as {spec}"),
                Err(e) => assert!(e.contains(message), "{text:?}: {e:?} does not say {message:?}"),
            }
        }
    }
}
