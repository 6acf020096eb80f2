//! `basalt payload` and `basalt repo` as a release manager runs them, on a
//! really built image: payload → repository → signed → served over HTTP on
//! loopback → checked and unpacked with the update agent's own library code
//! → exactly USR-A's bytes and a UKI for slot B.

use basalt_disk::Gpt;
use basalt_repo::payload::{self, Reference, Sink};
use basalt_repo::Trusted;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

fn basalt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "basalt failed:\n{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn run(args: &[&str]) -> String {
    ok(basalt().args(args).output().unwrap())
}

fn fails(args: &[&str]) -> String {
    let o = basalt().args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds the default spec, with `version` and one extra file in /usr, into `out`.
fn build(dir: &Path, version: &str, extra_file: &str, out: &Path) {
    let spec_text = std::fs::read_to_string(repo_root().join("image/basalt.yaml")).unwrap();
    let image_dir = repo_root().join("image").canonicalize().unwrap();
    let spec_text = spec_text.replace("source: rootfs/", &format!("source: {}/rootfs/", image_dir.display())).replacen("\nversion: ", &format!("\nversion: {version}\nold_version: "), 1).replacen(
        "\nfiles:\n",
        &format!("\nfiles:\n  - {{path: /usr/share/basalt/test-note, content: {extra_file:?}}}\n"),
        1,
    );
    // Drop the original version line (now `old_version:`).
    let spec_text: String = spec_text.lines().filter(|l| !l.starts_with("old_version:")).map(|l| format!("{l}\n")).collect();
    let spec = dir.join(format!("spec-{version}.yaml"));
    std::fs::write(&spec, spec_text).unwrap();
    ok(basalt().args(["build", "--spec"]).arg(&spec).arg("--lock").arg(repo_root().join("image/inputs.lock")).arg("--output").arg(out).env("SOURCE_DATE_EPOCH", "1700000000").output().unwrap());
}

/// The default spec's version.
fn v1_version() -> String {
    let spec = std::fs::read_to_string(repo_root().join("image/basalt.yaml")).unwrap();
    spec.lines().find_map(|l| l.strip_prefix("version: ")).unwrap().trim().to_string()
}

const V2: &str = "99.0.0";

/// Two images of one name: the default spec's version (the default image
/// when `make test` built it) and V2 with one changed file.
fn images() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static IMAGES: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let v1 = match std::env::var_os("BASALT_IMAGE") {
            Some(p) => PathBuf::from(p),
            None => {
                let p = dir.path().join("v1.img");
                build(dir.path(), &v1_version(), "one", &p);
                p
            }
        };
        let v2 = dir.path().join("v2.img");
        build(dir.path(), V2, "two", &v2);
        (dir, v1, v2)
    })
}

/// What `unpack` hands out, collected.
#[derive(Default)]
struct Collect {
    usr: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
}

impl Sink for Collect {
    fn usr(&mut self, d: &[u8]) -> std::io::Result<()> {
        self.usr.extend_from_slice(d);
        Ok(())
    }
    fn uki(&mut self, s: char, d: &[u8]) -> std::io::Result<()> {
        if s == 'a' { &mut self.a } else { &mut self.b }.extend_from_slice(d);
        Ok(())
    }
}

fn unpack(bytes: &[u8], reference: Option<&Reference>) -> (payload::Header, Collect) {
    let mut r = bytes;
    let h = payload::read_header(&mut r).unwrap();
    let mut c = Collect::default();
    payload::unpack(r, &h, reference, &mut c).unwrap();
    (h, c)
}

fn partition_bytes(image: &Path, number: u32, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(image).unwrap();
    let p = Gpt::read(&mut &f).unwrap().partition(number).unwrap().clone();
    let mut v = vec![0u8; len as usize];
    f.read_exact_at(&mut v, p.offset_bytes()).unwrap();
    v
}

fn section<'a>(uki: &'a [u8], name: &str) -> &'a [u8] {
    basalt_uki::sections(uki).unwrap().into_iter().find(|(n, _)| n == name).unwrap().1
}

fn cmdline(uki: &[u8]) -> String {
    String::from_utf8(section(uki, ".cmdline").to_vec()).unwrap()
}

