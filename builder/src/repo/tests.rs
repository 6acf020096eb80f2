//! The repository commands against the client's rules: whatever `sign`
//! publishes must pass basalt_repo::trust, and every refused command leaves
//! the directory byte for byte as it was.

use super::*;
use basalt_repo::payload::{Contents, Reference};
use std::collections::BTreeMap;

/// A usr slot image: one 4 KiB data block that starts with `tag`, then
/// its verity superblock.
fn slot(tag: &str, seed: u64) -> Vec<u8> {
    let mut usr = std::io::Cursor::new([tag.as_bytes(), &noise(4096 - tag.len(), seed)].concat());
    basalt_verity::format(&mut usr, 4096, b"salt", [0; 16]).unwrap();
    usr.into_inner()
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().unwrap() }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn repo(&self) -> Repo {
        Repo::new(&self.path("repo"))
    }
    fn key(&self, name: &str) -> (PathBuf, PathBuf) {
        let f = self.path(name);
        if !f.exists() {
            keygen(&f).unwrap();
        }
        (f.clone(), with_suffix(&f, ".pub"))
    }
    /// A small but real payload (and optionally a delta from `from`).
    fn payload(&self, version: &str, from: Option<&str>) -> PathBuf {
        let usr = slot(version, 7);
        let uki = noise(1 << 14, 9);
        let c = Contents { name: "basalt", version, usr: &usr, hash_offset: 4096, root_hash: &"ab".repeat(32), uki_a: &uki, uki_b: &uki };
        let (file, reference_usr);
        let reference = match from {
            Some(old) => {
                reference_usr = slot(old, 7);
                file = self.path(&format!("basalt-{old}-to-{version}.delta"));
                Some(Reference { version: old, usr: &reference_usr, kernel: &uki[..100], initrd: &uki[100..200] })
            }
            None => {
                file = self.path(&format!("basalt-{version}.payload"));
                None
            }
        };
        let mut out = Vec::new();
        payload::write(&mut out, &c, reference.as_ref(), 3).unwrap();
        std::fs::write(&file, out).unwrap();
        file
    }
    fn root_args(&self, root: &[&str], channel: &[&str], rt: Option<usize>, ct: Option<usize>) -> RootArgs {
        RootArgs {
            root_keys: root.iter().map(|k| self.key(k).1).collect(),
            channel_keys: channel.iter().map(|k| self.key(k).1).collect(),
            root_threshold: rt,
            channel_threshold: ct,
            expires: "365d".into(),
        }
    }
    fn add(&self, payload: &Path, channel: &str) -> Result<()> {
        add(&self.repo(), &AddOptions { payload: payload.into(), channel: channel.into(), deltas: vec![], expires: "30d".into(), rollout: None }, SystemTime::now())
    }
    fn sign(&self, keys: &[&str]) -> Result<SignOutcome> {
        sign(&self.repo(), &keys.iter().map(|k| self.key(k).0).collect::<Vec<_>>(), SystemTime::now())
    }
    /// Every file of the repository and its bytes.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.insert(e.path(), std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.path("repo"), &mut out);
        out
    }
    /// The client's view: walk the roots from v1 and read a channel.
    fn client(&self, channel: &str) -> Result<(Trusted, Channel), TrustError> {
        let dir = self.path("repo");
        let mut t = Trusted::bootstrap(&std::fs::read(dir.join("roots/1.root.json")).unwrap())?;
        while let Ok(next) = std::fs::read(dir.join(format!("roots/{}.root.json", t.root().version + 1))) {
            t.rotate(&next)?;
        }
        t.check_expiry(SystemTime::now())?;
        let c = t.channel(&std::fs::read(dir.join(format!("channels/{channel}.json"))).unwrap(), channel, SystemTime::now(), 0)?;
        Ok((t, c))
    }
}

fn published(docs: &[&str]) -> SignOutcome {
    SignOutcome { published: docs.iter().map(|d| d.to_string()).collect(), still_staged: vec![] }
}

