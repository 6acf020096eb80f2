//! `basalt publish aws` against a local AWS API server (moto, PyPI
//! `moto[server]`), started here. moto stores what it is sent but checks
//! neither checksums nor most EC2 parameters, so the requests themselves are
//! checked here too, from basalt's request log, against the image's bytes.
//! The snapshot is read back with boto3 (which comes with moto), a client
//! independent of ours.

use basalt_qemu_tests::{basalt_bin, default_image, require_image};
use base64_free::b64;
use sha2_free::sha256;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BLOCK: usize = 512 * 1024;

struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server not found: install it with `pip install 'moto[server]'`");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, url: format!("http://127.0.0.1:{port}") }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(moto: &Moto, args: &[&str], log: &Path, extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(basalt_bin());
    cmd.args(["publish", "aws"]).args(args).args(["--endpoint-url", &moto.url]);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", log.parent().unwrap());
    cmd.envs([("AWS_ACCESS_KEY_ID", "AKIDTEST"), ("AWS_SECRET_ACCESS_KEY", "secret"), ("AWS_REGION", "us-east-1")]);
    cmd.env("BASALT_AWS_REQUEST_LOG", log);
    cmd.envs(extra.iter().copied());
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The image's non-zero 512 KiB blocks: index → sha256.
fn data_blocks(image: &Path) -> BTreeMap<u64, [u8; 32]> {
    let f = std::fs::File::open(image).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; BLOCK];
    let mut index = 0u64;
    while index * (BLOCK as u64) < len {
        let n = (len - index * BLOCK as u64).min(BLOCK as u64) as usize;
        buf.fill(0);
        f.read_exact_at(&mut buf[..n], index * BLOCK as u64).unwrap();
        if buf.iter().any(|&b| b != 0) {
            out.insert(index, sha256(&buf));
        }
        index += 1;
    }
    out
}

fn requests(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn header<'a>(req: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    req["headers"].as_array()?.iter().find(|h| h[0].as_str() == Some(name)).and_then(|h| h[1].as_str())
}

