//! The store in the booted image: `basalt-store.service` is up on its socket
//! and on 127.0.0.1:2379; seed keys (the file cloud-config writes) go in at
//! start; a template renders a file from them, a `basaltctl store set`
//! re-renders it and runs the reload command, a failing check keeps the old
//! file; bad requests over the API get etcd's errors and change nothing; and
//! every acknowledged write survives a hard reset (the guest loses its page
//! cache, as in a power cut).

use basalt_qemu_tests::{default_image, Vm};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(180);
const CMD: Duration = Duration::from_secs(60);

/// What cloud-config's `store.seed` becomes (docs/cloud-config.md), written
/// here directly so the test does not depend on how user data arrives.
const SEED: &str = r#"{"version":1,"source":"cloud-config","keys":[{"key":"/web/name","value":"seeded"},{"key":"/web/port","value":"8080"},{"key":"/web/owner","value":"ops"}]}"#;

const RESOURCE: &[&str] = &[
    "[template]",
    "src = \"web.conf.tmpl\"",
    "dest = \"/etc/web/web.conf\"",
    "keys = [\"/web\"]",
    "mode = \"0640\"",
    "check_cmd = \"/usr/bin/grep -q port=[0-9] {{.src}}\"",
    "reload_cmd = \"echo reloaded >> /run/web-reloads\"",
];

const TEMPLATE: &[&str] = &["name={{ get(\"/web/name\") }}", "port={{ get(\"/web/port\") }}"];

/// `printf` of `lines` into `path`, for the console shell (none of them holds a `'`).
fn write_file(vm: &mut Vm, path: &str, lines: &[&str]) {
    let args: Vec<String> = lines
        .iter()
        .map(|l| {
            assert!(!l.contains('\''));
            format!("'{l}'")
        })
        .collect();
    vm.run_ok(&format!("printf '%s\\n' {} > {path}", args.join(" ")), CMD).unwrap();
}

/// Runs `check` on the guest until it succeeds (up to two minutes).
fn wait_until(vm: &mut Vm, check: &str) {
    let (status, out) = vm.run(&format!("i=0; until {check}; do i=$((i+1)); [ $i -ge 120 ] && break; sleep 1; done; {check}"), Duration::from_secs(180)).unwrap();
    assert_eq!(status, 0, "`{check}` never held: {out}");
}

/// The end of a request's head as curl would send it, asking the store to
/// close the connection after its answer.
const HEAD_END: &str = " HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n";

/// Sends what the shell command `request` prints to the store's TCP port
/// with busybox nc and returns the whole answer, headers and body. nc's
/// input stays open until the answer is there: at the end of its input nc
/// shuts down its sending side, and the store (like hyper by default) takes
/// that as a client gone and drops an answer still being worked on.
fn raw_http(vm: &mut Vm, request: &str) -> String {
    let command =
        format!("rm -f /tmp/answer; {{ {request}; i=0; while [ ! -s /tmp/answer ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; sleep 0.3; }} | nc 127.0.0.1 2379 > /tmp/answer; cat /tmp/answer");
    vm.run_ok(&command, CMD).unwrap()
}

/// One request without a body.
fn http(vm: &mut Vm, request_line: &str) -> String {
    let request_line = request_line.replace('%', "%%");
    raw_http(vm, &format!("printf '{request_line}{HEAD_END}\\r\\n'"))
}

