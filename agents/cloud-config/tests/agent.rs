//! The agent binary end to end on the host: datasources made of real
//! filesystem images and a real metadata server on 127.0.0.1, applied to a
//! scratch root, run again as on a later boot.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use basalt_cloud_config::supervisor::pending_requests;

const AGENT: &str = env!("CARGO_BIN_EXE_basalt-cloud-config");
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAgentTestKey000000000000000000000000 tester@host";

/// A machine as the agent sees it: a root, a sysfs, a /dev and a kernel command line.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let machine = Machine { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir_all(machine.sys().join("class/block")).unwrap();
        std::fs::create_dir_all(machine.dev()).unwrap();
        std::fs::write(machine.cmdline(), "console=ttyS0 ro\n").unwrap();
        let root = machine.root();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), common::PASSWD).unwrap();
        std::fs::write(root.join("etc/group"), common::GROUP).unwrap();
        std::fs::write(root.join("etc/shadow"), common::SHADOW).unwrap();
        machine
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }
    fn dev(&self) -> PathBuf {
        self.dir.path().join("dev")
    }
    fn cmdline(&self) -> PathBuf {
        self.dir.path().join("cmdline")
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.root().join(path.trim_start_matches('/'))).unwrap_or_else(|_| panic!("{path} missing"))
    }

    /// Runs the agent against this machine; it must exit 0. Returns stderr.
    fn boot_agent(&self, extra: &[&str]) -> String {
        let output = self.agent().args(extra).output().unwrap();
        assert!(output.status.success(), "agent failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stderr).unwrap()
    }

    fn agent(&self) -> Command {
        let mut command = Command::new(AGENT);
        command.arg("--root").arg(self.root()).arg("--sys").arg(self.sys()).arg("--dev").arg(self.dev());
        command.arg("--cmdline").arg(self.cmdline()).args(["--retries", "2"]);
        command
    }

    /// A reboot, as far as the agent can tell: /run is empty again.
    fn reboot(&self) {
        let _ = std::fs::remove_dir_all(self.root().join("run"));
    }

    fn add_device(&self, name: &str, image: &Path, uevent: &str) {
        let sys = self.sys().join("class/block").join(name);
        std::fs::create_dir_all(&sys).unwrap();
        std::fs::write(sys.join("uevent"), format!("DEVNAME={name}\n{uevent}")).unwrap();
        std::fs::copy(image, self.dev().join(name)).unwrap();
    }

    fn fw_cfg(&self, name: &str, bytes: &[u8]) {
        let entry = self.sys().join("firmware/qemu_fw_cfg/by_name").join(name);
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), bytes).unwrap();
    }

    /// A vfat image (mkfs.vfat + mcopy, as a test on the host would make a seed disk).
    fn vfat(&self, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let image = self.dir.path().join(format!("{label}.vfat"));
        run(Command::new("mkfs.vfat").args(["-C", "-n", label]).arg(&image).arg("4096"), "dosfstools");
        for (name, content) in files {
            let local = self.dir.path().join(format!("staged-{name}"));
            std::fs::write(&local, content).unwrap();
            run(Command::new("mcopy").arg("-i").arg(&image).arg(&local).arg(format!("::/{name}")), "mtools");
        }
        image
    }
}

