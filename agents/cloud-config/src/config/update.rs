//! Update settings: `coreos.update`, `coreos.locksmith` and basalt's `update:`.

use serde::Serialize;

use super::fields::Fields;
use crate::report::Report;
use crate::yaml::Node;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpdateSettings {
    pub server: Option<String>,
    pub channel: Option<String>,
    pub reboot_strategy: Option<String>,
    /// `[Day ]HH:MM`, as locksmith's window_start.
    pub window_start: Option<String>,
    /// A duration such as `1h30m`, as locksmith's window_length.
    pub window_length: Option<String>,
    pub fleetlock_url: Option<String>,
}

impl UpdateSettings {
    pub fn is_empty(&self) -> bool {
        *self == UpdateSettings::default()
    }

    /// Later settings win field by field.
    pub fn merge(&mut self, later: UpdateSettings) {
        let UpdateSettings { server, channel, reboot_strategy, window_start, window_length, fleetlock_url } = later;
        self.server = server.or(self.server.take());
        self.channel = channel.or(self.channel.take());
        self.reboot_strategy = reboot_strategy.or(self.reboot_strategy.take());
        self.window_start = window_start.or(self.window_start.take());
        self.window_length = window_length.or(self.window_length.take());
        self.fleetlock_url = fleetlock_url.or(self.fleetlock_url.take());
    }
}

pub const REBOOT_STRATEGIES: &[&str] = &["reboot", "etcd-lock", "best-effort", "fleetlock", "off"];

/// `coreos.update`: reboot_strategy, server, group (the channel).
pub fn parse_coreos_update(node: &Node, path: &str, report: &mut Report) -> UpdateSettings {
    let Some(fields) = Fields::of(node, path, report) else { return UpdateSettings::default() };
    fields.warn_unknown(&["reboot_strategy", "server", "group"], report);
    UpdateSettings { server: url(&fields, "server", report), channel: channel(&fields, "group", report), reboot_strategy: strategy(&fields, "reboot_strategy", report), ..UpdateSettings::default() }
}

/// `coreos.locksmith`: the reboot window. Its etcd endpoints and group are
/// ignored: basalt's cluster lock lives in the node's own store.
pub fn parse_locksmith(node: &Node, path: &str, report: &mut Report) -> UpdateSettings {
    let Some(fields) = Fields::of(node, path, report) else { return UpdateSettings::default() };
    fields.warn_unknown(&["window_start", "window_length", "endpoint", "group", "etcd_cafile", "etcd_certfile", "etcd_keyfile"], report);
    for key in ["endpoint", "group", "etcd_cafile", "etcd_certfile", "etcd_keyfile"] {
        if let Some(value) = fields.get(key) {
            report.warning(fields.key_path(key), fields.key_position(key).or(Some(value.position)), "not used by basalt: the reboot lock lives in the node's store; ignored");
        }
    }
    let (window_start, window_length) = window(&fields, "window_start", "window_length", report);
    UpdateSettings { window_start, window_length, ..UpdateSettings::default() }
}

/// basalt's own `update:` mapping.
pub fn parse_update(node: &Node, path: &str, report: &mut Report) -> UpdateSettings {
    let Some(fields) = Fields::of(node, path, report) else { return UpdateSettings::default() };
    fields.warn_unknown(&["server", "channel", "reboot_strategy", "window", "fleetlock_url"], report);
    let (window_start, window_length) = match fields.get("window") {
        Some(window_node) => match Fields::of(window_node, &fields.key_path("window"), report) {
            Some(window_fields) => {
                window_fields.warn_unknown(&["start", "length"], report);
                window(&window_fields, "start", "length", report)
            }
            None => (None, None),
        },
        None => (None, None),
    };
    UpdateSettings {
        server: url(&fields, "server", report),
        channel: channel(&fields, "channel", report),
        reboot_strategy: strategy(&fields, "reboot_strategy", report),
        window_start,
        window_length,
        fleetlock_url: url(&fields, "fleetlock_url", report),
    }
}

