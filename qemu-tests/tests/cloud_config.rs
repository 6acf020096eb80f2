//! cloud-config on the booted system: user data from QEMU fw_cfg, from a
//! NoCloud disk the test makes, and from an EC2-style metadata service the
//! test runs on the host; bad user data of every kind. Four boots in all:
//! fw_cfg (and a reboot), NoCloud, and the metadata service, where the bad
//! inputs are served one after another and cloud-config is run again.

use basalt_qemu_tests::{default_image, Vm};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const CMD: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh ed25519 key pair; returns (private key file, public key line).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key).status().expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string();
    (key, public)
}

fn ssh(key: &Path, port: u16, user: &str, command: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1"), command])
        .output()
        .expect("ssh (openssh-client)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Runs `command` over ssh as `user`, retrying while sshd comes up.
fn ssh_ok(key: &Path, port: u16, user: &str, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ok, out) = ssh(key, port, user, command);
        if ok {
            return out;
        }
        assert!(Instant::now() < deadline, "ssh as {user} never succeeded for {command:?}: {out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The line of `basaltctl status` for `unit`.
fn unit_line(status: &str, unit: &str) -> String {
    status.lines().find(|line| line.starts_with(unit)).unwrap_or_else(|| panic!("{unit} not in:\n{status}")).to_string()
}

/// The 1-based line of `user_data` that starts with `prefix`.
fn line_of(user_data: &str, prefix: &str) -> usize {
    user_data.lines().position(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line")) + 1
}

fn fw_cfg_user_data(public_key: &str) -> String {
    format!(
        r#"#cloud-config
hostname: fwcfg-node
ssh_authorized_keys:
  - {public_key}
users:
  - name: alice
    gecos: Alice from fw_cfg
    groups: [wheel]
    ssh_authorized_keys:
      - {public_key}
write_files:
  - path: /etc/hello/greeting.txt
    content: "hello from fw_cfg\n"
    owner: alice
    permissions: '0640'
  - path: /var/lib/hello/blob
    encoding: b64
    content: YmluYXJ5IGJsb2I=
coreos:
  units:
    - name: hello.service
      enable: true
      command: start
      content: |
        [Unit]
        Description=A unit from user data
        [Service]
        ExecStart=/usr/bin/sh -c 'echo hello-unit-up $GREETING; exec sleep 1000000'
        [Install]
        WantedBy=multi-user.target
      drop_ins:
        - name: greeting.conf
          content: |
            [Service]
            Environment=GREETING=hi-from-a-drop-in
    - name: echo@.service
      content: |
        [Unit]
        Description=Echo instance %i
        [Service]
        Environment=WHO=%p-%i
        ExecStart=/usr/bin/sh -c 'echo echo-up %n on %H as ${{WHO}}; exec sleep 1000000'
        [Install]
        WantedBy=multi-user.target
    - name: echo@1.service
      enable: true
      command: start
    - name: tried.service
      command: try-restart
      content: |
        [Service]
        ExecStart=/usr/bin/sleep 1000000
    - name: reloaded.service
      command: reload-or-restart
      content: |
        [Service]
        ExecStart=/usr/bin/sh -c 'echo reloaded-up; exec sleep 1000000'
        ExecReload=/usr/bin/echo reload-ran
store:
  seed:
    /cloud-config/greeting: hello-store
bootcmd:
  - echo boot >> /var/lib/hello/bootcmd.log
runcmd:
  - echo once >> /var/lib/hello/runcmd.log
  - [sh, -c, "grep -c . /var/lib/hello/runcmd.log > /var/lib/hello/runcmd.count"]
manage_etc_hosts: sometimes
favourite_colour: blue
"#
    )
}

/// fw_cfg user data: keys for core and a new user, host name, files, a unit
/// with a drop-in that runs, a store seed the store takes; a wrong value and
/// an unknown key are rejected by name while the rest applies; runcmd runs
/// once, bootcmd on every boot.
#[test]
fn user_data_from_fw_cfg_applies_once_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = key_pair(dir.path(), "fwcfg");
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, fw_cfg_user_data(&public_key)).unwrap();
    let port = free_port();
    let mut vm = Vm::boot_with("cloud_config_fw_cfg", &default_image(), |c| {
        c.ssh_port = port;
        c.fw_cfg.push(("opt/org.basalt/user-data".into(), user_data.clone()));
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();
    // ssh as core and as the new user, with the key the user data gave.
    let out = ssh_ok(&key, port, "core", "id -un; hostname; basaltctl status");
    assert!(out.starts_with("core\nfwcfg-node\n"), "{out}");
    assert!(unit_line(&out, "basalt-cloud-config.service").contains("exited"), "{out}");
    assert!(unit_line(&out, "hello.service").contains("active"), "{out}");
    // The commands reach init as it runs them: try-restart leaves a unit
    // that is not running alone, reload-or-restart starts one that is not.
    let state = |unit: &str| unit_line(&out, unit).split_whitespace().nth(1).unwrap_or_default().to_string();
    assert_eq!((state("tried.service"), state("reloaded.service")), ("inactive".into(), "active".into()), "{out}");
    let out = ssh_ok(&key, port, "alice", "id; cat /etc/hello/greeting.txt; stat -c '%a %U' /etc/hello/greeting.txt; cat /var/lib/hello/blob");
    assert!(out.starts_with("uid=1000(alice) gid=1000(alice) groups=10(wheel),1000(alice)\n"), "{out}");
    assert!(out.contains("hello from fw_cfg\n640 alice\nbinary blob"), "{out}");
    let out = ssh_ok(&key, port, "core", "cat /var/lib/hello/runcmd.count /var/lib/hello/bootcmd.log; basaltctl logs hello");
    assert_eq!(out, "1\nboot\nhello-unit-up hi-from-a-drop-in\n");
    // A template's instance, enabled by instance name without content of its
    // own, runs with its specifiers and ${VAR} expanded; another instance
    // starts by name; the template itself is no unit.
    let out = ssh_ok(&key, port, "core", "basaltctl start echo@two.service && sleep 2; basaltctl status; basaltctl logs echo@1; basaltctl logs echo@two");
    assert!(unit_line(&out, "echo@1.service").contains("active"), "{out}");
    assert!(unit_line(&out, "echo@two.service").contains("active"), "{out}");
    assert!(!out.contains("echo@.service"), "{out}");
    assert!(out.ends_with("echo-up echo@1.service on fwcfg-node as echo-1\necho-up echo@two.service on fwcfg-node as echo-two\n"), "{out}");
    // The store started after cloud-config and took the seed keys it wrote.
    assert_eq!(ssh_ok(&key, port, "core", "basaltctl store get /cloud-config/greeting"), "hello-store\n");
    // What was rejected, exactly, from the machine itself (the console has
    // the same lines, see docs/cloud-config.md).
    let text = fw_cfg_user_data(&public_key);
    let show = ssh_ok(&key, port, "core", "basaltctl config show");
    let lines: Vec<&str> = show.lines().collect();
    assert!(lines[0].starts_with("user data from fw_cfg opt/org.basalt/user-data ("), "{show}");
    assert_eq!(
        lines[1..3],
        [
            format!("rejected: {}:19: error: manage_etc_hosts: \"sometimes\" is not supported; the only value is \"localhost\"", line_of(&text, "manage_etc_hosts")),
            format!("{}:1: warning: favourite_colour: unknown key \"favourite_colour\", ignored", line_of(&text, "favourite_colour")),
        ],
        "{show}"
    );
    assert!(show.contains("\napplied: set hostname fwcfg-node\n"), "{show}");
    assert!(show.ends_with(", 1 rejected, 1 warning(s), 0 failure(s)\n"), "{show}");
    // The same checks for a file on the machine, before giving it to a machine.
    let out = ssh_ok(&key, port, "core", "printf '#cloud-config\\nusers: alice\\n' > u.yml; basaltctl config validate u.yml; echo exit=$?");
    assert_eq!(out, "u.yml:2:8: error: users: expected a list, found a scalar\nu.yml: 1 error(s), 0 warning(s)\nexit=1\n");

    // After a reboot: the same instance, so runcmd does not run again;
    // bootcmd does, and the unit is started again as an enabled unit.
    let _ = ssh(&key, port, "core", "basaltctl reboot");
    vm.wait_for("rebooting", CMD).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let show = ssh_ok(&key, port, "core", "basaltctl config show");
    assert!(!show.contains("ran runcmd") && show.contains("applied: ran bootcmd[0]"), "{show}");
    let out = ssh_ok(&key, port, "core", "hostname; cat /var/lib/hello/runcmd.log /var/lib/hello/runcmd.count /var/lib/hello/bootcmd.log; basaltctl status");
    assert!(out.starts_with("fwcfg-node\nonce\n1\nboot\nboot\n"), "{out}");
    assert!(unit_line(&out, "hello.service").contains("active"), "{out}");
    assert!(unit_line(&out, "echo@1.service").contains("active"), "{out}");
    vm.power_cut().unwrap();
}

/// A FAT filesystem image labelled `label` holding `files`, made with the
/// tools users make NoCloud seeds with (dosfstools, mtools).
fn fat_image(path: &Path, label: &str, files: &[(&str, &[u8])]) {
    let _ = std::fs::remove_file(path);
    let out = Command::new("mkfs.vfat").args(["-C", "-n", label]).arg(path).arg("8192").output().expect("mkfs.vfat (dosfstools)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, content) in files {
        let local = path.with_extension(name);
        std::fs::write(&local, content).unwrap();
        let out = Command::new("mcopy").arg("-o").arg("-i").arg(path).arg(&local).arg(format!("::/{name}")).output().expect("mcopy (mtools)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A NoCloud seed disk (FAT labelled `cidata`): user data with keys, a user,
/// a file with the metadata's address substituted, a unit, a unit for this
/// boot only, a static address, runcmd; meta-data with the instance id, a
/// host name the user data overrides, an address.
#[test]
fn user_data_from_a_nocloud_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = key_pair(dir.path(), "nocloud");
    let user_data = format!(
        r#"#cloud-config
hostname: nocloud-node
ssh_authorized_keys: ["{public_key}"]
users:
  - name: bob
    ssh_authorized_keys: ["{public_key}"]
write_files:
  - path: /etc/nocloud/where.txt
    content: "seeded on $hostname at $private_ipv4\n"
coreos:
  units:
    - name: seeded.service
      enable: true
      command: start
      content: |
        [Service]
        ExecStart=/usr/bin/sh -c 'echo seeded-unit-up; exec sleep 1000000'
        [Install]
        WantedBy=multi-user.target
    - name: this-boot.service
      runtime: true
      command: start
      content: |
        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/bin/sh -c 'echo only-this-boot'
network:
  interfaces:
    - name: eth0
      addresses: [10.0.2.15/24]
      gateway: 10.0.2.2
      dns: [10.0.2.3]
runcmd:
  - [touch, /var/lib/nocloud-runcmd]
"#
    );
    let meta_data = "instance-id: iid-nocloud-01\nlocal-hostname: seed-name\nlocal-ipv4: 10.0.2.15\n";
    let seed = dir.path().join("seed.img");
    fat_image(&seed, "cidata", &[("user-data", user_data.as_bytes()), ("meta-data", meta_data.as_bytes())]);
    let port = free_port();
    let mut vm = Vm::boot_with("cloud_config_nocloud", &default_image(), |c| {
        c.ssh_port = port;
        c.extra_disks.push(seed.clone());
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();
    let out = ssh_ok(&key, port, "core", "hostname; cat /etc/nocloud/where.txt; ls /var/lib/nocloud-runcmd; basaltctl status; basaltctl config show");
    assert!(out.starts_with("nocloud-node\nseeded on seed-name at 10.0.2.15\n/var/lib/nocloud-runcmd\n"), "{out}");
    assert!(unit_line(&out, "seeded.service").contains("active"), "{out}");
    assert!(out.contains(&format!("user data from nocloud /dev/vdb ({} bytes), instance iid-nocloud-01\n", user_data.len())), "{out}");
    assert!(out.contains("\ndone: ") && out.contains(", 0 rejected, 0 warning(s), 0 failure(s)"), "{out}");
    assert_eq!(ssh_ok(&key, port, "bob", "id -un; basaltctl logs seeded"), "bob\nseeded-unit-up\n");
    // A unit for this boot only, from /run/systemd/system.
    assert!(unit_line(&out, "this-boot.service").contains("exited"), "{out}");
    assert_eq!(ssh_ok(&key, port, "core", "basaltctl logs this-boot"), "only-this-boot\n");
    // The static address, in the network service's format, applied by it.
    let out = ssh_ok(&key, port, "core", "ip -4 addr show eth0; cat /etc/resolv.conf; basaltctl logs network");
    assert!(out.contains("inet 10.0.2.15/24"), "{out}");
    assert!(out.contains("nameserver 10.0.2.3\n"), "{out}");
    assert!(out.contains("eth0: configured by /etc/systemd/network/50-cloud-config-00-eth0.network\nstatic configuration applied\n"), "{out}");
    assert!(!out.contains("DHCP on"), "{out}");
    vm.power_cut().unwrap();
}

/// What the metadata service was asked: (method, path, whether the request
/// carried the session token).
type Requests = Arc<Mutex<Vec<(String, String, bool)>>>;

/// An EC2-style instance metadata service on 127.0.0.1 (the guest reaches
/// it as 10.0.2.2): IMDSv2 only, so a request without the session token
/// from `PUT /latest/api/token` is refused, as on an instance that
/// requires tokens.
struct Imds {
    port: u16,
    user_data: Arc<Mutex<Vec<u8>>>,
    requests: Requests,
}

const IMDS_TOKEN: &str = "AQAEAH-basalt-test-session-token==";

impl Imds {
    fn start(public_key: &str, user_data: Vec<u8>) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let user_data = Arc::new(Mutex::new(user_data));
        let requests: Requests = Arc::default();
        let (data, log, key) = (user_data.clone(), requests.clone(), public_key.to_string());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &key, &data, &log);
            }
        });
        Imds { port, user_data, requests }
    }
}

fn serve(stream: TcpStream, public_key: &str, user_data: &Mutex<Vec<u8>>, requests: &Mutex<Vec<(String, String, bool)>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
    let (mut ttl, mut token, mut length) = (false, false, 0usize);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "x-aws-ec2-metadata-token-ttl-seconds" => ttl = value.trim().parse::<u32>().is_ok(),
            "x-aws-ec2-metadata-token" => token = value.trim() == IMDS_TOKEN,
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    requests.lock().unwrap().push((method.clone(), path.clone(), token));
    let (status, body): (u16, Vec<u8>) = match (method.as_str(), path.as_str()) {
        ("PUT", "/latest/api/token") if ttl => (200, IMDS_TOKEN.into()),
        ("PUT", "/latest/api/token") => (400, Vec::new()),
        (_, _) if !token => (401, Vec::new()),
        ("GET", "/latest/meta-data/instance-id") => (200, b"i-0b5a1700c0ffee123".to_vec()),
        ("GET", "/latest/meta-data/hostname") => (200, b"ip-10-0-2-15.ec2.internal".to_vec()),
        ("GET", "/latest/meta-data/local-ipv4") => (200, b"10.0.2.15".to_vec()),
        ("GET", "/latest/meta-data/public-ipv4") => (200, b"203.0.113.15".to_vec()),
        ("GET", "/latest/meta-data/public-keys/") => (200, b"0=basalt-test".to_vec()),
        ("GET", "/latest/meta-data/public-keys/0/openssh-key") => (200, format!("{public_key}\n").into_bytes()),
        ("GET", "/latest/user-data") => (200, user_data.lock().unwrap().clone()),
        _ => (404, Vec::new()),
    };
    let mut stream = reader.into_inner();
    stream.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())?;
    stream.write_all(&body)
}

/// Binary junk: the start of a PNG file and bytes that are no text.
fn junk() -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    bytes
}

/// Multipart user data: a good cloud-config, a malformed one and binary junk.
fn imds_multipart() -> String {
    use std::fmt::Write as _;
    let mut junk_b64 = String::new();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in junk()[..300].chunks(3) {
        let n = (chunk[0] as u32) << 16 | (chunk[1] as u32) << 8 | chunk[2] as u32;
        for shift in [18, 12, 6, 0] {
            junk_b64.push(ALPHABET[(n >> shift & 63) as usize] as char);
        }
    }
    let mut text = String::new();
    write!(
        text,
        "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\nMIME-Version: 1.0\n\n\
--==BOUNDARY==\nContent-Type: text/cloud-config; charset=\"us-ascii\"\nContent-Disposition: attachment; filename=\"good.yml\"\n\n\
#cloud-config\nhostname: imds-node\nwrite_files:\n  - path: /etc/imds.txt\n    content: \"public $public_ipv4 private $private_ipv4\\n\"\n\
--==BOUNDARY==\nContent-Type: text/cloud-config\nContent-Disposition: attachment; filename=\"broken.yml\"\n\n\
#cloud-config\nusers: [alice\n\
--==BOUNDARY==\nContent-Type: application/octet-stream\nContent-Disposition: attachment; filename=\"junk.bin\"\nContent-Transfer-Encoding: base64\n\n\
{junk_b64}\n--==BOUNDARY==--\n"
    )
    .unwrap();
    text
}

/// Reruns cloud-config (the boot-time unit) and returns `basaltctl config
/// show` once it reports a run whose output contains `expect`.
fn rerun(key: &Path, port: u16, expect: &str) -> String {
    ssh_ok(key, port, "core", "basaltctl restart basalt-cloud-config");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, show) = ssh(key, port, "core", "basaltctl config show");
        if show.contains(expect) && show.contains("\ndone: ") {
            return show;
        }
        assert!(Instant::now() < deadline, "cloud-config never reported {expect:?}: {show}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// An EC2-style metadata service on the host: IMDSv2 token flow, the key
/// pair, user data. The user data at boot has a good part, a malformed one
/// and binary junk; then the service serves malformed YAML, 10 MB and
/// binary junk as the whole user data, and cloud-config runs again each
/// time: the machine stays reachable and says exactly what it rejected.
#[test]
fn ec2_metadata_service_and_bad_user_data() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = key_pair(dir.path(), "imds");
    let imds = Imds::start(&public_key, imds_multipart().into_bytes());
    let url = dir.path().join("imds-url");
    std::fs::write(&url, format!("http://10.0.2.2:{}", imds.port)).unwrap();
    let port = free_port();
    let mut vm = Vm::boot_with("cloud_config_imds", &default_image(), |c| {
        c.ssh_port = port;
        c.fw_cfg.push(("opt/org.basalt/imds-url".into(), url.clone()));
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();

    // The key from the metadata service lets core in; the good part applied.
    let out = ssh_ok(&key, port, "core", "hostname; cat /etc/imds.txt; cat /etc/environment; basaltctl config show");
    assert!(out.starts_with("imds-node\npublic 203.0.113.15 private 10.0.2.15\n"), "{out}");
    assert!(out.contains("COREOS_PUBLIC_IPV4=203.0.113.15\nCOREOS_PRIVATE_IPV4=10.0.2.15\n"), "{out}");
    let show = &out[out.find("user data from").unwrap()..];
    let rejected: Vec<&str> = show.lines().filter(|line| line.starts_with("rejected: ")).collect();
    assert_eq!(
        rejected,
        [
            // Lines of a part that is not encoded count from the top of the whole user data.
            format!(
                "rejected: part 2 (broken.yml): {}:1: error: user-data: YAML syntax error: while parsing a flow sequence, expected ',' or ']'; none of this document was applied",
                line_of(&imds_multipart(), "users: [alice") + 1
            ),
            "rejected: part 3 (junk.bin): 1:1: error: user-data: user data is not text (byte 0x89); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied".to_string(),
        ],
        "{show}"
    );
    assert!(show.starts_with(&format!("user data from ec2 http://10.0.2.2:{} (IMDSv2) (", imds.port)), "{show}");
    assert!(show.contains(", instance i-0b5a1700c0ffee123\n"), "{show}");
    // IMDSv2 from the server's side: a token first, then every read with it.
    {
        let requests = imds.requests.lock().unwrap();
        assert_eq!((requests[0].0.as_str(), requests[0].1.as_str()), ("PUT", "/latest/api/token"), "{requests:?}");
        assert!(requests.iter().skip(1).all(|(method, _, token)| method == "GET" && *token), "{requests:?}");
        assert!(requests.iter().any(|(_, path, _)| path == "/latest/user-data"), "{requests:?}");
    }
    // The agent's log (what the console shows as `[basalt-cloud-config.service] …`)
    // says the same, after the temporary lease it took to reach the service.
    let log = ssh_ok(&key, port, "core", "basaltctl logs basalt-cloud-config");
    let lease = log.find("cloud-config: temporary DHCP lease on eth0 to reach the network sources\n").unwrap_or_else(|| panic!("{log}"));
    let dropped = log.find("cloud-config: dropped the temporary DHCP address of eth0\n").unwrap_or_else(|| panic!("{log}"));
    assert!(lease < dropped, "{log}");
    for line in &rejected {
        assert!(log.contains(&format!("cloud-config: {line}\n")), "{line:?} not in the log:\n{log}");
    }
    // Whole user data that is malformed YAML, 10 MB, binary junk.
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            b"#cloud-config\nhostname: other-name\nusers: [alice\n".to_vec(),
            "rejected: 4:1: error: user-data: YAML syntax error: while parsing a flow sequence, expected ',' or ']'; none of this document was applied".into(),
        ),
        (
            {
                let mut big = b"#cloud-config\n".to_vec();
                big.resize(10 * 1024 * 1024, b'#');
                big
            },
            "rejected: error: user-data: user data is 10485760 bytes, more than the limit of 1048576 bytes (1 MiB); none of it was applied".into(),
        ),
        (junk(), "rejected: 1:1: error: user-data: user data is not text (byte 0x89); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied".into()),
    ];
    for (user_data, expected) in cases {
        let bytes = user_data.len();
        *imds.user_data.lock().unwrap() = user_data;
        let show = rerun(&key, port, &format!("({bytes} bytes)"));
        let rejected: Vec<&str> = show.lines().filter(|line| line.starts_with("rejected: ")).collect();
        assert_eq!(rejected, [expected.as_str()], "{show}");
        assert!(show.contains(", 1 rejected, 0 warning(s), 0 failure(s)\n"), "{show}");
        // Still reachable; nothing of it applied, so the host name is the
        // metadata's again (user data would win over it).
        assert_eq!(ssh_ok(&key, port, "core", "hostname"), "ip-10-0-2-15.ec2.internal\n");
    }
    vm.power_cut().unwrap();
}
