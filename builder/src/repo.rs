//! `basalt repo`: a static update repository, plain files any HTTP server,
//! S3 bucket or CDN can serve (docs/updates.md):
//!
//! ```text
//! root.json                  the newest root (keys, roles, thresholds)
//! roots/N.root.json          every root version; clients walk N+1, N+2, ...
//! channels/CHANNEL.json      the release a channel offers
//! payloads/NAME-V.payload    full payloads; NAME-OLD-to-V.delta deltas
//! staged/                    documents waiting for signatures (never served)
//! ```
//!
//! Documents are staged (`init`, `rotate`, `add`), collect signatures
//! (`sign`), and are published by `sign` once they pass exactly the checks
//! the update agent makes (basalt_repo::trust). Every command checks all of
//! its input before it writes anything; each file is written whole and
//! renamed into place.

mod serve;

use anyhow::{anyhow, bail, ensure, Context, Result};
use basalt_repo::envelope::EnvelopeError;
use basalt_repo::meta::{self, Channel, Delta, FileRef, Release, Role, Roles, Root, Wave, CHANNEL_TYPE, ROOT_TYPE};
use basalt_repo::payload::{self, Header};
use basalt_repo::version::Version;
use basalt_repo::{Envelope, PrivateKey, PublicKey, TrustError, Trusted};
use clap::Subcommand;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Subcommand)]
pub enum RepoCmd {
    /// Make a signing key: FILE (private, mode 0600) and FILE.pub.
    Keygen { file: PathBuf },
    /// Stage root v1 of a new repository in DIR.
    Init {
        dir: PathBuf,
        #[command(flatten)]
        keys: RootArgs,
    },
    /// Stage the next root version: new keys, thresholds or expiry. Roles
    /// not given keep the current root's keys and threshold.
    Rotate {
        dir: PathBuf,
        #[command(flatten)]
        keys: RootArgs,
    },
    /// Copy a payload (and its deltas) in and stage the channel offering it.
    Add {
        dir: PathBuf,
        /// A full payload made by `basalt payload`.
        payload: PathBuf,
        /// stable, beta, alpha or any name of a-z, 0-9 and -.
        #[arg(long)]
        channel: String,
        /// A delta of the same release made by `basalt payload --from` (repeatable).
        #[arg(long = "delta", value_name = "FILE")]
        deltas: Vec<PathBuf>,
        /// How long the channel document is valid (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        expires: String,
        /// Waves TIME=SHARE,...: from TIME (RFC 3339, UTC) the machines
        /// below SHARE (0-1] of the fleet may update. Default: all at once.
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Sign every staged document with these keys; publish what has enough signatures.
    Sign {
        dir: PathBuf,
        /// Private key files (repeatable).
        #[arg(long = "key", value_name = "FILE", required = true, num_args = 1..)]
        keys: Vec<PathBuf>,
    },
    /// Serve DIR over HTTP/1.1 (GET, HEAD, Range); one log line per request.
    Serve {
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free one (printed on stdout).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// What is published and what is staged.
    Show { dir: PathBuf },
}

#[derive(clap::Args)]
pub struct RootArgs {
    /// Public key files of the root role (repeatable).
    #[arg(long = "root-key", value_name = "PUB", num_args = 1..)]
    root_keys: Vec<PathBuf>,
    /// Public key files of the channel role (repeatable).
    #[arg(long = "channel-key", value_name = "PUB", num_args = 1..)]
    channel_keys: Vec<PathBuf>,
    /// Root signatures needed (default: 1, or the current root's).
    #[arg(long)]
    root_threshold: Option<usize>,
    /// Channel signatures needed (default: 1, or the current root's).
    #[arg(long)]
    channel_threshold: Option<usize>,
    /// How long the root is valid (e.g. 365d).
    #[arg(long, default_value = "365d")]
    expires: String,
}

pub fn run(cmd: RepoCmd) -> Result<()> {
    match cmd {
        RepoCmd::Keygen { file } => keygen(&file),
        RepoCmd::Init { dir, keys } => stage_root(&Repo::new(&dir), &keys, true, SystemTime::now()),
        RepoCmd::Rotate { dir, keys } => stage_root(&Repo::new(&dir), &keys, false, SystemTime::now()),
        RepoCmd::Add { dir, payload, channel, deltas, expires, rollout } => add(&Repo::new(&dir), &AddOptions { payload, channel, deltas, expires, rollout }, SystemTime::now()),
        RepoCmd::Sign { dir, keys } => sign(&Repo::new(&dir), &keys, SystemTime::now()).map(|_| ()),
        RepoCmd::Serve { dir, listen } => serve::serve(&dir, &listen),
        RepoCmd::Show { dir } => {
            print!("{}", show(&Repo::new(&dir), SystemTime::now())?);
            Ok(())
        }
    }
}

/// The files of one repository.
pub struct Repo {
    dir: PathBuf,
}

impl Repo {
    pub fn new(dir: &Path) -> Repo {
        Repo { dir: dir.to_path_buf() }
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root.json")
    }
    fn root_version(&self, n: u64) -> PathBuf {
        self.dir.join(format!("roots/{n}.root.json"))
    }
    fn channel(&self, c: &str) -> PathBuf {
        self.dir.join(format!("channels/{c}.json"))
    }
    fn staged_root(&self) -> PathBuf {
        self.dir.join("staged/root.json")
    }
    fn staged_channel(&self, c: &str) -> PathBuf {
        self.dir.join(format!("staged/channels/{c}.json"))
    }

    fn check_exists(&self) -> Result<()> {
        ensure!(self.dir.is_dir(), "{} is not a repository directory (make one with `basalt repo init`)", self.dir.display());
        Ok(())
    }

    /// Excludes other `basalt repo` commands on this directory until dropped.
    fn lock(&self) -> Result<File> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(".lock");
        let f = File::options().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("another `basalt repo` command is working on {}", self.dir.display());
        }
        Ok(f)
    }

