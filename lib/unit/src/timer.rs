//! `.timer` units as systemd.timer(5) defines them, and when one elapses.
//! [`next_elapse`] is a pure function of the timer's settings and a
//! snapshot of the clocks and history ([`Moments`]), so every rule is tested
//! here with made-up clocks; the supervisor only feeds it the real ones.

use crate::calendar::CalendarSpec;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TimerSpec {
    /// `OnActiveSec=`: after the timer itself was started.
    pub on_active: Vec<Duration>,
    /// `OnBootSec=`: after the machine booted.
    pub on_boot: Vec<Duration>,
    /// `OnStartupSec=`: after the service manager started.
    pub on_startup: Vec<Duration>,
    /// `OnUnitActiveSec=`: after the unit it starts was last started.
    pub on_unit_active: Vec<Duration>,
    /// `OnUnitInactiveSec=`: after the unit it starts last stopped.
    pub on_unit_inactive: Vec<Duration>,
    pub on_calendar: Vec<CalendarSpec>,
    /// `Persistent=`: a calendar elapse missed while the machine was off
    /// is caught up when the timer starts.
    pub persistent: bool,
    /// `RandomizedDelaySec=`: each elapse is later by a random span up to this.
    pub randomized_delay: Duration,
    /// `Unit=`: the unit started; by default the service of the timer's own name.
    pub unit: Option<String>,
    /// `RemainAfterElapse=`: a timer with nothing left to elapse stays active (the default).
    pub remain_after_elapse: bool,
}

impl TimerSpec {
    pub fn is_empty(&self) -> bool {
        self.on_active.is_empty() && self.on_boot.is_empty() && self.on_startup.is_empty() && self.on_unit_active.is_empty() && self.on_unit_inactive.is_empty() && self.on_calendar.is_empty()
    }
}

/// One instant on both clocks: `mono` since the machine booted (what
/// `OnBootSec=` counts), `real` in seconds since the epoch (what calendar
/// events match).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub mono: Duration,
    pub real: i64,
}

/// What the timer's next elapse depends on besides its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moments {
    pub now: Stamp,
    /// When the service manager started, since boot.
    pub startup: Duration,
    /// When the timer unit was started this boot.
    pub activated: Stamp,
    /// When it last elapsed: this boot, or (Persistent=) in an earlier boot,
    /// when only the wall-clock time means anything (`mono` is None).
    pub last_trigger: Option<(Option<Duration>, i64)>,
    /// When the unit it starts last started, and last stopped, this boot.
    pub unit_active: Option<Duration>,
    pub unit_inactive: Option<Duration>,
}

