//! Unit names as systemd.unit(5) defines them: `PREFIX[@INSTANCE].SUFFIX`,
//! templates (`getty@.service`) and their instances (`getty@tty1.service`),
//! the specifiers (`%i`, `%n`, `%H`…) a unit's values may use, and the
//! `$VAR`/`${VAR}` expansion of command lines.

/// The kinds of unit the supervisor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    Target,
    /// Listening sockets that start a service on the first connection.
    Socket,
    /// Elapses on a schedule and starts a unit.
    Timer,
}

/// The suffixes of the unit kinds the supervisor runs; any other is refused.
pub const SUPPORTED_SUFFIXES: [&str; 4] = ["service", "target", "socket", "timer"];

impl Kind {
    pub fn of(name: &str) -> Option<Kind> {
        Some(match name.rsplit_once('.')?.1 {
            "service" => Kind::Service,
            "target" => Kind::Target,
            "socket" => Kind::Socket,
            "timer" => Kind::Timer,
            _ => return None,
        })
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Target => "target",
            Kind::Socket => "socket",
            Kind::Timer => "timer",
        }
    }
}

/// The parts of a unit name: `prefix`, `instance` (None without `@`; Some("") for a template) and `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts<'a> {
    pub prefix: &'a str,
    pub instance: Option<&'a str>,
    pub suffix: &'a str,
}

/// Splits a unit name; None when it is not one (no suffix, empty prefix, bad characters, too long).
pub fn split(name: &str) -> Option<Parts<'_>> {
    if name.is_empty() || name.len() > 255 || !name.chars().all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c)) {
        return None;
    }
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    let (prefix, instance) = match stem.split_once('@') {
        Some((p, i)) if !i.contains('@') => (p, Some(i)),
        Some(_) => return None,
        None => (stem, None),
    };
    (!prefix.is_empty()).then_some(Parts { prefix, instance, suffix })
}

/// Whether `name` is a unit name (a template, an instance or a plain unit).
pub fn valid(name: &str) -> bool {
    split(name).is_some()
}

/// `getty@.service` for `getty@tty1.service`; None for names that are no instance.
pub fn template_of(name: &str) -> Option<String> {
    let p = split(name)?;
    match p.instance {
        Some(i) if !i.is_empty() => Some(format!("{}@.{}", p.prefix, p.suffix)),
        _ => None,
    }
}

/// Whether `name` is a template (`getty@.service`), which cannot run by itself.
pub fn is_template(name: &str) -> bool {
    split(name).is_some_and(|p| p.instance == Some(""))
}

/// `foo@bar.service` for template `foo@.service` and instance `bar`.
pub fn instance_name(template: &str, instance: &str) -> Option<String> {
    let p = split(template)?;
    (p.instance == Some("")).then(|| format!("{}@{instance}.{}", p.prefix, p.suffix))
}

/// systemd's unescaping of a name part: `-` is `/`, `\xNN` is the byte NN.
pub fn unescape(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'-' {
            out.push(b'/');
        } else if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            match std::str::from_utf8(&b[i + 2..i + 4]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    out.push(v);
                    i += 4;
                    continue;
                }
                None => out.push(b[i]),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The machine facts specifiers expand to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_release: String,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine { hostname: "localhost".into(), machine_id: String::new(), boot_id: String::new(), kernel_release: String::new() }
    }
}

impl Machine {
    /// The running machine's facts, from /proc and /etc (empty where unreadable).
    pub fn current() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string()).unwrap_or_default();
        let hostname = read("/proc/sys/kernel/hostname");
        Machine {
            hostname: if hostname.is_empty() { "localhost".into() } else { hostname },
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id").replace('-', ""),
            kernel_release: read("/proc/sys/kernel/osrelease"),
        }
    }
}

/// Expands the specifiers of systemd.unit(5) in one value of unit `name`.
/// An unknown specifier or a lone `%` at the end is an error naming it.
pub fn expand_specifiers(value: &str, name: &str, machine: &Machine) -> Result<String, String> {
    if !value.contains('%') {
        return Ok(value.to_string());
    }
    let parts = split(name);
    let prefix = parts.as_ref().map(|p| p.prefix).unwrap_or(name);
    let instance = parts.as_ref().and_then(|p| p.instance).unwrap_or("");
    let stem = name.rsplit_once('.').map(|(s, _)| s).unwrap_or(name);
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = chars.next() else {
            return Err(format!("{value:?} ends in a lone '%' (write %% for a percent sign)"));
        };
        let s: String = match spec {
            '%' => "%".into(),
            'n' => name.into(),
            'N' => stem.into(),
            'p' => prefix.into(),
            'P' => unescape(prefix),
            'i' => instance.into(),
            'I' => unescape(instance),
            'f' => {
                let i = if instance.is_empty() { prefix } else { instance };
                let u = unescape(i);
                if u.starts_with('/') {
                    u
                } else {
                    format!("/{u}")
                }
            }
            'j' => prefix.rsplit('-').next().unwrap_or("").into(),
            'J' => unescape(prefix.rsplit('-').next().unwrap_or("")),
            'H' => machine.hostname.clone(),
            'l' => machine.hostname.split('.').next().unwrap_or("").into(),
            'm' => machine.machine_id.clone(),
            'b' => machine.boot_id.clone(),
            'v' => machine.kernel_release.clone(),
            't' => "/run".into(),
            'S' => "/var/lib".into(),
            'C' => "/var/cache".into(),
            'L' => "/var/log".into(),
            'T' => "/tmp".into(),
            'V' => "/var/tmp".into(),
            'E' => "/etc".into(),
            'h' => "/root".into(),
            'u' => "root".into(),
            'U' => "0".into(),
            'g' => "root".into(),
            'G' => "0".into(),
            's' => "/bin/sh".into(),
            'o' => "basalt".into(),
            other => return Err(format!("unknown specifier %{other} in {value:?}")),
        };
        out.push_str(&s);
    }
    Ok(out)
}

