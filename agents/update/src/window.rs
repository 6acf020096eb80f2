//! Reboot windows as locksmith had them: a start (`04:00` every day, or
//! `Thu 04:00` every week, UTC) and a length (`1h30m`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// 0 = Monday; `None`: every day.
    pub day: Option<u32>,
    /// Minutes after midnight UTC.
    pub start: u32,
    pub length: Duration,
}

impl Window {
    pub fn parse(start: &str, length: &str) -> Result<Window, String> {
        let (day, time) = match start.trim().split_once(' ') {
            Some((d, t)) => {
                let i = DAYS.iter().position(|x| x.eq_ignore_ascii_case(&d[..d.len().min(3)]) && d.len() >= 3).ok_or_else(|| format!("{d:?} is not a day (Mon..Sun)"))?;
                (Some(i as u32), t.trim())
            }
            None => (None, start.trim()),
        };
        let (h, m) = time.split_once(':').ok_or_else(|| format!("start {start:?} is not [Day ]HH:MM"))?;
        let (h, m): (u32, u32) = match (h.parse(), m.parse()) {
            (Ok(h), Ok(m)) if h < 24 && m < 60 => (h, m),
            _ => return Err(format!("start {start:?} is not [Day ]HH:MM")),
        };
        let length = crate::config::parse_duration(length).filter(|d| !d.is_zero()).ok_or_else(|| format!("length {length:?} is not a duration such as 1h30m"))?;
        let period = if day.is_some() { 7 * 86400 } else { 86400 };
        if length.as_secs() > period {
            return Err(format!("length {length:?} is longer than the window repeats"));
        }
        Ok(Window { day, start: h * 60 + m, length })
    }

    fn period(&self) -> u64 {
        if self.day.is_some() {
            7 * 86400
        } else {
            86400
        }
    }

    /// Seconds from the window's start to `now`, modulo its period.
    fn since_start(&self, now: SystemTime) -> u64 {
        let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        // 1970-01-01 was a Thursday: shift so the week starts on Monday.
        let since_monday = (secs + 3 * 86400) % (7 * 86400);
        let t = if self.day.is_some() { since_monday } else { secs % 86400 };
        let offset = self.day.unwrap_or(0) as u64 * 86400 + self.start as u64 * 60;
        (t + self.period() - offset) % self.period()
    }

    pub fn contains(&self, now: SystemTime) -> bool {
        self.since_start(now) < self.length.as_secs()
    }

    /// How long until the window opens (zero when open).
    pub fn wait(&self, now: SystemTime) -> Duration {
        let s = self.since_start(now);
        if s < self.length.as_secs() {
            Duration::ZERO
        } else {
            Duration::from_secs(self.period() - s)
        }
    }

    pub fn describe(&self) -> String {
        let day = self.day.map(|d| format!("{} ", DAYS[d as usize])).unwrap_or_default();
        format!("{day}{:02}:{:02} UTC for {}", self.start / 60, self.start % 60, humantime::format_duration(self.length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn daily_and_weekly_windows() {
        let w = Window::parse("04:00", "1h30m").unwrap();
        assert!(w.contains(at("2026-11-22T04:00:00Z")));
        assert!(w.contains(at("2026-11-22T05:29:59Z")));
        assert!(!w.contains(at("2026-11-22T05:30:00Z")));
        assert_eq!(w.wait(at("2026-11-22T03:00:00Z")), Duration::from_secs(3600));
        assert_eq!(w.wait(at("2026-11-22T06:00:00Z")), Duration::from_secs(22 * 3600));
        // 2026-11-26 is a Thursday.
        let w = Window::parse("Thu 23:30", "1h").unwrap();
        assert!(w.contains(at("2026-11-26T23:45:00Z")));
        assert!(w.contains(at("2026-11-27T00:15:00Z")), "a window may cross midnight");
        assert!(!w.contains(at("2026-11-25T23:45:00Z")));
        assert_eq!(w.describe(), "Thu 23:30 UTC for 1h");
        for (s, l) in [("25:00", "1h"), ("Funday 04:00", "1h"), ("04:00", "soon"), ("04:00", "2d")] {
            assert!(Window::parse(s, l).is_err(), "{s} {l}");
        }
    }
}
