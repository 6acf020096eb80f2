//! The booted system: ssh as `core` with a key, basaltctl, a crashing
//! service restarted with back-off and its logs, reboot and poweroff.

use basalt_qemu_tests::{default_image, Vm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);

fn basalt_bin() -> PathBuf {
    std::env::var_os("BASALT_BIN").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-gnu/release/basalt"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A development image with a fresh key for `core`; returns (image, private key).
fn dev_image(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("id_ed25519");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().expect("ssh-keygen (openssh-client)");
    assert!(st.success());
    let img = dir.join("dev.img");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/basalt.yaml");
    let out = Command::new(basalt_bin()).args(["build", "--spec"]).arg(&spec).arg("--authorized-key").arg(key.with_extension("pub")).arg("-o").arg(&img).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (img, key)
}

/// A shell command that writes `text` to `path`: one printf line, so that
/// it goes through the serial console whole.
fn put(path: &str, text: &str) -> String {
    let mut format = String::new();
    for c in text.chars() {
        match c {
            '\\' => format.push_str("\\\\"),
            '%' => format.push_str("%%"),
            '\'' => format.push_str("\\047"),
            '\n' => format.push_str("\\n"),
            c => format.push(c),
        }
    }
    format!("printf '{format}' > {path}")
}

fn ssh(key: &Path, port: u16, command: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), "core@127.0.0.1", command])
        .output()
        .expect("ssh (openssh-client)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn ssh_until_up(key: &Path, port: u16, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (ok, out) = ssh(key, port, command);
        if ok {
            return out;
        }
        assert!(Instant::now() < deadline, "ssh never succeeded: {out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn ssh_as_core_basaltctl_restarts_backoff_logs_reboot_poweroff() {
    let dir = tempfile::tempdir().unwrap();
    let (img, key) = dev_image(dir.path());
    let port = free_port();
    let mut vm = Vm::boot_with("system", &img, |c| c.ssh_port = port).unwrap();
    vm.wait_ready(BOOT).unwrap();

    // ssh as core with the key; password logins are refused by dropbear -s.
    let status = ssh_until_up(&key, port, "id -un; basaltctl status");
    assert!(status.starts_with("core\n"), "{status}");
    assert!(status.contains("version:    0.1.0") && status.contains("slot:       A"), "{status}");
    let sshd = status.lines().find(|l| l.starts_with("sshd.service")).unwrap_or_else(|| panic!("{status}"));
    assert!(sshd.contains("active"), "{sshd}");
    assert!(status.contains("network.service"), "{status}");

    // A service that keeps crashing is restarted, with growing delays, and its output is kept.
    vm.run_ok(
        "printf '[Unit]\\nDescription=crashes\\n[Service]\\nExecStart=/usr/bin/sh -c \"echo crash-$$; exit 3\"\\nRestart=on-failure\\nRestartSec=1\\nBogusDirective=1\\n' > /etc/systemd/system/crashy.service && basaltctl start crashy",
        CMD,
    )
    .unwrap();
    vm.wait_for("restarting in 4.0 s", Duration::from_secs(60)).unwrap();
    // An unknown directive is warned about by name, never silently dropped.
    assert!(vm.console_text().contains("crashy.service:7: warning: unknown directive BogusDirective="), "no warning for BogusDirective");
    let status = ssh(&key, port, "basaltctl status").1;
    let crashy = status.lines().find(|l| l.starts_with("crashy.service")).unwrap_or_else(|| panic!("{status}"));
    assert!(crashy.contains("auto-restart") && crashy.contains("exited with status 3"), "{crashy}");
    let restarts: u32 = crashy.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(restarts >= 2, "{crashy}");
    let logs = ssh(&key, port, "basaltctl logs crashy").1;
    assert!(logs.matches("crash-").count() >= 3, "{logs}");

    // Restart=on-abnormal restarts after a kill by SIGKILL; a stop sends
    // KillSignal= (SIGINT here), and exit 7 in SuccessExitStatus= is clean.
    vm.run_ok(
        "printf '[Service]\\nExecStart=/usr/bin/sh -c \"trap \\047echo got-INT; exit 7\\047 INT; echo gentle-up; while :; do sleep 1; done\"\\nExecReload=/usr/bin/echo reloaded\\nKillSignal=SIGINT\\nSuccessExitStatus=7\\nRestart=on-abnormal\\n' > /etc/systemd/system/gentle.service && basaltctl start gentle",
        CMD,
    )
    .unwrap();
    let gentle = |want: &dyn Fn(&[&str]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = ssh(&key, port, "basaltctl status").1;
            if let Some(line) = status.lines().find(|l| l.starts_with("gentle.service")) {
                if want(&line.split_whitespace().collect::<Vec<_>>()) {
                    return line.to_string();
                }
            }
            assert!(std::time::Instant::now() < deadline, "gentle.service never got there:\n{status}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let first = gentle(&|f| f.get(1) == Some(&"active"));
    let first_pid = first.split_whitespace().nth(2).unwrap().to_string();
    vm.run_ok(&format!("kill -9 {first_pid}"), CMD).unwrap();
    let second = gentle(&|f| f.get(1) == Some(&"active") && f.get(2) != Some(&first_pid.as_str()));
    // reload runs ExecReload= beside it (same PID); stop sends SIGINT.
    vm.run_ok("basaltctl reload gentle && sleep 2", CMD).unwrap();
    let reloaded = gentle(&|f| f.get(1) == Some(&"active"));
    assert_eq!(reloaded.split_whitespace().nth(2), second.split_whitespace().nth(2), "reload kept the process: {second} / {reloaded}");
    vm.run_ok("basaltctl stop gentle", CMD).unwrap();
    let stopped = gentle(&|f| f.get(1) != Some(&"active") && f.get(1) != Some(&"stopping"));
    assert!(stopped.contains("inactive"), "after {second}: {stopped}");
    let logs = ssh(&key, port, "basaltctl logs gentle").1;
    assert_eq!(logs, "gentle-up\ngentle-up\nreloaded\ngot-INT\n", "{logs}");
    // try-restart leaves a stopped unit stopped; reload of it is refused.
    let (ok, out) = ssh(&key, port, "basaltctl try-restart gentle && sleep 2 && basaltctl status | grep ^gentle; basaltctl reload gentle");
    assert!(!ok && out.contains("inactive") && out.contains("gentle.service is not active, so it cannot be reloaded"), "{out}");

    // BindsTo=, PartOf=, Conflicts=, Requisite= between units, as systemd.
    let units =
        [("base", ""), ("side", "BindsTo=base.service\\nAfter=base.service\\n"), ("part", "PartOf=base.service\\n"), ("rival", "Conflicts=base.service\\n"), ("needy", "Requisite=rival.service\\n")];
    let write: Vec<String> = units.iter().map(|(name, deps)| format!("printf '[Unit]\\n{deps}[Service]\\nExecStart=/usr/bin/sleep 100000\\n' > /etc/systemd/system/{name}.service")).collect();
    vm.run_ok(&format!("{} && basaltctl start side && basaltctl start part", write.join(" && ")), CMD).unwrap();
    let line_of = |name: &str, want: &dyn Fn(&[&str]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let status = ssh(&key, port, "basaltctl status").1;
            // A bare name is a service's.
            let unit = if name.contains('.') { format!("{name} ") } else { format!("{name}.service ") };
            if let Some(line) = status.lines().find(|l| l.starts_with(&unit)) {
                if want(&line.split_whitespace().collect::<Vec<_>>()) {
                    return line.to_string();
                }
            }
            assert!(std::time::Instant::now() < deadline, "{name} never got there:\n{status}");
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let active = |f: &[&str]| f.get(1) == Some(&"active");
    line_of("base", &active); // pulled in by side's BindsTo=
    line_of("side", &active);
    let part_pid = line_of("part", &active).split_whitespace().nth(2).unwrap().to_string();
    vm.run_ok("basaltctl restart base", CMD).unwrap();
    line_of("part", &|f| active(f) && f.get(2) != Some(&part_pid.as_str())); // restarted with it
    line_of("side", &|f| f.get(1) == Some(&"inactive")); // stopped: base went down
    vm.run_ok("basaltctl start rival", CMD).unwrap();
    line_of("rival", &active);
    line_of("base", &|f| f.get(1) == Some(&"inactive")); // the conflict stopped it
    line_of("part", &|f| f.get(1) == Some(&"inactive")); // and its part
    vm.run_ok("basaltctl stop rival && basaltctl start needy", CMD).unwrap();
    let needy = line_of("needy", &|f| f.get(1) == Some(&"failed"));
    assert!(needy.contains("requisite unit rival.service is not active"), "{needy}");

    // Socket activation, Accept=no: the service starts on the first
    // connection and finds the socket at fd 3, with LISTEN_FDS,
    // LISTEN_FDNAMES and a LISTEN_PID that is its own (sd_listen_fds(3)).
    vm.run_ok(
        "printf '%s\\n' 'echo fds=$LISTEN_FDS names=$LISTEN_FDNAMES' '[ \"$LISTEN_PID\" = \"$$\" ] && echo pid-ok' 'readlink /proc/$$/fd/3 | sed s/[0-9]//g' 'exec sleep 100000' > /etc/greet.sh \
         && printf '[Socket]\\nListenStream=127.0.0.1:7001\\n' > /etc/systemd/system/greet.socket \
         && printf '[Service]\\nExecStart=/usr/bin/sh /etc/greet.sh\\n' > /etc/systemd/system/greet.service && basaltctl start greet.socket",
        CMD,
    )
    .unwrap();
    let socket = line_of("greet.socket", &active);
    assert!(socket.contains("listening on 127.0.0.1:7001 (stream)"), "{socket}");
    line_of("greet", &|f| f.get(1) == Some(&"inactive")); // not before a connection
                                                          // The service never accepts: the client is let go after a while.
    let knock = "nc 127.0.0.1 7001 </dev/null >/dev/null 2>&1 & P=$!; sleep 2; kill $P; true";
    vm.run_ok(knock, CMD).unwrap();
    line_of("greet", &active);
    let logs = ssh(&key, port, "sleep 1; basaltctl logs greet").1;
    assert_eq!(logs, "fds=1 names=greet.socket\npid-ok\nsocket:[]\n", "{logs}");
    // Stopping the service leaves the socket listening; the next connection starts it again.
    vm.run_ok(&format!("basaltctl stop greet && sleep 1 && {knock}"), CMD).unwrap();
    line_of("greet", &active);
    line_of("greet.socket", &active);

    // Accept=yes: an instance of the template per connection, the
    // connection its standard input and output.
    vm.run_ok(
        "printf '[Socket]\\nListenStream=7002\\nAccept=yes\\n' > /etc/systemd/system/echo-conn.socket \
         && printf '[Service]\\nExecStart=/usr/bin/sh -c \"read line; echo got:$${line}:%%i\"\\nStandardInput=socket\\n' > /etc/systemd/system/echo-conn@.service \
         && basaltctl start echo-conn.socket",
        CMD,
    )
    .unwrap();
    line_of("echo-conn.socket", &active);
    let first = vm.run_ok("echo hello | nc -w 5 127.0.0.1 7002", CMD).unwrap();
    let second = vm.run_ok("echo again | nc -w 5 127.0.0.1 7002", CMD).unwrap();
    assert!(first.trim().starts_with("got:hello:1-") && first.contains("7002"), "{first}");
    assert!(second.trim().starts_with("got:again:2-"), "{second}");

    // Timers: OnActiveSec= then OnUnitActiveSec= again and again.
    vm.run_ok(
        "printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/echo tick\\n' > /etc/systemd/system/tick.service \
         && printf '[Timer]\\nOnActiveSec=1\\nOnUnitActiveSec=2\\n' > /etc/systemd/system/tick.timer && basaltctl start tick.timer",
        CMD,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let logs = ssh(&key, port, "basaltctl logs tick").1;
        if logs.matches("tick\n").count() >= 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "tick.timer elapsed too rarely: {logs:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    let timer = line_of("tick.timer", &active);
    assert!(timer.contains("waiting"), "{timer}");
    vm.run_ok("basaltctl stop tick.timer", CMD).unwrap();
    line_of("tick.timer", &|f| f.get(1) == Some(&"inactive"));
    // A persistent calendar timer, enabled for boot, that last elapsed long
    // ago: it catches up at the next boot (checked after the reboot below).
    vm.run_ok(
        "printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/echo caught-up\\n' > /etc/systemd/system/nightly.service \
         && printf '[Timer]\\nOnCalendar=daily\\nPersistent=true\\n[Install]\\nWantedBy=timers.target\\n' > /etc/systemd/system/nightly.timer \
         && mkdir -p /etc/systemd/system/timers.target.wants /var/lib/basalt/timers && ln -sf /etc/systemd/system/nightly.timer /etc/systemd/system/timers.target.wants/ \
         && echo 1000000000 > /var/lib/basalt/timers/nightly.timer",
        CMD,
    )
    .unwrap();

    // ExecStopPost= runs after the service ends, told how
    // ($SERVICE_RESULT…); KillMode=control-group (the default) stops
    // what the service left running, KillMode=process only the main one.
    let spawner = "sleep 100000 &\necho $! > /run/$1.child\nexec sleep 100000\n";
    let post = "ExecStopPost=/usr/bin/sh -c 'echo post:$SERVICE_RESULT:$EXIT_CODE:$EXIT_STATUS'\n";
    for cmd in [
        put("/etc/spawner.sh", spawner),
        put("/etc/systemd/system/whole.service", &format!("[Service]\nExecStart=/usr/bin/sh /etc/spawner.sh whole\n{post}")),
        put("/etc/systemd/system/lone.service", "[Service]\nExecStart=/usr/bin/sh /etc/spawner.sh lone\nKillMode=process\n"),
        put("/etc/systemd/system/fails.service", &format!("[Service]\nExecStart=/usr/bin/sh -c 'exit 3'\n{post}")),
    ] {
        vm.run_ok(&cmd, CMD).unwrap();
    }
    vm.run_ok("basaltctl start whole && basaltctl start lone && basaltctl start fails", CMD).unwrap();
    line_of("whole", &active);
    line_of("lone", &active);
    line_of("fails", &|f| f.get(1) == Some(&"failed"));
    vm.run_ok("sleep 1; basaltctl stop whole && basaltctl stop lone", CMD).unwrap();
    line_of("whole", &|f| f.get(1) == Some(&"inactive"));
    line_of("lone", &|f| f.get(1) == Some(&"inactive"));
    let left = vm.run_ok("sleep 1; for u in whole lone; do kill -0 $(cat /run/$u.child) 2>/dev/null && echo $u-left || echo $u-gone; done; kill $(cat /run/lone.child)", CMD).unwrap();
    assert_eq!(left.trim(), "whole-gone\nlone-left", "{left}");
    assert_eq!(ssh(&key, port, "basaltctl logs whole").1, "post:success:killed:TERM\n");
    assert_eq!(ssh(&key, port, "basaltctl logs fails").1, "post:exit-code:exited:3\n");

    // Type=notify: activating until READY=1 (from systemd-notify, with
    // NotifyAccess=all), then active with its STATUS=, then ExecStartPost=.
    // One that never says so fails after TimeoutStartSec=.
    for cmd in [
        put("/etc/ready.sh", "sleep 4\nsystemd-notify --ready --status=warmed-up\nexec sleep 100000\n"),
        put("/etc/systemd/system/ready.service", "[Service]\nType=notify\nNotifyAccess=all\nExecStart=/usr/bin/sh /etc/ready.sh\nExecStartPost=/usr/bin/echo post-ready\n"),
        put("/etc/systemd/system/mute.service", "[Service]\nType=notify\nExecStart=/usr/bin/sleep 100000\nTimeoutStartSec=2\n"),
    ] {
        vm.run_ok(&cmd, CMD).unwrap();
    }
    vm.run_ok("basaltctl start ready && basaltctl start mute", CMD).unwrap();
    line_of("ready", &|f| f.get(1) == Some(&"activating"));
    let ready = line_of("ready", &active);
    assert!(ready.contains("warmed-up"), "{ready}");
    assert_eq!(ssh(&key, port, "sleep 1; basaltctl logs ready").1, "post-ready\n");
    let mute = line_of("mute", &|f| f.get(1) == Some(&"failed"));
    assert!(mute.contains("start timed out after 2 s"), "{mute}");

    // Type=forking: up once ExecStart= exits, the main process from PIDFile=.
    for cmd in [
        put("/etc/daemon.sh", "sleep 100000 &\necho $! > /run/daemon.pid\n"),
        put("/etc/systemd/system/daemon.service", "[Service]\nType=forking\nPIDFile=/run/daemon.pid\nExecStart=/usr/bin/sh /etc/daemon.sh\n"),
    ] {
        vm.run_ok(&cmd, CMD).unwrap();
    }
    vm.run_ok("basaltctl start daemon", CMD).unwrap();
    let daemon = line_of("daemon", &active);
    let pid = vm.run_ok("cat /run/daemon.pid", CMD).unwrap();
    assert_eq!(daemon.split_whitespace().nth(2), Some(pid.trim()), "{daemon}");
    vm.run_ok("basaltctl stop daemon", CMD).unwrap();
    line_of("daemon", &|f| f.get(1) == Some(&"inactive"));

    // Limits: Limit*= on the process (raised before User= drops root), the
    // resource directives in the service's own cgroup.
    vm.run_ok(&put("/etc/systemd/system/limited.service", "[Service]\nExecStart=/usr/bin/sleep 100000\nUser=core\nLimitNOFILE=123:8192\nMemoryMax=64M\nTasksMax=16\nCPUQuota=20%\n"), CMD).unwrap();
    vm.run_ok("basaltctl start limited", CMD).unwrap();
    let limited = line_of("limited", &active);
    let pid = limited.split_whitespace().nth(2).unwrap();
    let seen = vm
        .run_ok(&format!("grep 'Max open files' /proc/{pid}/limits | tr -s ' '; cat /proc/{pid}/cgroup; cd /sys/fs/cgroup/system.slice/limited.service && cat memory.max pids.max cpu.max"), CMD)
        .unwrap();
    let seen: Vec<&str> = seen.lines().map(str::trim).collect();
    assert_eq!(seen, ["Max open files 123 8192 files", "0::/system.slice/limited.service", "67108864", "16", "20000 100000"]);
    vm.run_ok("basaltctl stop limited", CMD).unwrap();

    // systemctl, with systemctl's words and exit codes.
    let out = ssh(&key, port, "sleep 2; systemctl is-active sshd; echo rc=$?; systemctl is-active limited; echo rc=$?; systemctl is-enabled sshd limited; systemctl show -p ActiveState,SubState limited; systemctl status nosuch 2>&1; echo rc=$?").1;
    assert_eq!(out, "active\nrc=0\ninactive\nrc=3\nenabled\nstatic\nActiveState=inactive\nSubState=dead\nUnit nosuch.service could not be found.\nrc=4\n");

    // A service that runs is restarted on request: a new PID.
    let pid_of = |s: &str| s.lines().find(|l| l.starts_with("sshd.service")).and_then(|l| l.split_whitespace().nth(2)).unwrap().to_string();
    let before = pid_of(&ssh(&key, port, "basaltctl status").1);
    vm.run_ok("basaltctl restart sshd", CMD).unwrap();
    let after = pid_of(&ssh_until_up(&key, port, "basaltctl status"));
    assert_ne!(before, after);

    // Files on ROOT survive a reboot; /usr refuses writes.
    vm.run_ok("echo kept > /var/survivor", CMD).unwrap();
    let (ok, out) = ssh(&key, port, "touch /usr/x");
    assert!(!ok && out.contains("Read-only"), "{out}");
    let _ = ssh(&key, port, "basaltctl reboot");
    vm.wait_for("rebooting", CMD).unwrap();
    vm.wait_ready(BOOT).unwrap();
    assert_eq!(vm.run_ok("cat /var/survivor", CMD).unwrap().trim(), "kept");
    let nightly = ssh_until_up(&key, port, "sleep 2; basaltctl logs nightly; cat /var/lib/basalt/timers/nightly.timer");
    let stamp: i64 = nightly.lines().last().unwrap().trim().parse().unwrap_or_else(|_| panic!("{nightly}"));
    assert!(nightly.starts_with("caught-up\n") && stamp > 1_700_000_000, "the missed elapse was not caught up at boot: {nightly}");
    let machine_id = vm.run_ok("cat /etc/machine-id", CMD).unwrap();
    assert_eq!(machine_id.trim().len(), 32);
    ssh_until_up(&key, port, "true");

    // poweroff through basaltctl ends QEMU cleanly.
    let _ = ssh(&key, port, "basaltctl poweroff");
    vm.wait_for("powering off", CMD).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
    let _ = default_image;
}

/// The static-address format cloud-config writes (.network files) is applied
/// by network.service, at once on restart and on every boot.
#[test]
fn static_address_from_a_network_file() {
    let mut vm = Vm::boot("static_network", &default_image()).unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.wait_for("DHCP on eth0", BOOT).unwrap();
    vm.run_ok(
        "printf '[Match]\\nName=eth0\\n[Network]\\nAddress=10.0.2.50/24\\nGateway=10.0.2.2\\nDNS=10.0.2.3\\nDomains=basalt.test\\n[Route]\\nDestination=192.168.77.0/24\\nGateway=10.0.2.1\\n' > /etc/systemd/network/10-static.network && basaltctl restart network",
        CMD,
    )
    .unwrap();
    vm.wait_for("static configuration applied", CMD).unwrap();
    let addr = vm.run_ok("ip -4 addr show eth0", CMD).unwrap();
    assert!(addr.contains("inet 10.0.2.50/24"), "{addr}");
    let routes = vm.run_ok("ip route", CMD).unwrap();
    assert!(routes.contains("default via 10.0.2.2") && routes.contains("192.168.77.0/24 via 10.0.2.1"), "{routes}");
    let resolv = vm.run_ok("cat /etc/resolv.conf", CMD).unwrap();
    assert_eq!(resolv, "search basalt.test\nnameserver 10.0.2.3\n");

    // Every boot: only the static address, no DHCP lease.
    vm.send("reboot").unwrap();
    vm.wait_for("rebooting", CMD).unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.wait_for("static configuration applied", BOOT).unwrap();
    let addr = vm.run_ok("ip -4 addr show eth0", CMD).unwrap();
    assert!(addr.contains("inet 10.0.2.50/24") && !addr.contains("10.0.2.15"), "{addr}");
    // A broken file is reported by name and does not take the network down.
    vm.run_ok("printf '[Network]\\nAddress=10.0.2.300/24\\n' > /etc/systemd/network/05-broken.network && basaltctl restart network", CMD).unwrap();
    vm.wait_for("05-broken.network: ignored: line 2: Address=10.0.2.300/24", CMD).unwrap();
    vm.wait_for("static configuration applied", CMD).unwrap();
    vm.power_cut().unwrap();
}