    /// The published roots, walked from v1 with the client's rules.
    fn trusted(&self) -> Result<Option<Trusted>> {
        let first = self.root_version(1);
        if !first.exists() {
            ensure!(!self.root().exists(), "{} exists but {} does not", self.root().display(), first.display());
            return Ok(None);
        }
        let mut t = Trusted::bootstrap(&read(&first)?).with_context(|| format!("{} does not verify", first.display()))?;
        loop {
            let next = self.root_version(t.root().version + 1);
            if !next.exists() {
                break;
            }
            t.rotate(&read(&next)?).with_context(|| format!("{} does not follow root v{}", next.display(), t.root().version))?;
        }
        ensure!(read(&self.root())? == t.root_envelope(), "{} is not the newest of roots/ (root v{}); the repository is damaged", self.root().display(), t.root().version);
        Ok(Some(t))
    }

    /// The published channel documents, by name, unverified.
    fn published_channels(&self) -> Result<BTreeMap<String, (Vec<u8>, Channel)>> {
        docs_in(&self.dir.join("channels"), channel_unverified)
    }

    fn staged_channels(&self) -> Result<BTreeMap<String, (Vec<u8>, Channel)>> {
        docs_in(&self.dir.join("staged/channels"), channel_unverified)
    }

    fn staged_root_doc(&self) -> Result<Option<(Envelope, Root)>> {
        let p = self.staged_root();
        if !p.exists() {
            return Ok(None);
        }
        let env = Envelope::parse(&read(&p)?).with_context(|| format!("{}", p.display()))?;
        let root = Root::parse(&env.body_unverified()?).with_context(|| format!("{}", p.display()))?;
        Ok(Some((env, root)))
    }
}

fn channel_unverified(bytes: &[u8]) -> Result<Channel> {
    let env = Envelope::parse(bytes)?;
    Ok(Channel::parse(&env.body_unverified()?)?)
}