fn run(command: &mut Command, package: &str) {
    let output: Output = command.output().unwrap_or_else(|error| panic!("could not run {:?} ({error}): install the Debian package {package} (tools/host-packages.txt)", command.get_program()));
    assert!(output.status.success(), "{command:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn user_data(machine: &Machine, hostname: &str) -> String {
    format!(
        "#cloud-config\nhostname: {hostname}\nssh_authorized_keys:\n  - {KEY}\n\
write_files:\n  - path: /etc/app.conf\n    content: \"ip=$private_ipv4\\n\"\n\
coreos:\n  units:\n    - name: hello.service\n      command: start\n      enable: true\n      content: |\n        [Service]\n        ExecStart=/bin/true\n        [Install]\n        WantedBy=multi-user.target\n\
runcmd:\n  - echo ran >> {}\n",
        machine.dir.path().join("runcmd.log").display()
    )
}

fn runcmd_count(machine: &Machine) -> usize {
    std::fs::read_to_string(machine.dir.path().join("runcmd.log")).unwrap_or_default().lines().count()
}

#[test]
fn a_nocloud_seed_is_applied_and_runcmd_runs_once_across_reboots() {
    let machine = Machine::new();
    let user_data = user_data(&machine, "seeded");
    let seed = machine.vfat("cidata", &[("user-data", user_data.as_bytes()), ("meta-data", b"instance-id: iid-seed-1\nlocal-ipv4: 10.0.2.15\n")]);
    machine.add_device("vdb", &seed, "");

    let log = machine.boot_agent(&[]);
    assert!(log.contains(&format!("cloud-config: user data from nocloud {}", machine.dev().join("vdb").display())), "{log}");
    assert!(log.contains("cloud-config: applied: set hostname seeded\n"), "{log}");
    assert_eq!(machine.read("/etc/hostname"), "seeded\n");
    assert_eq!(machine.read("/etc/app.conf"), "ip=10.0.2.15\n");
    assert!(machine.read("/home/core/.ssh/authorized_keys").contains(KEY));
    assert_eq!(runcmd_count(&machine), 1);
    assert_eq!(pending_requests(&machine.root()), ["reload", "start hello.service"]);
    let status: serde_json::Value = serde_json::from_str(&machine.read("/run/basalt/cloud-config/status.json")).unwrap();
    assert_eq!(status["instance_id"], "iid-seed-1");

    // The same boot again: nothing to do.
    let log = machine.boot_agent(&[]);
    assert!(log.contains("cloud-config: done: 0 change(s), 0 rejected, 0 warning(s), 0 failure(s)"), "{log}");
    assert_eq!(runcmd_count(&machine), 1);
    assert_eq!(pending_requests(&machine.root()).len(), 2);

    // A reboot: units are started again, runcmd is not.
    machine.reboot();
    machine.boot_agent(&[]);
    assert_eq!(runcmd_count(&machine), 1);
    assert_eq!(pending_requests(&machine.root()), ["start hello.service"]);
}

#[test]
fn fw_cfg_comes_first_and_oem_defaults_apply_under_it() {
    let machine = Machine::new();
    machine.fw_cfg("opt/org.basalt/user-data", user_data(&machine, "from-fw-cfg").as_bytes());
    let seed = machine.vfat("cidata", &[("user-data", b"#cloud-config\nhostname: from-nocloud\n")]);
    machine.add_device("vdb", &seed, "");
    let oem = machine.vfat("OEM", &[("cloud-config.yml", b"#cloud-config\nhostname: from-oem\nwrite_files:\n  - path: /etc/oem-default\n    content: platform\n")]);
    machine.add_device("vda6", &oem, "PARTN=6\nPARTNAME=OEM\n");

    let log = machine.boot_agent(&[]);
    assert!(log.contains("user data from oem "), "{log}");
    assert!(log.contains("fw_cfg opt/org.basalt/user-data"), "{log}");
    assert_eq!(machine.read("/etc/hostname"), "from-fw-cfg\n", "user data wins over the OEM defaults");
    assert_eq!(machine.read("/etc/oem-default"), "platform");
}

#[test]
fn a_url_on_the_kernel_command_line() {
    let machine = Machine::new();
    let body = user_data(&machine, "from-url");
    let server = serve(move |_| (200, body.clone().into_bytes()));
    std::fs::write(machine.cmdline(), format!("ro basalt.config_url={}/node.yml\n", server.url)).unwrap();
    machine.boot_agent(&[]);
    assert_eq!(machine.read("/etc/hostname"), "from-url\n");
    assert_eq!(server.log.lock().unwrap().as_slice(), ["GET /node.yml"]);
}

const TOKEN: &str = "AQAEAAgentTestToken==";

#[test]
fn ec2_imdsv2_gives_user_data_keys_and_addresses() {
    let machine = Machine::new();
    let server = serve(|request| {
        if request.method == "PUT" {
            return match (request.path.as_str(), request.header("X-aws-ec2-metadata-token-ttl-seconds")) {
                ("/latest/api/token", Some(_)) => (200, TOKEN.into()),
                _ => (400, Vec::new()),
            };
        }
        if request.header("X-aws-ec2-metadata-token") != Some(TOKEN) {
            return (401, Vec::new());
        }
        let body: &str = match request.path.as_str() {
            "/latest/meta-data/instance-id" => "i-0feedface",
            "/latest/meta-data/hostname" => "ip-10-0-1-23.eu-west-1.compute.internal",
            "/latest/meta-data/local-ipv4" => "10.0.1.23",
            "/latest/meta-data/public-ipv4" => "198.51.100.23",
            "/latest/meta-data/public-keys/" => "0=deployer",
            "/latest/meta-data/public-keys/0/openssh-key" => "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABec2key deployer\n",
            "/latest/user-data" => "#cloud-config\nwrite_files:\n  - path: /etc/where\n    content: \"$private_ipv4 $public_ipv4\"\n",
            _ => return (404, Vec::new()),
        };
        (200, body.as_bytes().to_vec())
    });
    let log = machine.boot_agent(&["--imds-url", &server.url]);
    assert!(log.contains(&format!("user data from ec2 {} (IMDSv2)", server.url)), "{log}");
    assert_eq!(machine.read("/etc/where"), "10.0.1.23 198.51.100.23");
    assert_eq!(machine.read("/etc/hostname"), "ip-10-0-1-23.eu-west-1.compute.internal\n");
    assert!(machine.read("/home/core/.ssh/authorized_keys").contains("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABec2key deployer\n"));
    let requests = server.log.lock().unwrap();
    assert_eq!(requests[0], "PUT /latest/api/token");
    assert!(requests.contains(&"GET /latest/user-data".to_string()), "{requests:?}");
}

#[test]
fn bad_user_data_is_logged_exactly_and_the_agent_still_succeeds() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"#cloud-config\nhostname: ok-host\nusers: alice\n".to_vec(), "cloud-config: rejected: 3:8: error: users: expected a list, found a scalar\n"),
        (b"#cloud-config\nhostname: ok-host\nfavourite_editor: ed\n".to_vec(), "cloud-config: 3:1: warning: favourite_editor: unknown key \"favourite_editor\", ignored\n"),
        (
            b"#cloud-config\nhostname: [ok-host\n".to_vec(),
            "cloud-config: rejected: 3:1: error: user-data: YAML syntax error: while parsing a flow sequence, expected ',' or ']'; none of this document was applied\n",
        ),
        (vec![b'#'; 10 * 1024 * 1024], "cloud-config: rejected: error: user-data: user data is 10485760 bytes, more than the limit of 1048576 bytes (1 MiB); none of it was applied\n"),
        (
            b"\x7fELF\x02\x01\x01\x00".to_vec(),
            "cloud-config: rejected: 1:1: error: user-data: user data is not text (byte 0x7f); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied\n",
        ),
    ];
    for (bytes, expected) in cases {
        let machine = Machine::new();
        machine.fw_cfg("opt/org.basalt/user-data", &bytes);
        let log = machine.boot_agent(&[]);
        assert!(log.contains(expected), "expected {expected:?} in:\n{log}");
        let status: serde_json::Value = serde_json::from_str(&machine.read("/run/basalt/cloud-config/status.json")).unwrap();
        assert!(!status["problems"].as_array().unwrap().is_empty());
    }
}