#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    let f = Fixture::new();
    let (private, public) = f.key("k");
    assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
    let k = PrivateKey::load(&private).unwrap();
    assert_eq!(PublicKey::load(&public).unwrap(), k.public());
    let before = std::fs::read(&private).unwrap();
    assert!(keygen(&private).unwrap_err().to_string().contains("already exists"));
    assert_eq!(std::fs::read(&private).unwrap(), before);
}

#[test]
fn init_add_sign_publishes_what_the_client_accepts() {
    let f = Fixture::new();
    stage_root(&f.repo(), &f.root_args(&["root"], &["chan"], None, None), true, SystemTime::now()).unwrap();
    let p1 = f.payload("0.1.0", None);
    f.add(&p1, "stable").unwrap();
    // One call with both keys: the root first, then the channel under it.
    assert_eq!(f.sign(&["root", "chan"]).unwrap(), published(&["root v1", "channel stable v1"]));
    assert!(!f.path("repo/staged/root.json").exists() && !f.path("repo/staged/channels/stable.json").exists());
    let (t, c) = f.client("stable").unwrap();
    assert_eq!(t.root().version, 1);
    assert_eq!((c.version, c.release.version.as_str(), c.release.usr_root_hash.as_str()), (1, "0.1.0", "ab".repeat(32).as_str()));
    let copied = f.path("repo").join(&c.release.payload.path);
    assert_eq!(c.release.payload.path, "payloads/basalt-0.1.0.payload");
    assert_eq!(std::fs::read(&copied).unwrap(), std::fs::read(&p1).unwrap());
    assert_eq!(c.release.payload.sha256, crate::inputs::sha256_file(&p1).unwrap());
    assert_eq!(std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777, 0o644, "a web server can read it");

    // The next release with a delta and waves: channel v2.
    let p2 = f.payload("0.2.0", None);
    let d2 = f.payload("0.2.0", Some("0.1.0"));
    let rollout = Some("2030-01-01T00:00:00Z=0.1,2030-01-02T00:00:00Z=1".to_string());
    add(&f.repo(), &AddOptions { payload: p2, channel: "stable".into(), deltas: vec![d2], expires: "30d".into(), rollout }, SystemTime::now()).unwrap();
    assert_eq!(f.sign(&["chan"]).unwrap(), published(&["channel stable v2"]));
    let (_, c) = f.client("stable").unwrap();
    assert_eq!((c.version, c.release.version.as_str()), (2, "0.2.0"));
    assert_eq!(c.release.deltas.len(), 1);
    assert_eq!((c.release.deltas[0].from.as_str(), c.release.deltas[0].file.path.as_str()), ("0.1.0", "payloads/basalt-0.1.0-to-0.2.0.delta"));
    assert_eq!(c.release.rollout.len(), 2);
    assert!(f.path("repo/payloads/basalt-0.1.0.payload").exists(), "older payloads stay for machines mid-download");

    let shown = show(&f.repo(), SystemTime::now()).unwrap();
    assert!(shown.contains("root v1") && shown.contains("channel stable v2: basalt 0.2.0") && shown.contains("delta from 0.1.0") && shown.contains("nothing staged"), "{shown}");
}

#[test]
fn a_threshold_of_two_needs_two_sign_calls() {
    let f = Fixture::new();
    stage_root(&f.repo(), &f.root_args(&["r1", "r2"], &["c1", "c2"], Some(2), Some(2)), true, SystemTime::now()).unwrap();
    let out = f.sign(&["r1"]).unwrap();
    assert_eq!(out.published, Vec::<String>::new());
    assert_eq!(out.still_staged, ["root v1"]);
    assert!(!f.path("repo/root.json").exists());
    assert_eq!(f.sign(&["r2"]).unwrap(), published(&["root v1"]), "the first signature was kept");
    assert!(show(&f.repo(), SystemTime::now()).unwrap().contains("root keys, 2 of 2 needed"));

    f.add(&f.payload("0.1.0", None), "beta").unwrap();
    assert_eq!(f.sign(&["c1"]).unwrap().still_staged, ["channel beta v1"]);
    assert!(!f.path("repo/channels/beta.json").exists());
    let staged = show(&f.repo(), SystemTime::now()).unwrap();
    assert!(staged.contains("channel beta v1") && staged.contains("signed by"), "{staged}");
    assert_eq!(f.sign(&["c2"]).unwrap(), published(&["channel beta v1"]));
    f.client("beta").unwrap();
}