/// The next time (since boot) the timer elapses, before its randomized
/// delay; at or before `now` means at once. None: nothing left to elapse.
///
/// As systemd: OnActiveSec=, OnBootSec= and OnStartupSec= each elapse
/// once; one already past when the timer starts elapses at once, unless the
/// timer already elapsed since. OnUnitActiveSec= and OnUnitInactiveSec=
/// count from the unit's last start or stop, or from the timer's last
/// elapse if that was later, and wait until the unit has started (stopped)
/// once. A calendar event is the first match after the last elapse (kept
/// across boots with Persistent=, so a missed one elapses at once), or
/// after the timer started when it never elapsed.
pub fn next_elapse(spec: &TimerSpec, m: &Moments) -> Option<Duration> {
    let mut next: Option<Duration> = None;
    let mut consider = |at: Duration| next = Some(next.map_or(at, |n| n.min(at)));
    let last_mono = m.last_trigger.and_then(|(mono, _)| mono);
    let once = |base: Duration, value: Duration| {
        let at = base + value;
        // Past (or due at that very elapse) and the timer already elapsed this boot: spent.
        let spent = last_mono.is_some_and(|last| at < m.now.mono || at <= last);
        (!spent).then_some(at)
    };
    for (values, base) in [(&spec.on_active, m.activated.mono), (&spec.on_boot, Duration::ZERO), (&spec.on_startup, m.startup)] {
        for v in values {
            if let Some(at) = once(base, *v) {
                consider(at);
            }
        }
    }
    for (values, unit_time) in [(&spec.on_unit_active, m.unit_active), (&spec.on_unit_inactive, m.unit_inactive)] {
        let Some(unit_time) = unit_time else { continue };
        let base = last_mono.map_or(unit_time, |l| l.max(unit_time));
        for v in values {
            consider(base + *v);
        }
    }
    let since_real = m.last_trigger.map_or(m.activated.real, |(_, real)| real);
    for spec in &spec.on_calendar {
        if let Some(real) = spec.next_after(since_real) {
            // The wall-clock time, on the monotonic clock as of now.
            let ahead = real - m.now.real;
            consider(if ahead <= 0 { m.now.mono.saturating_sub(Duration::from_secs((-ahead) as u64)) } else { m.now.mono + Duration::from_secs(ahead as u64) });
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    // 2026-12-04 00:00:00 UTC
    const MIDNIGHT: i64 = 1_796_342_400;

    fn moments(now_mono: u64, now_real: i64) -> Moments {
        Moments {
            now: Stamp { mono: S(now_mono), real: now_real },
            startup: S(2),
            activated: Stamp { mono: S(3), real: now_real - now_mono as i64 + 3 },
            last_trigger: None,
            unit_active: None,
            unit_inactive: None,
        }
    }

    fn spec(f: impl FnOnce(&mut TimerSpec)) -> TimerSpec {
        let mut s = TimerSpec { remain_after_elapse: true, ..Default::default() };
        f(&mut s);
        s
    }

    #[test]
    fn boot_startup_and_active_spans_elapse_once() {
        let t = spec(|s| {
            s.on_boot.push(S(60));
            s.on_startup.push(S(100));
            s.on_active.push(S(30));
        });
        let mut m = moments(10, MIDNIGHT);
        assert_eq!(next_elapse(&t, &m), Some(S(33)), "OnActiveSec counts from the timer's start (3 s)");
        m.now.mono = S(33);
        m.last_trigger = Some((Some(S(33)), MIDNIGHT + 23));
        assert_eq!(next_elapse(&t, &m), Some(S(60)), "OnActiveSec spent, OnBootSec next");
        m.now.mono = S(61);
        m.last_trigger = Some((Some(S(60)), MIDNIGHT + 50));
        assert_eq!(next_elapse(&t, &m), Some(S(102)), "OnStartupSec counts from the manager's start (2 s)");
        m.now.mono = S(103);
        m.last_trigger = Some((Some(S(102)), MIDNIGHT + 92));
        assert_eq!(next_elapse(&t, &m), None, "all spent");
    }

    #[test]
    fn a_span_already_past_when_the_timer_starts_elapses_at_once() {
        let t = spec(|s| s.on_boot.push(S(5)));
        let m = moments(300, MIDNIGHT);
        assert_eq!(next_elapse(&t, &m), Some(S(5)), "past, never elapsed: at once");
    }

    #[test]
    fn unit_active_counts_from_the_units_last_start_and_waits_for_one() {
        let t = spec(|s| s.on_unit_active.push(S(3600)));
        let mut m = moments(100, MIDNIGHT);
        assert_eq!(next_elapse(&t, &m), None, "the unit never started: nothing to count from");
        m.unit_active = Some(S(50));
        assert_eq!(next_elapse(&t, &m), Some(S(3650)));
        // The timer started it at 3650; the unit came up a second later.
        m.last_trigger = Some((Some(S(3650)), MIDNIGHT));
        m.unit_active = Some(S(3651));
        assert_eq!(next_elapse(&t, &m), Some(S(7251)));
        // With OnBootSec= as the first kick, the classic pair.
        let both = spec(|s| {
            s.on_boot.push(S(60));
            s.on_unit_active.push(S(600));
        });
        let m = moments(10, MIDNIGHT);
        assert_eq!(next_elapse(&both, &m), Some(S(60)));
    }

    #[test]
    fn unit_inactive_counts_from_the_units_last_stop() {
        let t = spec(|s| s.on_unit_inactive.push(S(10)));
        let mut m = moments(100, MIDNIGHT);
        assert_eq!(next_elapse(&t, &m), None);
        m.unit_inactive = Some(S(95));
        assert_eq!(next_elapse(&t, &m), Some(S(105)));
        m.last_trigger = Some((Some(S(105)), MIDNIGHT));
        m.now.mono = S(106);
        assert_eq!(next_elapse(&t, &m), Some(S(115)), "from the elapse, later than the stop");
    }

    #[test]
    fn calendar_from_the_timers_start_or_its_last_elapse() {
        let t = spec(|s| s.on_calendar.push(CalendarSpec::parse("*-*-* 06:00:00").unwrap()));
        // Now is 05:00 (mono 1000 s): 06:00 is an hour ahead.
        let m = moments(1000, MIDNIGHT + 5 * 3600);
        assert_eq!(next_elapse(&t, &m), Some(S(1000 + 3600)));
        // It elapsed at 06:00 (mono 4600): next is tomorrow's.
        let mut m = moments(4601, MIDNIGHT + 6 * 3600 + 1);
        m.last_trigger = Some((Some(S(4600)), MIDNIGHT + 6 * 3600));
        assert_eq!(next_elapse(&t, &m), Some(S(4601 + 86400 - 1)));
    }

    #[test]
    fn persistent_catches_up_a_missed_calendar_event_at_once() {
        let t = spec(|s| {
            s.on_calendar.push(CalendarSpec::parse("daily").unwrap());
            s.persistent = true;
        });
        // Last elapsed two days ago, in an earlier boot; now is 10:00.
        let mut m = moments(20, MIDNIGHT + 10 * 3600);
        m.last_trigger = Some((None, MIDNIGHT - 2 * 86400));
        let at = next_elapse(&t, &m).unwrap();
        assert!(at <= m.now.mono, "missed: at once, got {at:?}");
        // Without a record it waits for the next midnight.
        m.last_trigger = None;
        assert_eq!(next_elapse(&t, &m), Some(S(20 + 14 * 3600)));
    }

    #[test]
    fn the_earliest_of_several_triggers_wins() {
        let t = spec(|s| {
            s.on_calendar.push(CalendarSpec::parse("*:0/15").unwrap());
            s.on_boot.push(S(120));
        });
        // 00:10:00, mono 100: boot+120 is 20 s ahead, :15 five minutes.
        let m = moments(100, MIDNIGHT + 600);
        assert_eq!(next_elapse(&t, &m), Some(S(120)));
        let m = moments(100, MIDNIGHT + 14 * 60 + 50);
        assert_eq!(next_elapse(&t, &m), Some(S(110)));
    }
}