/// `basalt repo serve` on a free loopback port; killed when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(dir: &Path) -> Served {
        let mut child = basalt().args(["repo", "serve"]).arg(dir).args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{line}");
        Served { child, base }
    }

    fn get(&self, path: &str, range: Option<&str>) -> (u16, Vec<u8>) {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build());
        let mut req = agent.get(format!("{}/{path}", self.base));
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        let mut resp = req.call().unwrap();
        let mut body = Vec::new();
        resp.body_mut().as_reader().read_to_end(&mut body).unwrap();
        (resp.status().as_u16(), body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_payload_from_a_built_image_goes_through_a_served_repository_to_usr_a_and_a_slot_b_uki() {
    let (_, v1, _) = images();
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p);
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // The payload, and what the image holds.
    let printed = run(&["payload", &s(v1), "-o", &s(&d("v1.payload"))]);
    assert!(printed.contains("usr slot image") && printed.contains("sha256"), "{printed}");
    let sums = std::fs::read_to_string(d("v1.payload.sha256")).unwrap();
    assert!(sums.ends_with("  v1.payload\n"), "{sums}");
    let bytes = std::fs::read(d("v1.payload")).unwrap();
    let (h, c) = unpack(&bytes, None);
    assert_eq!((h.name.as_str(), h.version.as_str(), h.delta.is_none()), ("basalt", v1_version().as_str(), true));
    assert_eq!(c.usr, partition_bytes(v1, 3, h.usr.bytes), "the usr slot image is USR-A's first bytes");
    assert_eq!(h.usr.hash_offset + 4096, h.usr.bytes - 4096 * basalt_verity::tree_blocks(h.usr.hash_offset / 4096), "squashfs, superblock, tree");
    let line_a = cmdline(&c.a);
    assert_eq!(line_a.split(' ').find(|w| w.starts_with("basalt.usr_hash=")).unwrap(), format!("basalt.usr_hash={}", h.usr.root_hash));
    basalt_verity::verify(&mut std::io::Cursor::new(&c.usr), h.usr.hash_offset, &basalt_verity::parse_hex(&h.usr.root_hash).unwrap().try_into().unwrap()).unwrap();
    let usr_b = Gpt::read(&mut std::fs::File::open(v1).unwrap()).unwrap().partition(4).unwrap().guid;
    let line_b = cmdline(&c.b);
    let expected_b = line_a
        .split(' ')
        .map(|w| match w {
            "basalt.slot=A" => "basalt.slot=B".to_string(),
            w if w.starts_with("basalt.usr=") => format!("basalt.usr=PARTUUID={usr_b}"),
            w => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(line_b, expected_b);
    assert_ne!(line_b, line_a);
    assert_eq!(c.a.len(), c.b.len());
    for name in [".osrel", ".linux", ".initrd"] {
        assert_eq!(section(&c.a, name), section(&c.b, name), "{name} is the same in both UKIs");
    }

    // Keys, root, channel; a root threshold of 2 takes two sign calls.
    for k in ["root1", "root2", "chan"] {
        assert!(run(&["repo", "keygen", &s(&d(k))]).contains(&s(&d(k))));
    }
    let repo = d("repo");
    run(&["repo", "init", &s(&repo), "--root-key", &s(&d("root1.pub")), &s(&d("root2.pub")), "--root-threshold", "2", "--channel-key", &s(&d("chan.pub"))]);
    run(&["repo", "add", &s(&repo), &s(&d("v1.payload")), "--channel", "stable"]);
    let out = run(&["repo", "sign", &s(&repo), "--key", &s(&d("root1")), &s(&d("chan"))]);
    assert!(out.contains("root v1 stays staged") && out.contains("channel stable v1 stays staged"), "{out}");
    let out = run(&["repo", "sign", &s(&repo), "--key", &s(&d("root2"))]);
    assert!(out.contains("published root v1") && out.contains("published channel stable v1"), "{out}");
    let shown = run(&["repo", "show", &s(&repo)]);
    assert!(shown.contains(&format!("channel stable v1: basalt {}", v1_version())) && shown.contains("nothing staged"), "{shown}");
    let err = fails(&["repo", "add", &s(&repo), &s(&d("v1.payload.sha256")), "--channel", "stable"]);
    assert!(err.contains("not a basalt update payload"), "{err}");

    // Served over HTTP, read the way the agent reads it.
    let served = Served::start(&repo);
    let (status, root1) = served.get("roots/1.root.json", None);
    assert_eq!(status, 200);
    assert_eq!(served.get("roots/2.root.json", None).0, 404, "the end of the root walk");
    assert_eq!(served.get("staged/root.json", None).0, 404);
    let trusted = Trusted::bootstrap(&root1).unwrap();
    let (_, channel) = served.get("channels/stable.json", None);
    let ch = trusted.channel(&channel, "stable", SystemTime::now(), 0).unwrap();
    assert_eq!(ch.release.usr_root_hash, h.usr.root_hash);
    // A download cut short and resumed with a Range request.
    let (status, first) = served.get(&ch.release.payload.path, Some("bytes=0-99999"));
    assert_eq!((status, first.len()), (206, 100000));
    let (status, rest) = served.get(&ch.release.payload.path, Some("bytes=100000-"));
    assert_eq!(status, 206);
    let fetched = [first, rest].concat();
    assert_eq!((fetched.len() as u64, basalt_repo::sha256_hex(&fetched)), (ch.release.payload.size, ch.release.payload.sha256.clone()));
    let (_, c2) = unpack(&fetched, None);
    assert!(c2.usr == c.usr && c2.b == c.b);
}

#[test]
fn a_delta_from_the_older_image_rebuilds_the_newer_payload_and_is_much_smaller() {
    let (_, v1, v2) = images();
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let full = dir.path().join("v2.payload");
    run(&["payload", &s(v2), "-o", &s(&full)]);
    let old = v1_version();
    let out = run(&["payload", &s(v2), "--from", &s(v1)]);
    let delta = v2.parent().unwrap().join(format!("basalt-{old}-to-{V2}.delta"));
    assert!(out.contains(&format!("{old} -> {V2}")) && out.contains(&s(&delta)), "{out}");
    let (full_bytes, delta_bytes) = (std::fs::read(&full).unwrap(), std::fs::read(&delta).unwrap());
    assert!(delta_bytes.len() * 4 < full_bytes.len(), "delta {} bytes, full {}", delta_bytes.len(), full_bytes.len());

    // The machine running the old version has its USR-A and its UKI's kernel and initramfs.
    let (hf, cf) = unpack(&full_bytes, None);
    let mut r = &delta_bytes[..];
    let hd = payload::read_header(&mut r).unwrap();
    let from = hd.delta.clone().unwrap();
    assert_eq!(from.version, old);
    let old_usr = partition_bytes(v1, 3, from.usr.bytes);
    let old_parts = unpack(&run_payload_of(v1, dir.path()), None).1;
    let reference = Reference { version: &old, usr: &old_usr, kernel: section(&old_parts.a, ".linux"), initrd: section(&old_parts.a, ".initrd") };
    let (hd, cd) = unpack(&delta_bytes, Some(&reference));
    assert_eq!((hd.usr.clone(), hd.uki.clone()), (hf.usr, hf.uki));
    assert!(cd.usr == cf.usr && cd.a == cf.a && cd.b == cf.b, "the delta makes exactly the full payload's bytes");

    // The repository takes it next to the full payload.
    for k in ["root", "chan"] {
        run(&["repo", "keygen", &s(&dir.path().join(k))]);
    }
    let repo = dir.path().join("repo");
    run(&["repo", "init", &s(&repo), "--root-key", &s(&dir.path().join("root.pub")), "--channel-key", &s(&dir.path().join("chan.pub"))]);
    run(&["repo", "add", &s(&repo), &s(&full), "--channel", "beta", "--delta", &s(&delta), "--rollout", "2030-01-01T00:00:00Z=0.5,2030-01-02T00:00:00Z=1"]);
    run(&["repo", "sign", &s(&repo), "--key", &s(&dir.path().join("root")), "--key", &s(&dir.path().join("chan"))]);
    assert!(repo.join(format!("payloads/basalt-{old}-to-{V2}.delta")).exists());
    let err = fails(&["payload", &s(v1), "--from", &s(v2), "-o", &s(&dir.path().join("x"))]);
    assert!(err.contains("not older than"), "{err}");
    assert!(!dir.path().join("x").exists());
}

/// The full payload of `image`, made in `dir`.
fn run_payload_of(image: &Path, dir: &Path) -> Vec<u8> {
    let out = dir.join("old.payload");
    run(&["payload", image.to_str().unwrap(), "-o", out.to_str().unwrap(), "--level", "1"]);
    std::fs::read(out).unwrap()
}