#[test]
fn rotation_needs_the_old_and_the_new_root_keys_and_clients_follow_it() {
    let f = Fixture::new();
    stage_root(&f.repo(), &f.root_args(&["old"], &["chan"], None, None), true, SystemTime::now()).unwrap();
    f.add(&f.payload("0.1.0", None), "stable").unwrap();
    f.sign(&["old", "chan"]).unwrap();

    // v2: a new root key and a new channel key.
    stage_root(&f.repo(), &f.root_args(&["new"], &["chan2"], None, None), false, SystemTime::now()).unwrap();
    assert_eq!(f.sign(&["new"]).unwrap().still_staged, ["root v2"], "the old root key must sign too");
    assert_eq!(f.sign(&["old"]).unwrap(), published(&["root v2"]));
    assert_eq!(std::fs::read(f.path("repo/root.json")).unwrap(), std::fs::read(f.path("repo/roots/2.root.json")).unwrap());
    // The channel was signed by a key root v2 dropped: clients refuse it until it is signed again.
    assert!(f.client("stable").unwrap_err().to_string().contains("not a channel key"));
    assert!(show(&f.repo(), SystemTime::now()).unwrap().contains("NOT ACCEPTED"));
    f.add(&f.path("repo/payloads/basalt-0.1.0.payload"), "stable").unwrap();
    assert!(f.sign(&["chan"]).unwrap_err().to_string().contains("not a key of any role"), "the old channel key signs nothing now");
    assert_eq!(f.sign(&["chan2"]).unwrap(), published(&["channel stable v2"]));
    let (t, c) = f.client("stable").unwrap();
    assert_eq!((t.root().version, c.version), (2, 2));

    // v3 keeps the roles and only extends the expiry.
    stage_root(&f.repo(), &f.root_args(&[], &[], None, None), false, SystemTime::now()).unwrap();
    f.sign(&["new"]).unwrap();
    let (t, _) = f.client("stable").unwrap();
    assert_eq!(t.root().version, 3);
    assert_eq!(t.root().roles.channel.keyids, [PrivateKey::load(&f.key("chan2").0).unwrap().public().id().to_string()]);
}