fn form(req: &serde_json::Value) -> BTreeMap<String, String> {
    let body = req["body_text"].as_str().unwrap_or("");
    body.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads every block of the snapshot back through boto3: index → sha256 hex.
fn read_back_with_boto3(moto: &Moto, snapshot: &str) -> BTreeMap<u64, String> {
    let script = r#"
import boto3, hashlib, json, sys
ebs = boto3.client("ebs", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="AKIDTEST", aws_secret_access_key="secret")
out, token = {}, None
while True:
    kw = {"SnapshotId": sys.argv[2], "MaxResults": 10000}
    if token: kw["NextToken"] = token
    page = ebs.list_snapshot_blocks(**kw)
    for b in page["Blocks"]:
        data = ebs.get_snapshot_block(SnapshotId=sys.argv[2], BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])["BlockData"].read()
        out[b["BlockIndex"]] = hashlib.sha256(data).hexdigest()
    token = page.get("NextToken")
    if not token: break
print(json.dumps(out))
"#;
    let o = Command::new("python3").arg("-c").arg(script).arg(&moto.url).arg(snapshot).output().expect("python3 with boto3 (installed with moto[server])");
    assert!(o.status.success(), "boto3 read-back failed: {}", text(&o));
    let m: BTreeMap<String, String> = serde_json::from_slice(&o.stdout).unwrap();
    m.into_iter().map(|(k, v)| (k.parse().unwrap(), v)).collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn publish_uploads_the_nonzero_blocks_resumes_after_a_kill_and_registers_a_uefi_ami() {
    let image = default_image();
    require_image(&image).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("basalt.img");
    assert!(Command::new("cp").arg("--sparse=always").arg(&image).arg(&img).status().unwrap().success());
    let expected = data_blocks(&img);
    let moto = Moto::start();
    let log = dir.path().join("requests.jsonl");
    let args = ["--name", "basalt-test", "--tag", "Name=basalt", "--copy-to-region", "eu-west-1", "--launch-permission", "123456789012", "--parallel", "4"];
    let mut full_args = vec![img.to_str().unwrap()];
    full_args.extend(args);

    // The plan: nothing sent.
    let o = publish(&moto, &[&full_args[..], &["--dry-run"]].concat(), &log, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("{} to upload", expected.len())), "{}", text(&o));
    assert!(requests(&log).is_empty(), "a dry run sent requests");

    // Killed after 20 blocks: the state file records the snapshot and the blocks.
    let o = publish(&moto, &full_args, &log, &[("BASALT_PUBLISH_TEST_KILL_AFTER_BLOCKS", "20")]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "{}", text(&o));
    let state = std::fs::read_to_string(dir.path().join("basalt.img.aws-upload")).unwrap();
    let snapshot = serde_json::from_str::<serde_json::Value>(state.lines().next().unwrap()).unwrap()["snapshot_id"].as_str().unwrap().to_string();
    assert!(state.lines().count() > 20, "{state}");
    let before_resume = requests(&log).len();

    // Resumed: same snapshot, only the missing blocks, then the AMI.
    let o = publish(&moto, &full_args, &log, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains(&format!("resuming snapshot {snapshot}")), "{out}");
    let ami = out.lines().find_map(|l| l.strip_prefix("us-east-1 ")).unwrap_or_else(|| panic!("no AMI in {out}")).to_string();
    let copy = out.lines().find_map(|l| l.strip_prefix("eu-west-1 ")).unwrap_or_else(|| panic!("no copy in {out}")).to_string();
    assert!(ami.starts_with("ami-") && copy.starts_with("ami-") && ami != copy, "{out}");
    assert!(!dir.path().join("basalt.img.aws-upload").exists(), "state file left after success");

    let reqs = requests(&log);
    let is = |r: &serde_json::Value, m: &str, prefix: &str| r["method"] == m && r["path"].as_str().unwrap_or("").starts_with(prefix);
    assert_eq!(reqs.iter().filter(|r| is(r, "POST", "/snapshots") && r["path"] == "/snapshots").count(), 1, "one StartSnapshot in all");
    let start: serde_json::Value = serde_json::from_str(reqs.iter().find(|r| r["path"] == "/snapshots").unwrap()["body_text"].as_str().unwrap()).unwrap();
    assert_eq!(start["VolumeSize"], std::fs::metadata(&img).unwrap().len().div_ceil(1 << 30));

    // Every non-zero block, and only those, with its own sha256.
    let mut put: BTreeMap<u64, usize> = BTreeMap::new();
    for r in reqs.iter().filter(|r| is(r, "PUT", &format!("/snapshots/{snapshot}/blocks/"))) {
        let index: u64 = r["path"].as_str().unwrap().rsplit('/').next().unwrap().parse().unwrap();
        let digest = expected.get(&index).unwrap_or_else(|| panic!("block {index} is all zeros but was uploaded"));
        assert_eq!(header(r, "x-amz-checksum"), Some(b64(digest).as_str()), "block {index}");
        assert_eq!(header(r, "x-amz-checksum-algorithm"), Some("SHA256"));
        assert_eq!(header(r, "x-amz-data-length"), Some("524288"));
        assert_eq!(r["body_len"], BLOCK);
        assert_eq!(r["body_sha256"].as_str(), Some(hex(digest).as_str()), "block {index}: body is not the image's block");
        *put.entry(index).or_default() += 1;
    }
    assert_eq!(put.keys().copied().collect::<Vec<_>>(), expected.keys().copied().collect::<Vec<_>>(), "uploaded blocks differ from the image's data blocks");
    let after_kill: Vec<_> = reqs[before_resume..].iter().filter(|r| is(r, "PUT", "/snapshots/")).collect();
    assert!(after_kill.len() < expected.len(), "the resumed run uploaded everything again");

    // The checksum of the checksums, LINEAR.
    let complete = reqs.iter().find(|r| is(r, "POST", "/snapshots/completion/")).expect("CompleteSnapshot");
    let mut all = Vec::new();
    for d in expected.values() {
        all.extend_from_slice(d);
    }
    assert_eq!(header(complete, "x-amz-checksum"), Some(b64(&sha256(&all)).as_str()));
    assert_eq!(header(complete, "x-amz-checksum-aggregation-method"), Some("LINEAR"));
    assert_eq!(header(complete, "x-amz-changedblockscount"), Some(expected.len().to_string().as_str()));

    // RegisterImage: UEFI, ENA, IMDSv2, x86_64, our snapshot as the root device.
    let register = form(reqs.iter().find(|r| form(r).get("Action").map(String::as_str) == Some("RegisterImage")).expect("RegisterImage"));
    for (k, v) in [
        ("BootMode", "uefi"),
        ("EnaSupport", "true"),
        ("ImdsSupport", "v2.0"),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot.as_str()),
        ("Name", "basalt-test"),
        ("TagSpecification.1.ResourceType", "image"),
        ("TagSpecification.1.Tag.1.Key", "Name"),
        ("TagSpecification.1.Tag.1.Value", "basalt"),
    ] {
        assert_eq!(register.get(k).map(String::as_str), Some(v), "RegisterImage {k}: {register:?}");
    }
    let copy_req = reqs.iter().find(|r| form(r).get("Action").map(String::as_str) == Some("CopyImage")).expect("CopyImage");
    assert_eq!(copy_req["region"], "eu-west-1");
    assert_eq!(form(copy_req).get("SourceImageId"), Some(&ami));
    let grants: Vec<_> = reqs.iter().map(form).filter(|f| f.get("Action").map(String::as_str) == Some("ModifyImageAttribute")).collect();
    assert_eq!(grants.len(), 2, "launch permission on the AMI and its copy");
    assert!(grants.iter().all(|g| g.get("LaunchPermission.Add.1.UserId").map(String::as_str) == Some("123456789012")));

    // What moto stored reads back equal to the image.
    let back = read_back_with_boto3(&moto, &snapshot);
    let want: BTreeMap<u64, String> = expected.iter().map(|(k, v)| (*k, hex(v))).collect();
    assert_eq!(back, want, "the snapshot's blocks differ from the image's");
}

#[test]
fn publish_without_credentials_or_region_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(basalt_bin()).args(["publish", "aws", "/nonexistent.img"]).env_clear().env("HOME", dir.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("no AWS region"), "{}", text(&o));
}

/// Small stand-ins so the test does not share code with what it checks.
mod sha2_free {
    pub fn sha256(data: &[u8]) -> [u8; 32] {
        let mut child = std::process::Command::new("sha256sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        let hex = String::from_utf8(out.stdout).unwrap();
        let mut d = [0u8; 32];
        for (i, b) in d.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        d
    }
}

mod base64_free {
    pub fn b64(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