#[test]
fn no_datasource_is_not_an_error() {
    let machine = Machine::new();
    let log = machine.boot_agent(&[]);
    assert!(log.contains("cloud-config: no user data found"), "{log}");
    let status: serde_json::Value = serde_json::from_str(&machine.read("/run/basalt/cloud-config/status.json")).unwrap();
    assert_eq!(status["source"], "none");
}

#[test]
fn a_missing_root_is_fatal() {
    let machine = Machine::new();
    let output = Command::new(AGENT).args(["--root", "/nonexistent/root", "--sys"]).arg(machine.sys()).arg("--dev").arg(machine.dev()).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cloud-config: fatal: the root /nonexistent/root is not a directory"));
}

#[test]
fn validate_and_show() {
    let machine = Machine::new();
    let bad = machine.dir.path().join("bad.yml");
    std::fs::write(&bad, "#cloud-config\nhostname: web_1\ncolour: blue\n").unwrap();
    let output = Command::new(AGENT).arg("validate").arg(&bad).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let name = bad.display();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!(
            "{name}:2:11: error: hostname: \"web_1\" is not a host name (letters, digits and '-' in dot-separated labels of at most 63, 253 in all)\n\
             {name}:3:1: warning: colour: unknown key \"colour\", ignored\n{name}: 1 error(s), 1 warning(s)\n"
        )
    );
    let good = machine.dir.path().join("good.yml");
    std::fs::write(&good, "#cloud-config\nhostname: web-1\nwrite_files:\n  - path: /etc/x\n    content: $hostname\n").unwrap();
    let output = Command::new(AGENT).arg("validate").arg(&good).output().unwrap();
    assert!(output.status.success());
    let output = Command::new(AGENT).arg("show").arg(&good).output().unwrap();
    assert!(output.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["config"]["hostname"], "web-1");
    assert_eq!(shown["config"]["write_files"][0]["content"], "", "no metadata: $hostname is empty");
}

// A real HTTP server on 127.0.0.1 for the metadata service and URLs.

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

struct Server {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(handler: impl Fn(&Request) -> (u16, Vec<u8>) + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let server_log = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (method, path) = (words.next().unwrap_or("").to_string(), words.next().unwrap_or("").to_string());
            let mut headers = Vec::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                if let Some((name, value)) = header.trim_end().split_once(':') {
                    headers.push((name.trim().to_string(), value.trim().to_string()));
                }
            }
            let request = Request { method, path, headers };
            server_log.lock().unwrap().push(format!("{} {}", request.method, request.path));
            let (status, body) = handler(&request);
            let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    Server { url, log }
}