#[test]
fn bad_input_is_refused_with_the_reason_and_changes_nothing() {
    let f = Fixture::new();
    let repo = f.repo();
    let now = SystemTime::now();
    assert!(stage_root(&repo, &f.root_args(&["r"], &["c"], Some(2), None), true, now).unwrap_err().to_string().contains("--root-threshold 2 with 1 key(s)"));
    assert!(!f.path("repo").exists(), "a refused init leaves no directory");
    std::fs::write(f.path("junk.pub"), "ssh-ed25519 AAAA").unwrap();
    let mut args = f.root_args(&["r"], &["c"], None, None);
    args.root_keys.push(f.path("junk.pub"));
    assert!(format!("{:#}", stage_root(&repo, &args, true, now).unwrap_err()).contains("junk.pub: not a public key file"));
    args.root_keys = vec![f.path("missing.pub")];
    assert!(format!("{:#}", stage_root(&repo, &args, true, now).unwrap_err()).contains("missing.pub"));

    stage_root(&repo, &f.root_args(&["r"], &["c"], None, None), true, now).unwrap();
    let p1 = f.payload("0.1.0", None);
    f.add(&p1, "stable").unwrap();
    f.sign(&["r", "c"]).unwrap();
    let before = f.snapshot();
    let unchanged = |what: &str| assert!(f.snapshot() == before, "{what} changed the repository");

    assert!(stage_root(&repo, &f.root_args(&["r"], &["c"], None, None), true, now).unwrap_err().to_string().contains("already has root v1"));
    unchanged("init twice");
    assert!(f.add(&p1, "Stable!").unwrap_err().to_string().contains("must be 1-64 characters"));
    unchanged("a bad channel name");
    std::fs::write(f.path("not.payload"), b"hello, I am not a payload").unwrap();
    assert!(format!("{:#}", f.add(&f.path("not.payload"), "stable").unwrap_err()).contains("not a basalt update payload"));
    let mut damaged = std::fs::read(&p1).unwrap();
    let n = damaged.len();
    damaged[n - 200] ^= 0x10;
    std::fs::write(f.path("damaged.payload"), damaged).unwrap();
    assert!(format!("{:#}", f.add(&f.path("damaged.payload"), "stable").unwrap_err()).contains("damaged"));
    let d = f.payload("0.2.0", Some("0.1.0"));
    assert!(f.add(&d, "stable").unwrap_err().to_string().contains("is a delta"));
    unchanged("not a payload");
    let p2 = f.payload("0.2.0", None);
    let backwards = Some("2030-01-02T00:00:00Z=0.5,2030-01-01T00:00:00Z=1".to_string());
    let e = add(&repo, &AddOptions { payload: p2.clone(), channel: "stable".into(), deltas: vec![], expires: "30d".into(), rollout: backwards }, now).unwrap_err();
    assert!(e.to_string().contains("forward in time"), "{e}");
    for (rollout, msg) in [("2030-01-01T00:00:00Z=1.5", "not in (0, 1]"), ("tomorrow=0.5", "RFC 3339"), ("2030-01-01T00:00:00Z", "TIME=SHARE")] {
        let e = add(&repo, &AddOptions { payload: p2.clone(), channel: "stable".into(), deltas: vec![], expires: "30d".into(), rollout: Some(rollout.into()) }, now).unwrap_err();
        assert!(e.to_string().contains(msg), "{rollout}: {e}");
    }
    let e = add(&repo, &AddOptions { payload: p2.clone(), channel: "stable".into(), deltas: vec![], expires: "soon".into(), rollout: None }, now).unwrap_err();
    assert!(e.to_string().contains("--expires"), "{e}");
    let e = add(&repo, &AddOptions { payload: p2.clone(), channel: "stable".into(), deltas: vec![p2.clone()], expires: "30d".into(), rollout: None }, now).unwrap_err();
    assert!(e.to_string().contains("is a full payload, not a delta"), "{e}");
    unchanged("bad add flags");

    // An older release than the channel offers, and another build under a published name.
    f.add(&p2, "stable").unwrap();
    f.sign(&["c"]).unwrap();
    let before = f.snapshot();
    assert!(f.add(&p1, "stable").unwrap_err().to_string().contains("never go back"));
    let other_build = f.path("other.payload");
    {
        let usr = slot("0.2.0", 99);
        let uki = noise(1000, 98);
        let c = Contents { name: "basalt", version: "0.2.0", usr: &usr, hash_offset: 4096, root_hash: &"cd".repeat(32), uki_a: &uki, uki_b: &uki };
        let mut out = Vec::new();
        payload::write(&mut out, &c, None, 3).unwrap();
        std::fs::write(&other_build, out).unwrap();
    }
    assert!(f.add(&other_build, "stable").unwrap_err().to_string().contains("published with other content"));
    assert!(f.snapshot() == before, "refused adds changed the repository");

    // Signing: foreign keys, nothing staged, unknown key files.
    assert!(f.sign(&["c"]).unwrap_err().to_string().contains("nothing is staged"));
    f.add(&f.payload("0.3.0", None), "stable").unwrap();
    let before = f.snapshot();
    let e = f.sign(&["c", "stranger"]).unwrap_err().to_string();
    assert!(e.contains("stranger") && e.contains("not a key of any role"), "{e}");
    let e = f.sign(&["r"]).unwrap_err().to_string();
    assert!(e.contains("not a key of any role"), "a root key does not sign channels: {e}");
    std::fs::write(f.path("bad.key"), "ed25519-private zz").unwrap();
    assert!(format!("{:#}", sign(&repo, &[f.path("bad.key")], now).unwrap_err()).contains("not a private key file"));
    assert!(sign(&repo, &[f.path("absent.key")], now).is_err());
    assert!(f.snapshot() == before, "refused signs changed the repository");

    // An expired root publishes nothing until it is rotated.
    let late = now + Duration::from_secs(400 * 86400);
    let e = format!("{:#}", sign(&repo, &[f.key("c").0], late).unwrap_err());
    assert!(e.contains("root v1 expired"), "{e}");
    assert!(f.snapshot() == before);
}
