//! `basaltctl store get|set|rm|ls|watch`: the node's key/value store from the
//! command line, over its Unix socket (or `--endpoint`), one verb per call of
//! `basalt_store_client::Client`. Values are printed as they are; errors are
//! the store's etcd errors (`Key not found (100): /app/x [index 7]`).

use basalt_store_client::{Action, Client, ClientError, Endpoint, ErrorCode, Event, NodeView, SetOptions};
use std::io::Write;

pub const USAGE: &str = "  store get KEY       a key's value
  store set KEY VALUE [--ttl SECONDS] [--create | --update]
                      [--prev-value V] [--prev-index N]
  store rm KEY [-r] [--prev-value V] [--prev-index N]
  store ls [DIR] [-r] keys below DIR (directories end in /)
  store watch KEY [-r] [--after-index N] [-f]
                      print the next change (-f: every change) as ACTION KEY [VALUE]
  store options: --endpoint unix:PATH|HOST:PORT (default unix:/run/basalt/store.sock)";

/// One parsed `basaltctl store …` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Get { key: String },
    Set { key: String, value: String, opts: SetFlags },
    Rm { key: String, recursive: bool, prev_value: Option<String>, prev_index: Option<u64> },
    Ls { dir: String, recursive: bool },
    Watch { key: String, recursive: bool, after_index: Option<u64>, forever: bool },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetFlags {
    pub ttl: Option<u64>,
    pub create: bool,
    pub update: bool,
    pub prev_value: Option<String>,
    pub prev_index: Option<u64>,
}

/// Parse the words after `store`: the endpoint and the command.
pub fn parse(args: &[&str]) -> Result<(Endpoint, Command), String> {
    let mut endpoint = Endpoint::default();
    let mut words: Vec<&str> = Vec::new();
    let mut flags: Vec<(&str, Option<&str>)> = Vec::new();
    let mut it = args.iter().copied();
    while let Some(a) = it.next() {
        match a {
            "--" => words.extend(it.by_ref()),
            "--endpoint" | "--ttl" | "--prev-value" | "--prev-index" | "--after-index" => {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                if a == "--endpoint" {
                    endpoint = Endpoint::parse(v);
                } else {
                    flags.push((a, Some(v)));
                }
            }
            "-r" | "--recursive" | "-f" | "--forever" | "--create" | "--update" => flags.push((a, None)),
            _ if a.starts_with('-') && a.len() > 1 => return Err(format!("unknown option {a} (values starting with - go after --)")),
            _ => words.push(a),
        }
    }
    let Some((&verb, rest)) = words.split_first() else { return Err("store: which command? get, set, rm, ls or watch".into()) };
    let allowed: &[&str] = match verb {
        "get" => &[],
        "set" => &["--ttl", "--create", "--update", "--prev-value", "--prev-index"],
        "rm" => &["-r", "--recursive", "--prev-value", "--prev-index"],
        "ls" => &["-r", "--recursive"],
        "watch" => &["-r", "--recursive", "--after-index", "-f", "--forever"],
        other => return Err(format!("store: unknown command {other:?}: get, set, rm, ls or watch")),
    };
    if let Some((f, _)) = flags.iter().find(|(f, _)| !allowed.contains(f)) {
        return Err(format!("store {verb}: {f} does not apply"));
    }
    let has = |names: &[&str]| flags.iter().any(|(f, _)| names.contains(f));
    let value = |name: &str| flags.iter().rev().find(|(f, _)| *f == name).and_then(|(_, v)| *v);
    let number = |name: &str| -> Result<Option<u64>, String> { value(name).map(|v| v.parse::<u64>().map_err(|_| format!("{name} {v:?} is not a whole number"))).transpose() };
    let key = |w: &str| -> Result<String, String> {
        if w.is_empty() {
            return Err("an empty key: keys look like /app/config".into());
        }
        Ok(if w.starts_with('/') { w.to_string() } else { format!("/{w}") })
    };
    let command = match (verb, rest) {
        ("get", [k]) => Command::Get { key: key(k)? },
        ("set", [k, v]) => {
            let opts =
                SetFlags { ttl: number("--ttl")?, create: has(&["--create"]), update: has(&["--update"]), prev_value: value("--prev-value").map(str::to_string), prev_index: number("--prev-index")? };
            if opts.create && (opts.update || opts.prev_value.is_some() || opts.prev_index.is_some()) {
                return Err("store set: --create means the key must not exist; it goes with no other condition".into());
            }
            Command::Set { key: key(k)?, value: v.to_string(), opts }
        }
        ("rm", [k]) => Command::Rm { key: key(k)?, recursive: has(&["-r", "--recursive"]), prev_value: value("--prev-value").map(str::to_string), prev_index: number("--prev-index")? },
        ("ls", []) => Command::Ls { dir: "/".into(), recursive: has(&["-r", "--recursive"]) },
        ("ls", [d]) => Command::Ls { dir: key(d)?, recursive: has(&["-r", "--recursive"]) },
        ("watch", [k]) => Command::Watch { key: key(k)?, recursive: has(&["-r", "--recursive"]), after_index: number("--after-index")?, forever: has(&["-f", "--forever"]) },
        (verb, rest) => {
            let want = match verb {
                "set" => "KEY VALUE",
                "ls" => "at most a DIR",
                _ => "one KEY",
            };
            return Err(format!("store {verb}: takes {want}, got {} word(s) (values starting with - go after --)", rest.len()));
        }
    };
    Ok((endpoint, command))
}

