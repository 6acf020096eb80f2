//! Expiration times as etcd writes them: RFC 3339 in UTC with nanoseconds and
//! Go's trailing-zero trimming (`2026-01-02T03:04:05.5Z`). Kept as Unix
//! nanoseconds inside the store.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::{SystemTime, UNIX_EPOCH};

pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A point in time, nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(d.as_nanos() as u64)
    }

    pub fn plus_seconds(self, seconds: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(NANOS_PER_SECOND)))
    }

    /// Seconds left, rounded up like etcd (1..n while alive; 0 or negative once due).
    pub fn ttl_from(self, now: Timestamp) -> i64 {
        let left = self.0 as i128 - now.0 as i128;
        let mut ttl = left / NANOS_PER_SECOND as i128;
        if left % NANOS_PER_SECOND as i128 > 0 {
            ttl += 1;
        }
        ttl as i64
    }

    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / NANOS_PER_SECOND;
        let nanos = self.0 % NANOS_PER_SECOND;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let mut s = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60);
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// Parses what `to_rfc3339` writes (and any `Z`-suffixed RFC 3339 time).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let t = text.strip_suffix('Z')?;
        let (date, time) = t.split_once('T')?;
        let mut dp = date.split('-');
        let y: i64 = dp.next()?.parse().ok()?;
        let m: u32 = dp.next()?.parse().ok()?;
        let d: u32 = dp.next()?.parse().ok()?;
        let (hms, frac) = match time.split_once('.') {
            Some((a, b)) => (a, b),
            None => (time, ""),
        };
        let mut tp = hms.split(':');
        let hh: u64 = tp.next()?.parse().ok()?;
        let mm: u64 = tp.next()?.parse().ok()?;
        let ss: u64 = tp.next()?.parse().ok()?;
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
        let days = days_from_civil(y, m, d);
        if days < 0 {
            return None;
        }
        let secs = days as u64 * 86_400 + hh * 3600 + mm * 60 + ss;
        Some(Timestamp(secs * NANOS_PER_SECOND + nanos))
    }
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 UTC time: {text}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_go_rfc3339nano() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        // 2013-09-09T12:30:01.5Z
        let t = Timestamp(1_378_729_801 * NANOS_PER_SECOND + 500_000_000);
        assert_eq!(t.to_rfc3339(), "2013-09-09T12:30:01.5Z");
        assert_eq!(Timestamp::parse_rfc3339("2013-09-09T12:30:01.5Z"), Some(t));
        let leap = Timestamp::parse_rfc3339("2024-02-29T23:59:59.000000001Z").unwrap();
        assert_eq!(leap.to_rfc3339(), "2024-02-29T23:59:59.000000001Z");
    }

    #[test]
    fn ttl_rounds_up_while_alive() {
        let now = Timestamp(10 * NANOS_PER_SECOND);
        assert_eq!(Timestamp(15 * NANOS_PER_SECOND).ttl_from(now), 5);
        assert_eq!(Timestamp(14 * NANOS_PER_SECOND + 1).ttl_from(now), 5);
        assert_eq!(Timestamp(10 * NANOS_PER_SECOND).ttl_from(now), 0);
        assert_eq!(Timestamp(8 * NANOS_PER_SECOND).ttl_from(now), -2);
    }
}