fn etcd_index(answer: &str) -> u64 {
    let line = answer.lines().find(|l| l.to_ascii_lowercase().starts_with("x-etcd-index:")).unwrap_or_else(|| panic!("no X-Etcd-Index: {answer}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

#[test]
fn seeds_templates_bad_input_and_a_power_cut() {
    let mut vm = Vm::boot("store", &default_image()).unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_until(&mut vm, "basaltctl store ls / >/dev/null");
    let status = vm.run_ok("basaltctl status", CMD).unwrap();
    assert!(status.lines().any(|l| l.starts_with("basalt-store.service") && l.contains("active")), "{status}");
    assert_eq!(vm.run_ok("ls -ld /run/basalt/store.sock /var/lib/basalt/store | cut -c1-10", CMD).unwrap(), "srw-rw----\ndrwx------\n");
    assert_eq!(vm.run_ok("basaltctl store ls -r /", CMD).unwrap(), "", "a fresh store is empty");

    // The seed file and a template, as cloud-config would leave them; the
    // store reads both when it starts.
    vm.run_ok("mkdir -p /etc/basalt/templates.d /etc/web", CMD).unwrap();
    write_file(&mut vm, "/etc/basalt/store-seed.json", &[SEED]);
    write_file(&mut vm, "/etc/basalt/templates.d/web.toml", RESOURCE);
    write_file(&mut vm, "/etc/basalt/templates.d/web.conf.tmpl", TEMPLATE);
    vm.run_ok("basaltctl restart basalt-store", CMD).unwrap();
    wait_until(&mut vm, "[ -f /etc/web/web.conf ]");
    assert_eq!(vm.run_ok("cat /etc/web/web.conf", CMD).unwrap(), "name=seeded\nport=8080\n");
    assert_eq!(vm.run_ok("ls -l /etc/web/web.conf | cut -c1-10", CMD).unwrap(), "-rw-r-----\n");
    assert_eq!(vm.run_ok("cat /run/web-reloads", CMD).unwrap(), "reloaded\n");
    assert_eq!(vm.run_ok("basaltctl store ls -r /web", CMD).unwrap(), "/web/name\n/web/owner\n/web/port\n");

    // A change re-renders the file and runs the reload command.
    vm.run_ok("basaltctl store set /web/port 9090", CMD).unwrap();
    wait_until(&mut vm, "/usr/bin/grep -q port=9090 /etc/web/web.conf");
    wait_until(&mut vm, "[ $(wc -l < /run/web-reloads) = 2 ]");
    // A value the check refuses leaves the file (and the reloads) as they were.
    vm.run_ok("basaltctl store set /web/port none", CMD).unwrap();
    wait_until(&mut vm, "basaltctl logs basalt-store | /usr/bin/grep -q 'check command.*failed'");
    assert_eq!(vm.run_ok("cat /etc/web/web.conf; wc -l < /run/web-reloads", CMD).unwrap(), "name=seeded\nport=9090\n2\n");
    vm.run_ok("basaltctl store set /web/port 7070", CMD).unwrap();
    wait_until(&mut vm, "/usr/bin/grep -q port=7070 /etc/web/web.conf");
    // A seed key removed now stays removed: the seed is applied once.
    vm.run_ok("basaltctl store rm /web/owner", CMD).unwrap();

    // Bad requests get etcd's errors and change nothing.
    let before = etcd_index(&http(&mut vm, "GET /v2/keys/web"));
    let cases = [
        ("PUT /v2/keys/t?value=1&ttl=abc", "400 Bad Request", r#""errorCode":202"#),
        ("PUT /v2/keys/t?value=1&ttl=-5", "400 Bad Request", r#""errorCode":202"#),
        ("PUT /v2/keys/t?value=1&prevIndex=x", "400 Bad Request", r#""errorCode":203"#),
        ("PUT /v2/keys/%zz?value=1", "400 Bad Request", r#""errorCode":210"#),
        ("PUT /v2/keys/?value=1", "400 Bad Request", r#""errorCode":107"#),
        ("PUT /v2/keys/web?value=1", "403 Forbidden", r#""errorCode":102"#),
        ("PUT /v2/keys/web/port/below?value=1", "400 Bad Request", r#""errorCode":104"#),
        ("PUT /v2/keys/web/port?value=1&prevExist=false", "412 Precondition Failed", r#""errorCode":105"#),
        ("DELETE /v2/keys/web", "403 Forbidden", r#""errorCode":102"#),
        ("GET /v2/keys/web/nope", "404 Not Found", r#""errorCode":100"#),
        ("GET /v2/keys/web/port?wait=true&waitIndex=abc", "400 Bad Request", r#""errorCode":203"#),
    ];
    for (request, status, code) in cases {
        let answer = http(&mut vm, request);
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(code), "{request}: {answer}");
    }
    // A key over 4 KiB, and a value over 1 MiB sent as the form body.
    let answer = raw_http(&mut vm, &format!("printf \"PUT /v2/keys/$(head -c 5000 /dev/zero | tr '\\0' k)?value=1{HEAD_END}\\r\\n\""));
    assert!(answer.contains(r#""errorCode":209"#) && answer.contains("more than the limit of 4096"), "{answer}");
    let big = format!("printf 'PUT /v2/keys/big{HEAD_END}Content-Type: application/x-www-form-urlencoded\\r\\nContent-Length: 1100006\\r\\n\\r\\nvalue='; head -c 1100000 /dev/zero | tr '\\0' a");
    let answer = raw_http(&mut vm, &big);
    assert!(answer.contains(r#""errorCode":209"#) && answer.contains("more than the limit of 1048576"), "{answer}");
    let garbage = raw_http(&mut vm, "printf 'NOT HTTP AT ALL\\r\\n\\r\\n'");
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let after = http(&mut vm, "GET /v2/keys/web");
    assert_eq!(etcd_index(&after), before, "a refused request moved the index: {after}");
    assert_eq!(vm.run_ok("basaltctl store ls -r /", CMD).unwrap(), "/web/\n/web/name\n/web/port\n");

    // Writes acknowledged just before a hard reset are all there afterwards.
    vm.run_ok("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do basaltctl store set /bulk/$i v$i || exit 1; done", CMD).unwrap();
    vm.reset().unwrap();
    vm.wait_ready(BOOT).unwrap();
    wait_until(&mut vm, "basaltctl store ls / >/dev/null");
    let bulk = vm.run_ok("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do basaltctl store get /bulk/$i; done", CMD).unwrap();
    assert_eq!(bulk, (1..=20).map(|i| format!("v{i}\n")).collect::<String>());
    // The seed is not applied again: the changed key keeps its value, the
    // removed one stays removed; the template's file is as it was left.
    assert_eq!(vm.run_ok("basaltctl store get /web/port; basaltctl store get /web/name", CMD).unwrap(), "7070\nseeded\n");
    let (status, out) = vm.run("basaltctl store get /web/owner", CMD).unwrap();
    assert!(status == 1 && out.contains("Key not found (100): /web/owner"), "{out}");
    assert_eq!(vm.run_ok("cat /etc/web/web.conf", CMD).unwrap(), "name=seeded\nport=7070\n");
    // (Counted on the console: the log file's last lines need not survive a reset.)
    assert_eq!(vm.console_text().matches("basalt-store: seeded 3 key(s)").count(), 1, "the seed was applied more than once");
    vm.power_cut().unwrap();
}
