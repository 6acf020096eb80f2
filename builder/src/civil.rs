//! Calendar time from seconds since 1970 (UTC), for the places that must
//! write a date themselves: FAT timestamps and AWS request dates.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// Howard Hinnant's days-to-civil algorithm.
pub fn civil(unix_seconds: u64) -> Civil {
    let days = (unix_seconds / 86400) as i64;
    let secs = unix_seconds % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil { year, month, day, hour: (secs / 3600) as u32, minute: (secs / 60 % 60) as u32, second: (secs % 60) as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil(0), Civil { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 });
        assert_eq!(civil(1_700_000_000), Civil { year: 2023, month: 11, day: 14, hour: 22, minute: 13, second: 20 });
        assert_eq!(civil(951_782_400), Civil { year: 2000, month: 2, day: 29, hour: 0, minute: 0, second: 0 });
    }
}
