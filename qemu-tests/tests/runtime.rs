//! Containers on the booted image: a registry on the host's loopback
//! (Debian's docker-registry), reached from the guest as 10.0.2.2 through
//! QEMU's user network; containers declared in cloud-config user data (QEMU
//! fw_cfg), with the runtime's settings in write_files, are pulled and run in their own
//! namespaces with their limits in their cgroup files; one killed from
//! outside is restarted; one that allocates past its memory limit is
//! OOM-killed while the machine and the other container carry on; basaltctl
//! runs, execs, lists and removes; and after a reboot what should run runs.
//! On the bridge network: a declared web server publishes 8080, reached from
//! the machine (127.0.0.1 and its own address), from this host through
//! QEMU's port forward, and from another bridge container; the two have
//! different addresses, see only lo and eth0, reach each other and the
//! outside world; a port already published, or held by sshd, is refused.
//! One boot and one reboot.

use basalt_qemu_tests::registry::{busybox, busybox_layer, tar_layer, Auth, Compression, LayerFile, Layout, Registry, RunConfig};
use basalt_qemu_tests::{default_image, Vm};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const CMD: Duration = Duration::from_secs(60);

/// Polls a console command until its output contains `wanted`.
fn wait_output(vm: &mut Vm, command: &str, wanted: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, out) = vm.run(command, CMD).unwrap();
        if out.contains(wanted) {
            return out;
        }
        assert!(Instant::now() < deadline, "`{command}` never showed {wanted:?}; last: {out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The `basaltctl ps` line of a container.
fn ps_line(vm: &mut Vm, name: &str) -> String {
    try_ps_line(vm, name).unwrap_or_else(|| panic!("{name} not in basaltctl ps"))
}

/// None also while the agent is not up yet.
fn try_ps_line(vm: &mut Vm, name: &str) -> Option<String> {
    let (_, out) = vm.run("basaltctl ps", CMD).unwrap();
    out.lines().find(|l| l.split_whitespace().next() == Some(name)).map(str::to_string)
}

/// `GET /` from this host, with QEMU's port forward to the guest in between.
fn http_get(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(CMD)).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// The ADDRESS column of a running container in `basaltctl ps`.
fn address(vm: &mut Vm, name: &str) -> String {
    running_pid(vm, name);
    let line = ps_line(vm, name);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields.len() > 6 && fields[6].starts_with("10.88."), "{name} has no bridge address: {line}");
    fields[6].to_string()
}