/// `NAME.json` files of `dir`, parsed by `parse`.
fn docs_in<T>(dir: &Path, parse: impl Fn(&[u8]) -> Result<T>) -> Result<BTreeMap<String, (Vec<u8>, T)>> {
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else { continue };
        if stem.starts_with('.') {
            continue;
        }
        let bytes = read(&e.path())?;
        let doc = parse(&bytes).with_context(|| format!("{}", e.path().display()))?;
        out.insert(stem.to_string(), (bytes, doc));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `path` whole (a temporary file renamed over it), readable by a
/// web server.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(data)?;
    finish_file(tmp, path)
}

fn finish_file(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

fn parse_duration(flag: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s).map_err(|e| anyhow!("{flag} {s:?} is not a duration like 30d or 12h ({e})"))?;
    ensure!(d > Duration::ZERO, "{flag} must be longer than 0");
    Ok(d)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(16)]
}

pub fn keygen(file: &Path) -> Result<()> {
    let pub_path = with_suffix(file, ".pub");
    for p in [file, pub_path.as_path()] {
        ensure!(!p.exists(), "{} already exists; a key file is never overwritten", p.display());
    }
    let key = PrivateKey::generate()?;
    let mut f = File::options().write(true).create_new(true).mode(0o600).open(file).with_context(|| format!("creating {}", file.display()))?;
    f.write_all(key.to_text().as_bytes())?;
    f.sync_all()?;
    if let Err(e) = std::fs::write(&pub_path, format!("{}\n", key.public().to_text())) {
        let _ = std::fs::remove_file(file);
        return Err(e).with_context(|| format!("writing {}", pub_path.display()));
    }
    println!("key {} in {} (public: {})", key.public().id(), file.display(), pub_path.display());
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn key_error(flag: &str, file: &Path, e: basalt_repo::keys::KeyError, wanted: &str) -> anyhow::Error {
    match e {
        basalt_repo::keys::KeyError::Io { source, .. } => anyhow!("{flag} {}: {source}", file.display()),
        other => anyhow!("{flag} {}: not {wanted}: {other}", file.display()),
    }
}

fn load_public(flag: &str, files: &[PathBuf]) -> Result<Vec<PublicKey>> {
    let mut out: Vec<PublicKey> = Vec::new();
    for f in files {
        let k = PublicKey::load(f).map_err(|e| key_error(flag, f, e, "a public key file (FILE.pub of `basalt repo keygen`)"))?;
        ensure!(!out.contains(&k), "{flag} {} names a key given twice ({})", f.display(), k.id());
        out.push(k);
    }
    Ok(out)
}

/// `init` (root v1) and `rotate` (root vN+1).
pub fn stage_root(repo: &Repo, a: &RootArgs, init: bool, now: SystemTime) -> Result<()> {
    if !init {
        repo.check_exists()?;
    }
    let created = !repo.dir.exists();
    let result = stage_root_locked(repo, a, init, now);
    if result.is_err() && created {
        // A refused `init` leaves no directory behind.
        let _ = std::fs::remove_file(repo.dir.join(".lock"));
        let _ = std::fs::remove_dir(&repo.dir);
    }
    result
}

fn stage_root_locked(repo: &Repo, a: &RootArgs, init: bool, now: SystemTime) -> Result<()> {
    let _lock = repo.lock()?;
    let current = repo.trusted()?;
    let current = current.as_ref().map(|t| t.root());
    let version = match (init, current) {
        (true, Some(r)) => bail!("{} already has root v{}; change keys with `basalt repo rotate`", repo.dir.display(), r.version),
        (true, None) => 1,
        (false, None) => bail!("{} has no published root yet; publish root v1 with `basalt repo sign` first", repo.dir.display()),
        (false, Some(r)) => r.version + 1,
    };
    let expires = parse_duration("--expires", &a.expires)?;
    let mut keys = BTreeMap::new();
    let mut role = |flag: &str, files: &[PathBuf], threshold: Option<usize>, old: Option<&Role>| -> Result<Role> {
        let (ids, old_threshold) = if files.is_empty() {
            let old = old.with_context(|| format!("{flag} is required: at least one public key file"))?;
            for id in &old.keyids {
                keys.insert(id.clone(), current.unwrap().keys[id].clone());
            }
            (old.keyids.clone(), Some(old.threshold))
        } else {
            let ks = load_public(flag, files)?;
            for k in &ks {
                keys.insert(k.id().to_string(), k.to_text());
            }
            (ks.iter().map(|k| k.id().to_string()).collect(), old.map(|r| r.threshold))
        };
        let threshold = threshold.or(old_threshold.filter(|&t| t <= ids.len())).unwrap_or(1);
        let thr_flag = flag.replace("-key", "-threshold");
        ensure!(threshold >= 1 && threshold <= ids.len(), "{thr_flag} {threshold} with {} key(s): it must be 1 to the number of keys", ids.len());
        Ok(Role { keyids: ids, threshold })
    };
    let root_role = role("--root-key", &a.root_keys, a.root_threshold, current.map(|r| &r.roles.root))?;
    let channel_role = role("--channel-key", &a.channel_keys, a.channel_threshold, current.map(|r| &r.roles.channel))?;
    let root = Root { kind: "root".into(), version, expires: meta::format_time(now + expires), keys, roles: Roles { root: root_role, channel: channel_role } };
    root.check()?;
    let replaced = repo.staged_root_doc()?.map(|(_, r)| r.version);
    write_atomic(&repo.staged_root(), Envelope::new(ROOT_TYPE, &root.to_json()).to_json().as_bytes())?;
    if let Some(v) = replaced {
        println!("replaced the staged root v{v} (its signatures are gone)");
    }
    println!(
        "staged root v{version}: root threshold {} of {}, channel threshold {} of {}, expires {}",
        root.roles.root.threshold,
        root.roles.root.keyids.len(),
        root.roles.channel.threshold,
        root.roles.channel.keyids.len(),
        root.expires
    );
    let needs = match current {
        Some(c) => format!("{} of root v{}'s root keys and {} of its own", c.roles.root.threshold, c.version, root.roles.root.threshold),
        None => format!("{} of its root keys", root.roles.root.threshold),
    };
    println!("publish it with `basalt repo sign {} --key ...`: it needs {needs}", repo.dir.display());
    Ok(())
}

pub struct AddOptions {
    pub payload: PathBuf,
    pub channel: String,
    pub deltas: Vec<PathBuf>,
    pub expires: String,
    pub rollout: Option<String>,
}

/// `T=S,T=S`: waves in the order given; basalt_repo checks their order.
pub fn parse_rollout(s: &str) -> Result<Vec<Wave>> {
    let mut waves = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (t, share) = part.rsplit_once('=').with_context(|| format!("--rollout wave {part:?} is not TIME=SHARE (e.g. 2026-12-01T00:00:00Z=0.1)"))?;
        meta::parse_time("--rollout", "wave", t).map_err(|e| anyhow!("{}", e.message))?;
        let share: f64 = share.parse().map_err(|_| anyhow!("--rollout wave {part:?}: share {share:?} is not a number in (0, 1]"))?;
        ensure!(share > 0.0 && share <= 1.0, "--rollout wave {part:?}: share {share} is not in (0, 1]");
        waves.push(Wave { from: t.to_string(), share });
    }
    ensure!(!waves.is_empty(), "--rollout {s:?} has no waves");
    Ok(waves)
}