/// `basaltctl store …`: parse, run, print to stdout.
pub fn run(args: &[&str]) -> Result<(), String> {
    let (endpoint, command) = parse(args)?;
    let mut client = Client::new(endpoint);
    let mut out = std::io::stdout().lock();
    execute(&mut client, &command, &mut out)
}

fn describe(client: &Client, e: ClientError) -> String {
    match e {
        ClientError::Io(io) => {
            let at = match client.endpoint() {
                Endpoint::Unix(p) => p.display().to_string(),
                Endpoint::Tcp(a) => a.clone(),
            };
            format!("cannot reach the store at {at}: {io} (is basalt-store.service running?)")
        }
        ClientError::Etcd(e) if e.code == ErrorCode::NotFile => format!("{e} (a directory: use ls, or rm -r)"),
        other => other.to_string(),
    }
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<(), String> {
    out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(|e| format!("writing the output: {e}"))
}

/// Run one command against a store.
pub fn execute(client: &mut Client, command: &Command, out: &mut dyn Write) -> Result<(), String> {
    match command {
        Command::Get { key } => {
            let r = client.get(key, false).map_err(|e| describe(client, e))?;
            if r.event.node.dir {
                return Err(format!("{key} is a directory: basaltctl store ls {key}"));
            }
            write_out(out, &format!("{}\n", r.event.node.value.unwrap_or_default()))
        }
        Command::Set { key, value, opts } => {
            let set = SetOptions {
                ttl: opts.ttl,
                prev_exist: if opts.create {
                    Some(false)
                } else if opts.update {
                    Some(true)
                } else {
                    None
                },
                prev_value: opts.prev_value.clone(),
                prev_index: opts.prev_index,
                ..SetOptions::default()
            };
            client.set(key, value, &set).map(|_| ()).map_err(|e| describe(client, e))
        }
        Command::Rm { key, recursive, prev_value, prev_index } => {
            let r = if prev_value.is_some() || prev_index.is_some() { client.compare_and_delete(key, prev_value.as_deref(), *prev_index) } else { client.delete(key, *recursive) };
            r.map(|_| ()).map_err(|e| describe(client, e))
        }
        Command::Ls { dir, recursive } => {
            let r = client.get(dir, *recursive).map_err(|e| describe(client, e))?;
            if !r.event.node.dir {
                return Err(format!("{dir} is a key, not a directory: basaltctl store get {dir}"));
            }
            let mut text = String::new();
            list(&r.event.node.nodes, &mut text);
            write_out(out, &text)
        }
        Command::Watch { key, recursive, after_index, forever } => {
            client.set_timeout(None);
            let mut next = after_index.unwrap_or(0);
            loop {
                match client.watch(key, *recursive, next) {
                    Ok(r) => {
                        write_out(out, &event_line(&r.event))?;
                        if !forever {
                            return Ok(());
                        }
                        next = r.event.index() + 1;
                    }
                    Err(ClientError::Etcd(e)) if *forever && e.code == ErrorCode::EventIndexCleared => {
                        eprintln!("basaltctl: events before index {} are no longer kept; watching from there", e.index + 1);
                        next = e.index + 1;
                    }
                    Err(e) => return Err(describe(client, e)),
                }
            }
        }
    }
}

/// Every node, depth first, directories with a trailing `/`.
fn list(nodes: &[NodeView], text: &mut String) {
    for n in nodes {
        text.push_str(&n.key);
        if n.dir {
            text.push('/');
        }
        text.push('\n');
        list(&n.nodes, text);
    }
}

/// `set /app/x 5`, `delete /app/x`: the action as etcd names it, the key,
/// and the value when the event has one.
pub fn event_line(e: &Event) -> String {
    let action = match e.action {
        Action::Get => "get",
        Action::Create => "create",
        Action::Set => "set",
        Action::Update => "update",
        Action::Delete => "delete",
        Action::CompareAndSwap => "compareAndSwap",
        Action::CompareAndDelete => "compareAndDelete",
        Action::Expire => "expire",
    };
    let key = if e.node.key.is_empty() { "/" } else { &e.node.key };
    match (&e.node.value, e.node.dir) {
        (Some(v), false) => format!("{action} {key} {v}\n"),
        _ if e.node.dir => format!("{action} {key}/\n"),
        _ => format!("{action} {key}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(args: &[&str]) -> Result<Command, String> {
        parse(args).map(|(_, c)| c)
    }

    #[test]
    fn parses_every_verb() {
        assert_eq!(cmd(&["get", "app/x"]).unwrap(), Command::Get { key: "/app/x".into() });
        assert_eq!(cmd(&["set", "/k", "--ttl", "5", "--", "-v"]).unwrap(), Command::Set { key: "/k".into(), value: "-v".into(), opts: SetFlags { ttl: Some(5), ..SetFlags::default() } });
        assert_eq!(
            cmd(&["set", "--prev-index", "7", "/k", "v", "--update"]).unwrap(),
            Command::Set { key: "/k".into(), value: "v".into(), opts: SetFlags { prev_index: Some(7), update: true, ..SetFlags::default() } }
        );
        assert_eq!(cmd(&["rm", "-r", "/d"]).unwrap(), Command::Rm { key: "/d".into(), recursive: true, prev_value: None, prev_index: None });
        assert_eq!(cmd(&["ls"]).unwrap(), Command::Ls { dir: "/".into(), recursive: false });
        assert_eq!(cmd(&["watch", "/d", "-r", "-f", "--after-index", "3"]).unwrap(), Command::Watch { key: "/d".into(), recursive: true, after_index: Some(3), forever: true });
        let (endpoint, _) = parse(&["--endpoint", "127.0.0.1:2379", "ls"]).unwrap();
        assert_eq!(endpoint, Endpoint::Tcp("127.0.0.1:2379".into()));
        assert_eq!(parse(&["ls"]).unwrap().0, Endpoint::Unix("/run/basalt/store.sock".into()));
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "which command"),
            (&["cat", "/k"], "unknown command \"cat\""),
            (&["get"], "takes one KEY, got 0"),
            (&["set", "/k"], "takes KEY VALUE, got 1"),
            (&["set", "/k", "-1"], "unknown option -1"),
            (&["set", "/k", "v", "--ttl", "soon"], "--ttl \"soon\" is not a whole number"),
            (&["set", "/k", "v", "--ttl"], "--ttl needs a value"),
            (&["set", "/k", "v", "--create", "--prev-value", "a"], "--create means"),
            (&["get", "/k", "-r"], "store get: -r does not apply"),
            (&["ls", "/a", "/b"], "at most a DIR"),
            (&["get", ""], "an empty key"),
        ];
        for (args, want) in cases {
            let e = cmd(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn events_print_as_one_line() {
        let mut e = Event::new(Action::Set, "/app/x", 4, 4);
        e.node.value = Some("5".into());
        assert_eq!(event_line(&e), "set /app/x 5\n");
        assert_eq!(event_line(&Event::new(Action::Expire, "/app/t", 5, 3)), "expire /app/t\n");
        let mut d = Event::new(Action::Create, "/app/d", 6, 6);
        d.node.dir = true;
        assert_eq!(event_line(&d), "create /app/d/\n");
    }
}