/// Expands `$VAR` (a whole word: split on whitespace into several words) and
/// `${VAR}` (inside a word, kept as one) in a command line's words, from
/// `lookup`; `$$` is a literal `$`. Unset variables expand to nothing, as
/// in systemd.
pub fn expand_env(argv: &[String], lookup: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (n, word) in argv.iter().enumerate() {
        // The program itself is not expanded (systemd does not either).
        if n == 0 {
            out.push(word.clone());
            continue;
        }
        let is_name = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.starts_with(|c: char| c.is_ascii_digit());
        if let Some(var) = word.strip_prefix('$').filter(|v| is_name(v)) {
            if let Some(value) = lookup(var) {
                out.extend(value.split_whitespace().map(str::to_string));
            }
            continue;
        }
        let mut w = String::new();
        let mut rest = word.as_str();
        while let Some(pos) = rest.find('$') {
            w.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                w.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                match inner.find('}') {
                    Some(end) if is_name(&inner[..end]) => {
                        w.push_str(&lookup(&inner[..end]).unwrap_or_default());
                        rest = &inner[end + 1..];
                    }
                    _ => {
                        w.push('$');
                        rest = after;
                    }
                }
            } else {
                w.push('$');
                rest = after;
            }
        }
        w.push_str(rest);
        out.push(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_templates_and_instances() {
        assert_eq!(split("getty@tty1.service"), Some(Parts { prefix: "getty", instance: Some("tty1"), suffix: "service" }));
        assert_eq!(split("getty@.service").unwrap().instance, Some(""));
        assert_eq!(split("web.service").unwrap().instance, None);
        for bad in ["", ".service", "@x.service", "a@b@c.service", "noext", "a/b.service", "a.Service", "a b.service"] {
            assert!(split(bad).is_none(), "{bad}");
        }
        assert_eq!(template_of("echo@1.service").as_deref(), Some("echo@.service"));
        assert_eq!(template_of("echo@.service"), None);
        assert_eq!(template_of("echo.service"), None);
        assert!(is_template("echo@.service") && !is_template("echo@1.service"));
        assert_eq!(instance_name("echo@.service", "2").as_deref(), Some("echo@2.service"));
        assert_eq!(instance_name("echo.service", "2"), None);
        assert_eq!(Kind::of("a.target"), Some(Kind::Target));
        assert_eq!(Kind::of("a.mount"), None);
    }

    fn machine() -> Machine {
        Machine { hostname: "core-01.example.com".into(), machine_id: "0123abcd".into(), boot_id: "feedbeef".into(), kernel_release: "6.1.0-28-amd64".into() }
    }

    #[test]
    fn specifiers_expand_as_systemd_does() {
        let m = machine();
        let e = |v: &str, n: &str| expand_specifiers(v, n, &m).unwrap();
        assert_eq!(e("%n %N %p %i", "echo@1.service"), "echo@1.service echo@1 echo 1");
        assert_eq!(e("%H %l %m %b %v", "a.service"), "core-01.example.com core-01 0123abcd feedbeef 6.1.0-28-amd64");
        assert_eq!(e("100%% %i", "a.service"), "100% ");
        assert_eq!(e("%I %f", "mount@var-lib-x.service"), "var/lib/x /var/lib/x");
        assert_eq!(e("%P", "foo-bar@x.service"), "foo/bar");
        assert_eq!(e("%j", "foo-bar-baz@x.service"), "baz");
        assert_eq!(e("%I", "s@a\\x2db.service"), "a-b");
        assert_eq!(e("%t/%S/%E", "a.service"), "/run//var/lib//etc");
        assert_eq!(e("no specifiers", "a.service"), "no specifiers");
        assert!(expand_specifiers("%q", "a.service", &m).unwrap_err().contains("unknown specifier %q"));
        assert!(expand_specifiers("50%", "a.service", &m).unwrap_err().contains("lone '%'"));
    }

    #[test]
    fn environment_variables_expand_in_command_words() {
        let env = |k: &str| match k {
            "A" => Some("one two".to_string()),
            "B" => Some("b".to_string()),
            _ => None,
        };
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(expand_env(&v(&["/bin/echo", "$A", "x${B}y", "${A}", "$$HOME", "$MISSING", "z${MISSING}z"]), env), v(&["/bin/echo", "one", "two", "xby", "one two", "$HOME", "zz"]));
        assert_eq!(expand_env(&v(&["/bin/echo", "cost $5", "${", "${A"]), env), v(&["/bin/echo", "cost $5", "${", "${A"]));
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("dev-sda1"), "dev/sda1");
        assert_eq!(unescape("a\\x2db"), "a-b");
        assert_eq!(unescape("a\\xzz"), "a\\xzz");
        assert_eq!(unescape("tail\\x2"), "tail\\x2");
    }
}