fn url(fields: &Fields, key: &str, report: &mut Report) -> Option<String> {
    let value = fields.string(key, report)?;
    if !(value.starts_with("http://") || value.starts_with("https://")) || value.contains(char::is_whitespace) {
        report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{value:?} is not an http:// or https:// URL"));
        return None;
    }
    Some(value)
}

fn channel(fields: &Fields, key: &str, report: &mut Report) -> Option<String> {
    let value = fields.string(key, report)?;
    if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{value:?} is not a channel name (letters, digits, '-', '_', '.')"));
        return None;
    }
    Some(value)
}

fn strategy(fields: &Fields, key: &str, report: &mut Report) -> Option<String> {
    let value = fields.string(key, report)?;
    if !REBOOT_STRATEGIES.contains(&value.as_str()) {
        report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{value:?} is not a reboot strategy; expected one of {}", REBOOT_STRATEGIES.join(", ")));
        return None;
    }
    Some(value)
}

fn window(fields: &Fields, start_key: &str, length_key: &str, report: &mut Report) -> (Option<String>, Option<String>) {
    let start = fields.string(start_key, report).filter(|start| {
        let ok = valid_window_start(start);
        if !ok {
            report.error(fields.key_path(start_key), fields.get(start_key).map(|n| n.position), format!("{start:?} is not a window start such as \"Thu 04:00\" or \"04:00\""));
        }
        ok
    });
    let length = fields.string(length_key, report).filter(|length| {
        let ok = parse_duration_seconds(length).is_some_and(|seconds| seconds > 0);
        if !ok {
            report.error(fields.key_path(length_key), fields.get(length_key).map(|n| n.position), format!("{length:?} is not a duration such as \"1h\" or \"90m\""));
        }
        ok
    });
    if start.is_some() != length.is_some() {
        let (key, node) = if start.is_some() { (start_key, fields.get(start_key)) } else { (length_key, fields.get(length_key)) };
        report.error(fields.key_path(key), node.map(|n| n.position), format!("a reboot window needs both {start_key} and {length_key}; window ignored"));
        return (None, None);
    }
    (start, length)
}

fn valid_window_start(text: &str) -> bool {
    const DAYS: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let (day, time) = match text.split_once(' ') {
        Some((day, time)) => (Some(day), time),
        None => (None, text),
    };
    if day.is_some_and(|day| !DAYS.contains(&day.to_ascii_lowercase().as_str())) {
        return false;
    }
    let Some((hours, minutes)) = time.split_once(':') else { return false };
    matches!((hours.parse::<u32>(), minutes.parse::<u32>()), (Ok(h), Ok(m)) if h < 24 && m < 60 && minutes.len() == 2)
}

/// Go-style durations (`1h30m`, `45m`, `90s`), the spelling locksmith used.
pub fn parse_duration_seconds(text: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(unit)?)?;
        number.clear();
    }
    number.is_empty().then_some(total).filter(|_| !text.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_seconds("1h30m"), Some(5400));
        assert_eq!(parse_duration_seconds("45m"), Some(2700));
        assert_eq!(parse_duration_seconds("90"), None);
        assert_eq!(parse_duration_seconds(""), None);
    }

    #[test]
    fn window_starts() {
        assert!(valid_window_start("Thu 04:00"));
        assert!(valid_window_start("04:00"));
        assert!(!valid_window_start("Someday 04:00"));
        assert!(!valid_window_start("25:00"));
    }

    #[test]
    fn later_settings_win() {
        let mut settings = UpdateSettings { channel: Some("stable".into()), server: Some("http://a".into()), ..Default::default() };
        settings.merge(UpdateSettings { channel: Some("beta".into()), ..Default::default() });
        assert_eq!(settings.channel.as_deref(), Some("beta"));
        assert_eq!(settings.server.as_deref(), Some("http://a"));
    }
}
