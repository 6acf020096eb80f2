//! Release versions: dot-separated numbers with an optional `-pre` suffix
//! (`0.2.0`, `1.10.3-rc.1`), ordered numerically; a pre-release sorts before
//! its release. That is what the spec's `version:` and IMAGE_VERSION hold.

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    numbers: Vec<u64>,
    pre: Option<String>,
    text: String,
}

impl Version {
    pub fn parse(s: &str) -> Result<Version, String> {
        let bad = || format!("version {s:?} is not numbers separated by dots with an optional -suffix (e.g. 1.2.0 or 1.2.0-rc.1)");
        let (main, pre) = match s.split_once('-') {
            Some((m, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') => (m, Some(p.to_string())),
            Some(_) => return Err(bad()),
            None => (s, None),
        };
        let numbers =
            main.split('.').map(|n| if n.is_empty() || n.len() > 18 || !n.bytes().all(|b| b.is_ascii_digit()) { Err(bad()) } else { Ok(n.parse().unwrap()) }).collect::<Result<Vec<u64>, _>>()?;
        Ok(Version { numbers, pre, text: s.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let len = self.numbers.len().max(other.numbers.len());
        for i in 0..len {
            let (a, b) = (self.numbers.get(i).copied().unwrap_or(0), other.numbers.get(i).copied().unwrap_or(0));
            if a != b {
                return a.cmp(&b);
            }
        }
        match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.cmp(b),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn orders_numerically_with_pre_releases_first() {
        assert!(v("0.10.0") > v("0.9.9"));
        assert!(v("1.0.0") > v("1.0.0-rc.2"));
        assert!(v("1.0.0-rc.2") > v("1.0.0-rc.1"));
        assert_eq!(v("1.0").cmp(&v("1.0.0")), Ordering::Equal);
        for bad in ["", "1..2", "v1.0", "1.0-", "1.0-a b", "1.x"] {
            assert!(Version::parse(bad).unwrap_err().contains("is not numbers"), "{bad}");
        }
    }
}