/// The first process of a running container, waiting for it to run.
fn running_pid(vm: &mut Vm, name: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = try_ps_line(vm, name).unwrap_or_default();
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 3 && fields[2] == "running" {
            if let Ok(pid) = fields[3].parse() {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "{name} does not run: {line}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn declared_containers_run_isolated_limited_restarted_and_survive_a_reboot() {
    let registry = Registry::start(Auth::Anonymous).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout")).unwrap();
    let run = RunConfig { cmd: vec!["sh".into()], env: vec!["PATH=/bin".into()], ..RunConfig::default() };
    // A second layer: the escape probe (qemu-tests/src/bin/escape-probe.rs), built beside basalt.
    let probe = std::fs::read(basalt_qemu_tests::basalt_bin().parent().unwrap().join("escape-probe")).expect("escape-probe, built with the workspace's binaries");
    let probe_layer = tar_layer(&[LayerFile::File { path: "bin/escape-probe".into(), mode: 0o755, data: probe }]).unwrap();
    let image = layout.image(&[(busybox_layer(&busybox().unwrap()).unwrap(), Compression::Zstd), (probe_layer, Compression::Zstd)], &run, "amd64").unwrap();
    layout.tag_manifest("1", &image);
    layout.finish().unwrap();
    registry.push(&layout.dir, "1", "test/busybox").unwrap();
    let reference = format!("10.0.2.2:{}/test/busybox:1", registry.port);

    // One vCPU: the first cpu.max quota switches on the kernel's CFS
    // bandwidth static key, and under TCG the cross-CPU code patching that
    // needs can stall a second vCPU long enough for the soft-lockup watchdog.
    // Declared in cloud-config (QEMU fw_cfg), with the runtime's settings:
    // the registry is plain HTTP. web writes to its volume and sleeps; hog
    // allocates 100 MiB under a 32 MiB limit.
    let user_data = work.path().join("user-data");
    std::fs::write(
        &user_data,
        format!(
            r#"#cloud-config
write_files:
  - path: /etc/basalt/runtime.toml
    content: |
      stop_timeout_seconds = 5
      [registries."10.0.2.2:{port}"]
      insecure = true
containers:
  - name: web
    image: {reference}
    args: [sh, -c, "echo started $GREETING >> /data/starts; echo web-says-$GREETING; exec sleep 100000"]
    env: {{GREETING: hello}}
    cpu: 500m
    memory: 64M
    network: none
    volumes: ["/var/lib/web:/data"]
  - name: hog
    image: {reference}
    args: [dd, if=/dev/zero, of=/dev/null, bs=100M, count=1]
    memory: 32M
    network: none
    restart: never
  - name: www
    image: {reference}
    args: [sh, -c, "mkdir -p /www && echo hello-from-www > /www/index.html && exec busybox httpd -f -p 80 -h /www"]
    network: bridge
    ports: ["8080:80"]
"#,
            port = registry.port
        ),
    )
    .unwrap();
    // One vCPU: the first cpu.max quota switches on the kernel's CFS
    // bandwidth static key, and under TCG the cross-CPU code patching that
    // needs can stall a second vCPU long enough for the soft-lockup watchdog.
    let forwarded = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut vm = Vm::boot_with("runtime", &default_image(), |c| {
        c.cpus = 1;
        c.port_forwards.push((forwarded, 8080));
        c.fw_cfg.push(("opt/org.basalt/user-data".into(), user_data.clone()));
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.run_ok("basaltctl status | grep basalt-runtime.service", CMD).unwrap();
    // `basalt: ready` can come before cloud-config has run.
    wait_output(&mut vm, "cat /etc/basalt/containers/web.json", "\"source\": \"cloud-config\"", Duration::from_secs(120));

    let web_pid = running_pid(&mut vm, "web");

    // Its own namespaces: every kind differs from the host's (network: none).
    for ns in ["pid", "mnt", "uts", "ipc", "net", "cgroup"] {
        let out = vm.run_ok(&format!("readlink /proc/{web_pid}/ns/{ns}; readlink /proc/1/ns/{ns}"), CMD).unwrap();
        let links: Vec<&str> = out.lines().map(str::trim).filter(|l| l.starts_with(ns)).collect();
        assert!(links.len() == 2 && links[0] != links[1], "{ns} namespace not separate: {out}");
    }
    // Its limits in its cgroup files, as the host sees them and as it sees them.
    assert_eq!(vm.run_ok(&format!("cat /proc/{web_pid}/cgroup"), CMD).unwrap().trim(), "0::/basalt/web");
    assert_eq!(vm.run_ok("cat /sys/fs/cgroup/basalt/web/memory.max", CMD).unwrap().trim(), (64u64 << 20).to_string());
    assert_eq!(vm.run_ok("cat /sys/fs/cgroup/basalt/web/cpu.max", CMD).unwrap().trim(), "50000 100000");
    assert_eq!(vm.run_ok("cat /sys/fs/cgroup/basalt/web/pids.max", CMD).unwrap().trim(), "4096");
    assert_eq!(vm.run_ok("basaltctl exec web cat /sys/fs/cgroup/memory.max", CMD).unwrap().trim(), (64u64 << 20).to_string());
    // Docker's default capabilities, no_new_privs, its own host name and PIDs.
    let status = vm.run_ok(&format!("grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/{web_pid}/status"), CMD).unwrap();
    assert!(status.contains("CapEff:\t00000000a80425fb") && status.contains("CapBnd:\t00000000a80425fb") && status.contains("NoNewPrivs:\t1"), "{status}");
    assert_eq!(vm.run_ok("basaltctl exec web hostname", CMD).unwrap().trim(), "web");
    let inside = vm.run_ok("basaltctl exec web ps -o pid,comm", CMD).unwrap();
    assert!(inside.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", "sleep"]), "{inside}");
    assert!(inside.lines().count() <= 3, "only the container's processes: {inside}");
    // No network but its own loopback.
    let links = vm.run_ok("basaltctl exec web cat /proc/net/dev", CMD).unwrap();
    assert!(links.contains("lo:") && !links.contains("eth0") && !links.contains("ens"), "{links}");
    // Environment, volume, logs.
    assert_eq!(vm.run_ok("basaltctl exec web sh -c 'echo $GREETING'", CMD).unwrap().trim(), "hello");
    wait_output(&mut vm, "cat /var/lib/web/starts", "started hello", Duration::from_secs(30));
    wait_output(&mut vm, "basaltctl logs web", "web-says-hello", Duration::from_secs(30));
    let (code, out) = vm.run("basaltctl exec web sh -c 'exit 7'", CMD).unwrap();
    assert_eq!(code, 7, "exec passes the exit code on: {out}");
    // exec -i passes stdin on, to its end; -t gives a terminal; -it a shell typed into.
    assert_eq!(vm.run_ok("printf 'one\\ntwo\\n' | basaltctl exec -i web wc -l", CMD).unwrap().trim(), "2");
    assert!(vm.run_ok("echo through-stdin | basaltctl exec -i web cat", CMD).unwrap().contains("through-stdin"));
    let out = vm.run_ok("basaltctl exec -t web sh -c 'test -t 0 && test -t 1 && echo on-a-terminal; echo TERM=$TERM'", CMD).unwrap();
    assert!(out.contains("on-a-terminal") && out.contains("TERM=xterm"), "{out}");
    let (code, out) = vm.run("echo x | basaltctl exec -it web cat", CMD).unwrap();
    assert!(code != 0 && out.contains("needs stdin to be a terminal"), "{out}");
    vm.send("basaltctl exec -it web sh -c 'echo tty\"\"-ready; exec sh'; echo tty\"\"-done:$?").unwrap();
    vm.wait_for("tty-ready", CMD).unwrap();
    vm.send("echo $((6*7))-typed; exit 3").unwrap();
    vm.wait_for("42-typed", CMD).unwrap();
    vm.wait_for("tty-done:3", CMD).unwrap();

    // hog reached its memory limit: OOM-killed, not restarted (never); web carries on.
    let line = wait_output(&mut vm, "basaltctl ps | grep ^hog", "exited", Duration::from_secs(120));
    assert!(line.contains("137") && line.contains("OOM"), "{line}");
    assert!(vm.run_ok("basaltctl logs hog", CMD).unwrap().contains("OOM killer"));
    assert_eq!(running_pid(&mut vm, "web"), web_pid, "web is untouched by hog's end");
    assert!(vm.run_ok("test ! -e /sys/fs/cgroup/basalt/hog && echo gone", CMD).unwrap().contains("gone"), "hog's cgroup is removed");

    // Killed from outside: restarted (always), with a new first process,
    // counted once (a pull retried at boot is not a restart).
    let before = ps_line(&mut vm, "web");
    assert_eq!(before.split_whitespace().nth(4), Some("0"), "web has not been restarted yet: {before}");
    vm.run_ok(&format!("kill -9 {web_pid}"), CMD).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_pid = loop {
        let line = ps_line(&mut vm, "web");
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields[2] == "running" && fields[3] != web_pid.to_string() && fields[3] != "-" {
            assert_eq!(fields[4], "1", "one restart: {line}");
            break fields[3].parse::<u32>().unwrap();
        }
        assert!(Instant::now() < deadline, "web was not restarted: {line}");
        std::thread::sleep(Duration::from_secs(1));
    };
    wait_output(&mut vm, "grep -c started /var/lib/web/starts", "2", Duration::from_secs(30));

    // The bridge network. www publishes 8080: reached from the machine on
    // 127.0.0.1 and on its own address, and from here through QEMU.
    let www = address(&mut vm, "www");
    let guest = "10.0.2.15";
    wait_output(&mut vm, "wget -qO- http://127.0.0.1:8080/", "hello-from-www", Duration::from_secs(60));
    assert!(vm.run_ok(&format!("wget -qO- http://{guest}:8080/"), CMD).unwrap().contains("hello-from-www"));
    let answer = http_get(forwarded);
    assert!(answer.starts_with("HTTP/1.") && answer.contains("hello-from-www"), "{answer}");
    // Inside: lo and eth0 only, its own /etc/hosts, the machine's name server.
    let devices = vm.run_ok("basaltctl exec www cat /proc/net/dev", CMD).unwrap();
    let names: Vec<&str> = devices.lines().filter_map(|l| l.split_once(':')).map(|(n, _)| n.trim()).collect();
    assert_eq!(names, ["lo", "eth0"], "{devices}");
    assert!(vm.run_ok("basaltctl exec www cat /etc/hosts", CMD).unwrap().contains(&format!("{www}\twww")));
    assert!(vm.run_ok("basaltctl exec www cat /etc/resolv.conf", CMD).unwrap().contains("nameserver 10.0.2.3"));
    // A second bridge container: its own address; the two reach each other,
    // the published port, and the world outside (the registry on this host).
    vm.run_ok(&format!("basaltctl run --name peer --net bridge {reference} sh -c 'mkdir -p /www && echo hello-from-peer > /www/index.html && exec busybox httpd -f -p 80 -h /www'"), CMD).unwrap();
    let peer = address(&mut vm, "peer");
    assert_ne!(peer, www, "two containers, two addresses");
    wait_output(&mut vm, &format!("basaltctl exec peer busybox wget -qO- http://{www}/"), "hello-from-www", Duration::from_secs(30));
    assert!(vm.run_ok(&format!("basaltctl exec www busybox wget -qO- http://{peer}/"), CMD).unwrap().contains("hello-from-peer"));
    assert!(vm.run_ok(&format!("basaltctl exec peer busybox wget -qO- http://{guest}:8080/"), CMD).unwrap().contains("hello-from-www"));
    let outside = vm.run_ok(&format!("basaltctl exec peer busybox wget -qO- http://10.0.2.2:{}/v2/", registry.port), CMD).unwrap();
    assert_eq!(outside.trim(), "{}", "the registry's answer, through the masquerade");
    // A host port already published, or held by sshd, is refused by name.
    let (code, out) = vm.run(&format!("basaltctl run --name clash --net bridge -p 8080:80 {reference} true"), CMD).unwrap();
    assert!(code != 0 && out.contains("ports: host port 8080/tcp is already published by container www"), "{out}");
    assert!(!vm.run_ok("basaltctl ps", CMD).unwrap().contains("clash"));
    vm.run_ok(&format!("basaltctl run --name taken --net bridge --restart never -p 22:22 {reference} true"), CMD).unwrap();
    let line = wait_output(&mut vm, "basaltctl ps | grep ^taken", "failed", Duration::from_secs(60));
    assert!(line.contains("host port 22/tcp is in use by a program on this machine"), "{line}");
    assert!(vm.run_ok("test ! -e /run/basalt/netns/taken && echo gone", CMD).unwrap().contains("gone"), "nothing left of taken");
    vm.run_ok("basaltctl rm taken", CMD).unwrap();
    // Removed: peer's veth pair and namespace are gone, www's are there.
    let veth = |address: &str| format!("bs{}", address.split('.').map(|o| format!("{:02x}", o.parse::<u8>().unwrap())).collect::<String>());
    vm.run_ok("basaltctl rm -f peer", CMD).unwrap();
    let links = vm.run_ok("ls /sys/class/net /run/basalt/netns", CMD).unwrap();
    assert!(!links.contains(&veth(&peer)) && !links.contains("peer") && links.contains(&veth(&www)) && links.contains("basalt0"), "{links}");

    // basaltctl: run, logs, images, bad input, rm.
    vm.run_ok(&format!("basaltctl run --name cli --restart never --memory 16M {reference} echo hi-from-cli"), CMD).unwrap();
    wait_output(&mut vm, "basaltctl ps | grep ^cli", "exited", Duration::from_secs(60));
    assert!(vm.run_ok("basaltctl logs cli", CMD).unwrap().contains("hi-from-cli"));
    vm.run_ok("basaltctl rm cli", CMD).unwrap();
    assert!(!vm.run_ok("basaltctl ps", CMD).unwrap().contains("cli "));
    let images = vm.run_ok("basaltctl images ls", CMD).unwrap();
    assert!(images.contains(&reference) && images.contains("hog,web,www"), "{images}");
    let (code, out) = vm.run(&format!("basaltctl images pull 10.0.2.2:{}/test/nothing:1", registry.port), CMD).unwrap();
    assert!(code != 0 && out.contains("not found"), "{out}");
    let (code, out) = vm.run(&format!("basaltctl run --name big --restart never --cpu 1m {reference} true && sleep 3 && basaltctl ps | grep ^big"), CMD).unwrap();
    assert!(code == 0 && out.contains("failed") && out.contains("cpu.max"), "a limit the kernel refuses is named: {out}");
    vm.run_ok("basaltctl rm -f big", CMD).unwrap();
    let (code, out) = vm.run(&format!("basaltctl images rm {reference}"), CMD).unwrap();
    assert!(code != 0 && out.contains("used by"), "{out}");

    // Escape probes: a container started the default way (root, docker's
    // capabilities with CAP_MKNOD, the default network) tries to reach the
    // machine's disk, a partition, mount, sysrq and the store, and is refused
    // each time; the same probes with --privileged and --net host show the
    // opt-ins work, so the probes can fail. The OEM partition (vda6) is the
    // one written to; its bytes must not change.
    let disk = vm.run_ok("cat /sys/block/vda/dev", CMD).unwrap().trim().replace(':', " ");
    let oem = vm.run_ok("cat /sys/block/vda/vda6/dev", CMD).unwrap().trim().replace(':', " ");
    let oem_before = vm.run_ok("sha256sum /dev/vda6", CMD).unwrap();
    let probes = |write: bool, packets: bool| {
        // A raw frame to 127.0.0.1 of the machine through the gateway: the
        // store must not answer; a published port (8080, www's) answers the
        // same kind of frame, so the frame itself works.
        let packets = if packets {
            "nc -w 1 10.88.0.1 1 </dev/null 2>/dev/null; ME=$(hostname -i); escape-probe packet $ME 10.88.0.1 127.0.0.1 2379; escape-probe packet $ME 10.88.0.1 127.0.0.1 8080; "
        } else {
            ""
        };
        let write_part = if write { format!("mknod /dev/probe-part b {oem} && echo x | dd of=/dev/probe-part conv=notrunc 2>/dev/null && echo PART-WRITTEN; ") } else { String::new() };
        format!(
            "grep ^Seccomp: /proc/self/status; escape-probe module; escape-probe handle; {packets}mknod /dev/probe-disk b {disk} && head -c 1024 /dev/probe-disk | grep -q \"EFI PART\" && echo DISK-READ; {write_part}\
             mkdir -p /mnt && mount -t tmpfs none /mnt && echo MOUNTED; echo h > /proc/sysrq-trigger && echo SYSRQ; \
             printf \"GET /version HTTP/1.0\\r\\n\\r\\n\" | nc -w 5 $STORE | grep -q HTTP/1 && echo STORE-REACHED; echo probes-done"
        )
    };
    vm.run_ok(&format!("basaltctl run --name probe --restart never -e \"STORE=10.88.0.1 2379\" {reference} sh -c '{}'", probes(true, true)), CMD).unwrap();
    wait_output(&mut vm, "basaltctl ps | grep ^probe", "exited", Duration::from_secs(90));
    let log = vm.run_ok("basaltctl logs probe", CMD).unwrap();
    assert!(log.contains("probes-done") && log.contains("Seccomp:\t2"), "the probe ran under seccomp: {log}");
    assert!(log.contains("module: refused") && log.contains("handle: refused"), "{log}");
    assert!(log.contains("SYNACK from 127.0.0.1:8080"), "a crafted frame reaches a published port: {log}");
    assert!(log.contains("packet: no answer from 127.0.0.1:2379"), "the store on the machine's 127.0.0.1 must not answer a container: {log}");
    for escaped in ["DISK-READ", "PART-WRITTEN", "MOUNTED", "SYSRQ", "STORE-REACHED", "MODULE-ALLOWED", "HANDLE-ALLOWED", "SYNACK from 127.0.0.1:2379"] {
        assert!(!log.contains(escaped), "a default container got {escaped}: {log}");
    }
    assert_eq!(vm.run_ok("sha256sum /dev/vda6", CMD).unwrap(), oem_before, "the host partition is unchanged");
    vm.run_ok("basaltctl rm probe", CMD).unwrap();
    // Granted by name: the same probes (reading only) succeed.
    vm.run_ok(&format!("basaltctl run --name probe --restart never --privileged --net host -e \"STORE=127.0.0.1 2379\" {reference} sh -c '{}'", probes(false, false)), CMD).unwrap();
    wait_output(&mut vm, "basaltctl ps | grep ^probe", "exited", Duration::from_secs(90));
    let log = vm.run_ok("basaltctl logs probe", CMD).unwrap();
    assert!(log.contains("Seccomp:\t0"), "privileged: no filter: {log}");
    for granted in ["DISK-READ", "MOUNTED", "SYSRQ", "STORE-REACHED", "MODULE-ALLOWED", "HANDLE-ALLOWED", "probes-done"] {
        assert!(log.contains(granted), "--privileged --net host should give {granted}: {log}");
    }
    assert!(ps_line(&mut vm, "probe").contains("privileged, net host"), "ps shows what was granted");
    let inspected = vm.run_ok("basaltctl inspect probe", CMD).unwrap();
    assert!(inspected.contains("\"seccomp\": \"unconfined\"") && inspected.contains("CAP_SYS_ADMIN"), "{inspected}");
    vm.run_ok("basaltctl rm probe", CMD).unwrap();

    // With a user namespace the same probes fail even with every capability
    // inside (a tmpfs mount in its own namespace is allowed and harmless):
    // its root is 100000 on the machine.
    vm.run_ok("mkdir -p /var/lib/probe && chmod 777 /var/lib/probe", CMD).unwrap();
    let remapped = format!("id -u; touch /out/made; mount -o remount,rw,bind /proc/sysrq-trigger 2>/dev/null; {}", probes(true, false));
    vm.run_ok(&format!("basaltctl run --name probe --restart never --userns auto --cap-add ALL -v /var/lib/probe:/out -e \"STORE=10.88.0.1 2379\" {reference} sh -c '{remapped}'"), CMD).unwrap();
    wait_output(&mut vm, "basaltctl ps | grep ^probe", "exited", Duration::from_secs(120));
    let log = vm.run_ok("basaltctl logs probe", CMD).unwrap();
    assert!(log.contains("probes-done") && log.lines().any(|l| l.trim() == "0"), "root inside: {log}");
    for escaped in ["DISK-READ", "PART-WRITTEN", "SYSRQ", "STORE-REACHED", "MODULE-ALLOWED", "HANDLE-ALLOWED"] {
        assert!(!log.contains(escaped), "a remapped container with every capability got {escaped}: {log}");
    }
    assert_eq!(vm.run_ok("stat -c %u:%g /var/lib/probe/made", CMD).unwrap().trim(), "100000:100000", "its root is 100000 outside");
    assert_eq!(vm.run_ok("sha256sum /dev/vda6", CMD).unwrap(), oem_before, "the host partition is unchanged");
    assert!(ps_line(&mut vm, "probe").contains("userns auto"), "ps shows the user namespace");
    vm.run_ok("basaltctl rm probe", CMD).unwrap();

    // After a reboot: web runs again with its limits; hog stays down.
    vm.send("basaltctl reboot").unwrap();
    vm.wait_ready(BOOT).unwrap();
    let after = running_pid(&mut vm, "web");
    assert_ne!(after, new_pid);
    assert_eq!(vm.run_ok("cat /sys/fs/cgroup/basalt/web/memory.max", CMD).unwrap().trim(), (64u64 << 20).to_string());
    assert!(ps_line(&mut vm, "hog").contains("stopped") || ps_line(&mut vm, "hog").contains("exited"));
    wait_output(&mut vm, "grep -c started /var/lib/web/starts", "3", Duration::from_secs(30));
    // www keeps its address and is published again.
    assert_eq!(address(&mut vm, "www"), www);
    wait_output(&mut vm, "wget -qO- http://127.0.0.1:8080/", "hello-from-www", Duration::from_secs(60));
}
