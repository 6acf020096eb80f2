//! What a service may use: `Limit*=` (setrlimit(2) on its processes, as
//! systemd.exec(5) has them) and the cgroup v2 limits of
//! systemd.resource-control(5) — `MemoryMax=`, `MemoryHigh=`, `MemoryLow=`,
//! `MemoryMin=`, `MemorySwapMax=`, `CPUQuota=`, `CPUWeight=`, `TasksMax=`,
//! `IOWeight=` — written into the service's own cgroup before it starts.

/// setrlimit(2)'s "no limit".
pub const INFINITY: u64 = u64::MAX;

/// How a `Limit*=` value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// Bytes, with 1024-based K, M, G, T, P, E suffixes.
    Bytes,
    Count,
    /// A time span, kept in seconds (LimitCPU=).
    Seconds,
    /// A time span, kept in microseconds (LimitRTTIME=).
    Micros,
    /// A nice level -20..19 (kept as 20 - nice), or the raw 0..40.
    Nice,
}

/// `Limit*=` by name, the Linux RLIMIT_* number and its measure.
const RLIMITS: [(&str, i32, Measure); 16] = [
    ("LimitCPU", 0, Measure::Seconds),
    ("LimitFSIZE", 1, Measure::Bytes),
    ("LimitDATA", 2, Measure::Bytes),
    ("LimitSTACK", 3, Measure::Bytes),
    ("LimitCORE", 4, Measure::Bytes),
    ("LimitRSS", 5, Measure::Bytes),
    ("LimitNPROC", 6, Measure::Count),
    ("LimitNOFILE", 7, Measure::Count),
    ("LimitMEMLOCK", 8, Measure::Bytes),
    ("LimitAS", 9, Measure::Bytes),
    ("LimitLOCKS", 10, Measure::Count),
    ("LimitSIGPENDING", 11, Measure::Count),
    ("LimitMSGQUEUE", 12, Measure::Bytes),
    ("LimitNICE", 13, Measure::Nice),
    ("LimitRTPRIO", 14, Measure::Count),
    ("LimitRTTIME", 15, Measure::Micros),
];

/// One `Limit*=`: resource `resource` (RLIMIT_*) at `soft`/`hard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// Whether `key` is a `Limit*=` directive.
pub fn is_rlimit(key: &str) -> bool {
    RLIMITS.iter().any(|(k, _, _)| *k == key)
}

/// `LimitNOFILE=4096`, `LimitNOFILE=1024:65536`, `LimitCORE=infinity`,
/// `LimitMEMLOCK=64M`, `LimitCPU=2min`, `LimitNICE=-5`.
pub fn parse_rlimit(key: &str, value: &str) -> Result<Rlimit, String> {
    let (_, resource, measure) = *RLIMITS.iter().find(|(k, _, _)| *k == key).ok_or_else(|| format!("{key}= is not a resource limit"))?;
    let one = |v: &str| -> Result<u64, String> {
        if v == "infinity" {
            return Ok(INFINITY);
        }
        let n = match measure {
            Measure::Bytes => parse_bytes(v),
            Measure::Count => v.parse().ok(),
            Measure::Seconds => crate::parse_duration(v).map(|d| d.as_secs()),
            Measure::Micros => crate::parse_duration(v).map(|d| d.as_micros() as u64),
            Measure::Nice => match v.parse::<i64>() {
                Ok(n) if v.starts_with(['-', '+']) && (-20..=19).contains(&n) => Some((20 - n) as u64),
                Ok(n) if (0..=40).contains(&n) => Some(n as u64),
                _ => None,
            },
        };
        n.ok_or_else(|| {
            let expected = match measure {
                Measure::Bytes => "a size such as 4096, 64K, 1G or infinity",
                Measure::Count => "a number or infinity",
                Measure::Seconds | Measure::Micros => "a time span such as 30s or 2min, or infinity",
                Measure::Nice => "a nice level -20..19 (with its sign) or 0..40",
            };
            format!("{key}={value}: expected {expected}")
        })
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (one(s)?, one(h)?),
        None => {
            let n = one(value)?;
            (n, n)
        }
    };
    if soft > hard {
        return Err(format!("{key}={value}: the soft limit is above the hard one"));
    }
    Ok(Rlimit { resource, soft, hard })
}