fn read_payload_header(path: &Path) -> Result<Header> {
    let mut f = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    payload::read_header(&mut f).with_context(|| format!("{}", path.display()))
}

/// Decompresses a full payload and checks every part's sha256.
fn verify_full_payload(path: &Path) -> Result<Header> {
    struct Discard;
    impl payload::Sink for Discard {
        fn usr(&mut self, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn uki(&mut self, _: char, _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut f = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let h = payload::read_header(&mut f).with_context(|| format!("{}", path.display()))?;
    ensure!(h.delta.is_none(), "{} is a delta (from {}); give the full payload as PAYLOAD and deltas with --delta", path.display(), h.delta.as_ref().unwrap().version);
    payload::unpack(f, &h, None, &mut Discard).with_context(|| format!("{}: the payload is damaged", path.display()))?;
    Ok(h)
}

/// A file going into payloads/: its name there, size and sha256.
struct Incoming {
    source: PathBuf,
    file: FileRef,
}

fn incoming(source: &Path, repo_path: String) -> Result<Incoming> {
    let size = std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?.len();
    let sha256 = crate::inputs::sha256_file(source)?;
    meta::check_path("payload", &repo_path).map_err(|e| anyhow!("{}", e.message))?;
    Ok(Incoming { source: source.to_path_buf(), file: FileRef { path: repo_path, size, sha256 } })
}

pub fn add(repo: &Repo, o: &AddOptions, now: SystemTime) -> Result<()> {
    repo.check_exists()?;
    let _lock = repo.lock()?;
    meta::check_channel_name(&o.channel).map_err(|m| anyhow!("--channel: {m}"))?;
    let expires = parse_duration("--expires", &o.expires)?;
    let rollout = o.rollout.as_deref().map(parse_rollout).transpose()?.unwrap_or_default();
    ensure!(repo.trusted()?.is_some() || repo.staged_root().exists(), "{} has no root; stage one with `basalt repo init` first", repo.dir.display());

    let h = verify_full_payload(&o.payload)?;
    let version = Version::parse(&h.version).map_err(|e| anyhow!("{}: {e}", o.payload.display()))?;
    let mut files = vec![incoming(&o.payload, format!("payloads/{}-{}.payload", h.name, h.version))?];
    let mut deltas = Vec::new();
    let mut froms = BTreeSet::new();
    for d in &o.deltas {
        let dh = read_payload_header(d)?;
        let from = dh.delta.as_ref().with_context(|| format!("--delta {} is a full payload, not a delta", d.display()))?;
        ensure!(dh.name == h.name && dh.version == h.version, "--delta {} is for {} {}, the payload is {} {}", d.display(), dh.name, dh.version, h.name, h.version);
        ensure!(dh.usr == h.usr && dh.uki == h.uki, "--delta {} makes other bytes than the payload (usr or UKI sha256 differ): it was made from another build of {}", d.display(), h.version);
        let fv = Version::parse(&from.version).map_err(|e| anyhow!("--delta {}: {e}", d.display()))?;
        ensure!(fv < version, "--delta {} goes from {} to {}: not from an older version", d.display(), from.version, h.version);
        ensure!(froms.insert(from.version.clone()), "two deltas from {}", from.version);
        let inc = incoming(d, format!("payloads/{}-{}-to-{}.delta", h.name, from.version, h.version))?;
        ensure!(inc.file.size < files[0].file.size, "--delta {} ({} bytes) is not smaller than the full payload ({} bytes); leave it out", d.display(), inc.file.size, files[0].file.size);
        deltas.push(Delta { from: from.version.clone(), file: inc.file.clone() });
        files.push(inc);
    }

    // What is published already: never replaced under the same name, and
    // the channel's version grows.
    let published = repo.published_channels()?;
    let referenced: BTreeMap<String, String> =
        published.values().flat_map(|(_, c)| std::iter::once(&c.release.payload).chain(c.release.deltas.iter().map(|d| &d.file))).map(|f| (f.path.clone(), f.sha256.clone())).collect();
    for f in &files {
        if let Some(sha) = referenced.get(&f.file.path) {
            ensure!(*sha == f.file.sha256, "{} is published with other content (sha256 {}); a published file never changes: give the new build a new version", f.file.path, short(sha));
        }
    }
    let channel_version = published.get(&o.channel).map_or(0, |(_, c)| c.version) + 1;
    if let Some((_, c)) = published.get(&o.channel) {
        let old = Version::parse(&c.release.version).map_err(|e| anyhow!("channels/{}.json: {e}", o.channel))?;
        ensure!(version >= old, "channel {} offers {} {}; {} is older, and machines never go back to a lower version by themselves", o.channel, c.release.name, c.release.version, h.version);
    }
    let channel = Channel {
        kind: "channel".into(),
        channel: o.channel.clone(),
        version: channel_version,
        expires: meta::format_time(now + expires),
        release: Release { name: h.name.clone(), version: h.version.clone(), usr_root_hash: h.usr.root_hash.clone(), payload: files[0].file.clone(), deltas, rollout },
    };
    channel.check().map_err(|e| anyhow!("{e}"))?;

    // Copy the payloads (each written whole, then renamed), then stage.
    for f in &files {
        let dest = repo.dir.join(&f.file.path);
        if dest.exists() && crate::inputs::sha256_file(&dest)? == f.file.sha256 {
            continue;
        }
        std::fs::create_dir_all(dest.parent().unwrap())?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dest.parent().unwrap())?;
        let n = std::io::copy(&mut File::open(&f.source)?, tmp.as_file_mut()).with_context(|| format!("copying {}", f.source.display()))?;
        ensure!(n == f.file.size, "{} changed while it was copied", f.source.display());
        finish_file(tmp, &dest)?;
    }
    write_atomic(&repo.staged_channel(&o.channel), Envelope::new(CHANNEL_TYPE, &channel.to_json()).to_json().as_bytes())?;
    println!(
        "staged channel {} v{channel_version}: {} {} ({}, {:.1} MiB{}), expires {}",
        o.channel,
        h.name,
        h.version,
        files[0].file.path,
        files[0].file.size as f64 / 1048576.0,
        channel.release.deltas.iter().map(|d| format!("; delta from {} {:.1} MiB", d.from, d.file.size as f64 / 1048576.0)).collect::<String>(),
        channel.expires
    );
    println!("publish it with `basalt repo sign {} --key ...`", repo.dir.display());
    Ok(())
}

/// What `sign` did with each staged document.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SignOutcome {
    pub published: Vec<String>,
    pub still_staged: Vec<String>,
}

/// The reason a document waits for more signatures, if that is all it lacks.
fn missing_signatures(e: &TrustError) -> Option<&EnvelopeError> {
    match e {
        TrustError::Signature { source: s @ EnvelopeError::Threshold { .. }, .. } => Some(s),
        _ => None,
    }
}

pub fn sign(repo: &Repo, key_files: &[PathBuf], now: SystemTime) -> Result<SignOutcome> {
    repo.check_exists()?;
    let _lock = repo.lock()?;
    let mut keys = Vec::new();
    for f in key_files {
        let k = PrivateKey::load(f).map_err(|e| key_error("--key", f, e, "a private key file (made by `basalt repo keygen`)"))?;
        keys.push((f, k));
    }
    let trusted = repo.trusted()?;
    let staged_root = repo.staged_root_doc()?;
    let staged_channels = repo.staged_channels()?;
    ensure!(staged_root.is_some() || !staged_channels.is_empty(), "nothing is staged in {}; stage documents with `basalt repo init`, `rotate` or `add`", repo.dir.display());

    // Who may sign what: the current and the staged root's root keys sign a
    // root; their channel keys sign channels.
    let mut root_signers = BTreeSet::new();
    let mut channel_signers = BTreeSet::new();
    for r in trusted.iter().map(|t| t.root()).chain(staged_root.iter().map(|(_, r)| r)) {
        root_signers.extend(r.roles.root.keyids.iter().cloned());
        channel_signers.extend(r.roles.channel.keyids.iter().cloned());
    }
    for (f, k) in &keys {
        let id = k.public().id().to_string();
        let for_root = staged_root.is_some() && root_signers.contains(&id);
        let for_channel = !staged_channels.is_empty() && channel_signers.contains(&id);
        ensure!(
            for_root || for_channel,
            "--key {} (key {}) is not a key of any role that signs what is staged (staged: {}; root keys {}; channel keys {})",
            f.display(),
            short(&id),
            staged_names(&staged_root, &staged_channels).join(", "),
            root_signers.iter().map(|i| short(i)).collect::<Vec<_>>().join(" "),
            channel_signers.iter().map(|i| short(i)).collect::<Vec<_>>().join(" ")
        );
    }

    // Sign in memory, then decide with the client's rules.
    let mut out = SignOutcome::default();
    let mut writes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut removes: Vec<PathBuf> = Vec::new();
    let mut newest = trusted.clone();
    let mut messages = Vec::new();
    if let Some((mut env, root)) = staged_root {
        for (_, k) in keys.iter().filter(|(_, k)| root_signers.contains(&k.public().id().to_string())) {
            env.sign(k)?;
        }
        let bytes = env.to_json().into_bytes();
        let doc = format!("root v{}", root.version);
        let result = match &trusted {
            Some(t) => {
                let mut t = t.clone();
                t.rotate(&bytes).map(|_| t)
            }
            None => Trusted::bootstrap(&bytes),
        };
        match result {
            Ok(t) => {
                t.check_expiry(now).map_err(|e| anyhow!("{e}; stage a new root with `basalt repo rotate`"))?;
                writes.push((repo.root_version(root.version), bytes.clone()));
                writes.push((repo.root(), bytes));
                removes.push(repo.staged_root());
                out.published.push(doc.clone());
                messages.push(format!("published {doc} (roots/{}.root.json, root.json)", root.version));
                newest = Some(t);
            }
            Err(e) if missing_signatures(&e).is_some() => {
                writes.push((repo.staged_root(), bytes));
                messages.push(format!("{doc} stays staged: {}", missing_signatures(&e).unwrap()));
                out.still_staged.push(doc);
            }
            Err(e) => return Err(anyhow!("{e}")).with_context(|| format!("staged {doc} cannot be published")),
        }
    }
    let published = repo.published_channels()?;
    for (name, (bytes, channel)) in staged_channels {
        let mut env = Envelope::parse(&bytes)?;
        for (_, k) in keys.iter().filter(|(_, k)| channel_signers.contains(&k.public().id().to_string())) {
            env.sign(k)?;
        }
        let bytes = env.to_json().into_bytes();
        let doc = format!("channel {name} v{}", channel.version);
        let seen = published.get(&name).map_or(0, |(_, c)| c.version);
        let Some(t) = &newest else {
            writes.push((repo.staged_channel(&name), bytes));
            messages.push(format!("{doc} stays staged: no root is published yet"));
            out.still_staged.push(doc);
            continue;
        };
        match t.channel(&bytes, &name, now, seen) {
            Ok(_) if channel.version == seen => {
                bail!("{doc} has the version of the published one; stage it again with `basalt repo add`")
            }
            Ok(_) => {
                writes.push((repo.channel(&name), bytes));
                removes.push(repo.staged_channel(&name));
                messages.push(format!("published {doc}: {} {}", channel.release.name, channel.release.version));
                out.published.push(doc);
            }
            Err(e) if missing_signatures(&e).is_some() => {
                writes.push((repo.staged_channel(&name), bytes));
                messages.push(format!("{doc} stays staged: {}", missing_signatures(&e).unwrap()));
                out.still_staged.push(doc);
            }
            Err(e @ TrustError::Expired { .. }) => return Err(anyhow!("{e}")).with_context(|| format!("{doc} cannot be published (rotate the root or stage the channel again)")),
            Err(e) => return Err(anyhow!("{e}")).with_context(|| format!("{doc} cannot be published")),
        }
    }

    // Everything checked: write. Roots before channels, so a channel is
    // never out before the root its keys come from.
    for (path, bytes) in &writes {
        write_atomic(path, bytes)?;
    }
    for path in &removes {
        remove(path)?;
    }
    for m in &messages {
        println!("{m}");
    }
    // A new root may drop the keys the published channels were signed with.
    if out.published.iter().any(|d| d.starts_with("root ")) {
        let t = newest.as_ref().unwrap();
        for (name, (bytes, c)) in repo.published_channels()? {
            if let Err(e) = t.channel(&bytes, &name, now, 0) {
                println!("warning: channel {name} v{} does not verify under root v{}: {e}", c.version, t.root().version);
                println!("  re-stage it: basalt repo add {} {} --channel {name}", repo.dir.display(), repo.dir.join(&c.release.payload.path).display());
            }
        }
    }
    Ok(out)
}

fn staged_names(root: &Option<(Envelope, Root)>, channels: &BTreeMap<String, (Vec<u8>, Channel)>) -> Vec<String> {
    root.iter().map(|(_, r)| format!("root v{}", r.version)).chain(channels.iter().map(|(n, (_, c))| format!("channel {n} v{}", c.version))).collect()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

fn signed_by(env: &Envelope) -> String {
    if env.signatures.is_empty() {
        return "no signatures".into();
    }
    format!("signed by {}", env.signatures.iter().map(|s| short(&s.keyid)).collect::<Vec<_>>().join(" "))
}

fn expiry_note(expires: &str, now: SystemTime) -> &'static str {
    match humantime::parse_rfc3339(expires) {
        Ok(t) if t <= now => "  EXPIRED",
        Ok(t) if t <= now + Duration::from_secs(7 * 86400) => "  (expires within a week)",
        _ => "",
    }
}

pub fn show(repo: &Repo, now: SystemTime) -> Result<String> {
    repo.check_exists()?;
    let mut s = String::new();
    use std::fmt::Write as _;
    let trusted = repo.trusted()?;
    match &trusted {
        None => writeln!(s, "no root published").unwrap(),
        Some(t) => {
            let r = t.root();
            writeln!(s, "root v{}, expires {}{}", r.version, r.expires, expiry_note(&r.expires, now)).unwrap();
            for (name, role) in [("root", &r.roles.root), ("channel", &r.roles.channel)] {
                writeln!(s, "  {name} keys, {} of {} needed: {}", role.threshold, role.keyids.len(), role.keyids.iter().map(|i| short(i)).collect::<Vec<_>>().join(" ")).unwrap();
            }
        }
    }
    for (name, (bytes, c)) in repo.published_channels()? {
        let r = &c.release;
        writeln!(s, "channel {name} v{}: {} {}, expires {}{}", c.version, r.name, r.version, c.expires, expiry_note(&c.expires, now)).unwrap();
        writeln!(s, "  payload {} {} sha256 {}", r.payload.path, mib(r.payload.size), short(&r.payload.sha256)).unwrap();
        for d in &r.deltas {
            writeln!(s, "  delta from {}: {} {}", d.from, d.file.path, mib(d.file.size)).unwrap();
        }
        if !r.rollout.is_empty() {
            let now_share = r.share_at(now);
            writeln!(s, "  rollout {} (now {:.0}% of machines)", r.rollout.iter().map(|w| format!("{}={}", w.from, w.share)).collect::<Vec<_>>().join(","), now_share * 100.0).unwrap();
        }
        match &trusted {
            Some(t) => {
                if let Err(e) = t.channel(&bytes, &name, now, 0) {
                    writeln!(s, "  NOT ACCEPTED by clients: {e}").unwrap();
                }
            }
            None => writeln!(s, "  NOT ACCEPTED by clients: no root").unwrap(),
        }
    }
    let staged_root = repo.staged_root_doc()?;
    let staged_channels = repo.staged_channels()?;
    if staged_root.is_none() && staged_channels.is_empty() {
        writeln!(s, "nothing staged").unwrap();
        return Ok(s);
    }
    writeln!(s, "staged:").unwrap();
    if let Some((env, r)) = &staged_root {
        let mut need = format!("{} of its {} root keys", r.roles.root.threshold, r.roles.root.keyids.len());
        if let Some(t) = &trusted {
            need = format!("{} of root v{}'s root keys and {need}", t.root().roles.root.threshold, t.root().version);
        }
        writeln!(s, "  root v{}, expires {}: {}; needs {need}", r.version, r.expires, signed_by(env)).unwrap();
    }
    for (name, (bytes, c)) in &staged_channels {
        let env = Envelope::parse(bytes)?;
        writeln!(s, "  channel {name} v{}: {} {}, expires {}: {}", c.version, c.release.name, c.release.version, c.expires, signed_by(&env)).unwrap();
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