/// `4096`, `64K`, `1.5G` (1024-based) → bytes.
fn parse_bytes(v: &str) -> Option<u64> {
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let power = match unit {
        "" | "B" => 0,
        "K" => 1,
        "M" => 2,
        "G" => 3,
        "T" => 4,
        "P" => 5,
        "E" => 6,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let bytes = n * 1024f64.powi(power);
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// A cgroup limit's value, before the machine's size is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Amount {
    /// `infinity`: the file's `max`.
    Max,
    /// A number as it is written.
    Exactly(u64),
    /// Hundredths of a percent of the machine's memory (Memory*=) or of
    /// its task limit (TasksMax=).
    Share(u64),
    /// Text the file takes as it is (`cpu.max`'s "20000 100000", `io.weight`'s "default 50").
    Text(String),
}

/// One cgroup v2 limit: `directive` writes `file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimit {
    pub directive: &'static str,
    pub file: &'static str,
    pub amount: Amount,
}

impl CgroupLimit {
    /// What to write into the file, on a machine with `memory` bytes and
    /// a kernel task limit of `tasks`.
    pub fn value(&self, memory: u64, tasks: u64) -> String {
        match &self.amount {
            Amount::Max => "max".into(),
            Amount::Exactly(n) => n.to_string(),
            Amount::Share(hundredths) => {
                let whole = if self.file == "pids.max" { tasks } else { memory };
                ((whole as u128 * *hundredths as u128 / 10_000) as u64).to_string()
            }
            Amount::Text(t) => t.clone(),
        }
    }
}

/// The resource-control directives and the file each writes.
const CGROUP_FILES: [(&str, &str); 9] = [
    ("MemoryMax", "memory.max"),
    ("MemoryHigh", "memory.high"),
    ("MemoryLow", "memory.low"),
    ("MemoryMin", "memory.min"),
    ("MemorySwapMax", "memory.swap.max"),
    ("TasksMax", "pids.max"),
    ("CPUQuota", "cpu.max"),
    ("CPUWeight", "cpu.weight"),
    ("IOWeight", "io.weight"),
];

/// The cgroup controller each file needs enabled above the group.
pub fn controller(file: &str) -> &'static str {
    match file.split_once('.').map(|(c, _)| c) {
        Some("memory") => "memory",
        Some("pids") => "pids",
        Some("cpu") => "cpu",
        _ => "io",
    }
}

/// Whether `key` is a resource-control directive.
pub fn is_cgroup_limit(key: &str) -> bool {
    CGROUP_FILES.iter().any(|(k, _)| *k == key)
}

/// `MemoryMax=512M`, `MemoryHigh=80%`, `TasksMax=64`, `CPUQuota=20%`,
/// `CPUWeight=100`, `IOWeight=50`, `infinity` where systemd allows it.
pub fn parse_cgroup_limit(key: &str, value: &str) -> Result<CgroupLimit, String> {
    let (directive, file) = *CGROUP_FILES.iter().find(|(k, _)| *k == key).ok_or_else(|| format!("{key}= is not a resource-control directive"))?;
    let percent = |v: &str| -> Option<u64> {
        let n: f64 = v.strip_suffix('%')?.parse().ok()?;
        (0.0..=100.0).contains(&n).then_some((n * 100.0).round() as u64)
    };
    let amount = match key {
        "CPUQuota" => {
            // systemd's period is 100 ms; the quota is the share of one CPU in it (200% = two CPUs).
            let n: f64 = value
                .strip_suffix('%')
                .and_then(|v| v.parse().ok())
                .filter(|n: &f64| *n > 0.0)
                .ok_or_else(|| format!("CPUQuota={value}: expected a percentage of one CPU above 0, such as 20% or 200%"))?;
            Amount::Text(format!("{} 100000", (n * 1000.0).round() as u64))
        }
        "CPUWeight" | "IOWeight" => {
            let n: u64 = value.parse().ok().filter(|n| (1..=10_000).contains(n)).ok_or_else(|| format!("{key}={value}: expected a weight 1..10000"))?;
            if key == "IOWeight" {
                Amount::Text(format!("default {n}"))
            } else {
                Amount::Exactly(n)
            }
        }
        _ if value == "infinity" => Amount::Max,
        _ if value.ends_with('%') => Amount::Share(percent(value).ok_or_else(|| format!("{key}={value}: a percentage is 0% to 100%"))?),
        "TasksMax" => Amount::Exactly(value.parse().map_err(|_| format!("TasksMax={value}: expected a number of tasks, a percentage or infinity"))?),
        _ => Amount::Exactly(parse_bytes(value).ok_or_else(|| format!("{key}={value}: expected a size such as 512M or 2G, a percentage of memory or infinity"))?),
    };
    Ok(CgroupLimit { directive, file, amount })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimits_as_systemd_writes_them() {
        assert_eq!(parse_rlimit("LimitNOFILE", "4096").unwrap(), Rlimit { resource: 7, soft: 4096, hard: 4096 });
        assert_eq!(parse_rlimit("LimitNOFILE", "1024:65536").unwrap(), Rlimit { resource: 7, soft: 1024, hard: 65536 });
        assert_eq!(parse_rlimit("LimitCORE", "infinity").unwrap(), Rlimit { resource: 4, soft: INFINITY, hard: INFINITY });
        assert_eq!(parse_rlimit("LimitMEMLOCK", "64M").unwrap().soft, 64 << 20);
        assert_eq!(parse_rlimit("LimitCPU", "2min").unwrap().soft, 120);
        assert_eq!(parse_rlimit("LimitRTTIME", "5ms").unwrap().soft, 5000);
        assert_eq!(parse_rlimit("LimitNICE", "-5").unwrap().soft, 25);
        assert_eq!(parse_rlimit("LimitNICE", "10").unwrap().soft, 10);
        assert_eq!(parse_rlimit("LimitNPROC", "10:infinity").unwrap().hard, INFINITY);
    }

    #[test]
    fn bad_rlimits_name_the_problem() {
        assert!(parse_rlimit("LimitNOFILE", "lots").unwrap_err().contains("LimitNOFILE=lots: expected a number"));
        assert!(parse_rlimit("LimitNOFILE", "100:10").unwrap_err().contains("soft limit is above"));
        assert!(parse_rlimit("LimitAS", "3X").unwrap_err().contains("expected a size"));
        assert!(parse_rlimit("LimitNICE", "-30").is_err());
        assert!(!is_rlimit("LimitFOO"));
    }

    #[test]
    fn cgroup_limits_become_what_the_files_take() {
        let v = |k: &str, val: &str| parse_cgroup_limit(k, val).unwrap().value(8 << 30, 4_194_304);
        assert_eq!(v("MemoryMax", "512M"), (512u64 << 20).to_string());
        assert_eq!(v("MemoryMax", "infinity"), "max");
        assert_eq!(v("MemoryHigh", "50%"), (4u64 << 30).to_string());
        assert_eq!(v("TasksMax", "64"), "64");
        assert_eq!(v("TasksMax", "10%"), "419430");
        assert_eq!(v("CPUQuota", "20%"), "20000 100000");
        assert_eq!(v("CPUQuota", "150%"), "150000 100000");
        assert_eq!(v("CPUWeight", "100"), "100");
        assert_eq!(v("IOWeight", "50"), "default 50");
        assert_eq!(parse_cgroup_limit("MemoryMax", "1G").unwrap().file, "memory.max");
        assert_eq!(controller("pids.max"), "pids");
        assert_eq!(controller("io.weight"), "io");
    }

    #[test]
    fn bad_cgroup_limits_name_the_problem() {
        assert!(parse_cgroup_limit("MemoryMax", "lots").unwrap_err().contains("MemoryMax=lots: expected a size"));
        assert!(parse_cgroup_limit("MemoryMax", "150%").unwrap_err().contains("0% to 100%"));
        assert!(parse_cgroup_limit("CPUQuota", "0%").unwrap_err().contains("above 0"));
        assert!(parse_cgroup_limit("CPUQuota", "20").is_err());
        assert!(parse_cgroup_limit("CPUWeight", "0").unwrap_err().contains("1..10000"));
        assert!(parse_cgroup_limit("TasksMax", "many").is_err());
    }
}
