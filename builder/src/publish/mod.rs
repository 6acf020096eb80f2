//! `basalt publish aws`: the raw image becomes an EBS snapshot through the
//! EBS direct APIs (512 KiB blocks, each with its sha256; all-zero blocks
//! skipped, since an EBS snapshot reads zeros where nothing was written;
//! many blocks in flight, each retried), sealed with the checksum of the
//! checksums, then an AMI (`RegisterImage`: UEFI, ENA, IMDSv2, x86_64),
//! optionally copied to other regions and shared.
//!
//! Before anything is sent, the image's console-shell setting is read from
//! its UKI's command line and printed; an image built with
//! `console_shell: always` (a root shell for whoever opens the instance's
//! EC2 serial console) is refused without `--allow-console-shell`.
//!
//! An upload is resumable: a state file next to the image records the
//! snapshot id and every block already written with its checksum; a rerun
//! with the same image and region continues where the last one stopped.

pub mod client;
pub mod config;
pub mod ebs;
pub mod ec2;
pub mod sigv4;

use crate::stream::{is_zero, Progress};
use anyhow::{bail, Context, Result};
use client::Client;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

const GIB: u64 = 1 << 30;
/// Test hook: SIGKILL ourselves after uploading this many blocks.
pub const KILL_AFTER_BLOCKS_ENV: &str = "BASALT_PUBLISH_TEST_KILL_AFTER_BLOCKS";

pub struct AwsOptions {
    pub image: PathBuf,
    pub name: Option<String>,
    pub description: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub copy_to_regions: Vec<String>,
    pub launch_permissions: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub parallel: usize,
    pub dry_run: bool,
    pub state_file: Option<PathBuf>,
    pub allow_console_shell: bool,
}

/// What will be uploaded: the image's non-zero 512 KiB blocks.
pub struct Plan {
    pub image_bytes: u64,
    pub image_sha256: String,
    pub volume_gib: u64,
    pub total_blocks: u64,
    pub data_blocks: Vec<u64>,
}

pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("a tag is KEY=VALUE, found {s:?}")),
    }
}

/// Reads the image once: which blocks hold data. Holes (SEEK_DATA) are
/// skipped without reading; data regions are read and checked for zeros.
pub fn plan(image: &Path) -> Result<Plan> {
    let f = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    basalt_disk::Gpt::read(&mut &f).with_context(|| format!("{} is not a raw disk image (publish takes the raw .img)", image.display()))?;
    let image_bytes = f.metadata()?.len();
    let block = ebs::BLOCK_SIZE as u64;
    let total_blocks = image_bytes.div_ceil(block);
    let mut data_blocks = Vec::new();
    let mut buf = vec![0u8; ebs::BLOCK_SIZE];
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut pos: u64 = 0;
    while pos < image_bytes {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(fd, pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole remains
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) }.max(data) as u64;
        let first = data as u64 / block;
        let last = hole.div_ceil(block).min(total_blocks);
        for index in first..last {
            if data_blocks.last() == Some(&index) {
                continue;
            }
            let n = read_block(&f, index, image_bytes, &mut buf)?;
            if !is_zero(&buf[..n]) {
                data_blocks.push(index);
            }
        }
        pos = (last * block).max(hole);
    }
    let image_sha256 = match std::fs::read_to_string(crate::formats::sha256_path(image)) {
        Ok(t) => t.split_whitespace().next().unwrap_or("").to_string(),
        Err(_) => crate::inputs::sha256_file(image)?,
    };
    Ok(Plan { image_bytes, image_sha256, volume_gib: image_bytes.div_ceil(GIB).max(1), total_blocks, data_blocks })
}

/// Reads block `index`, zero-padded to a full block; returns the image bytes in it.
fn read_block(f: &std::fs::File, index: u64, image_bytes: u64, buf: &mut [u8]) -> Result<usize> {
    let start = index * ebs::BLOCK_SIZE as u64;
    let n = (image_bytes - start).min(ebs::BLOCK_SIZE as u64) as usize;
    f.read_exact_at(&mut buf[..n], start)?;
    buf[n..].fill(0);
    Ok(n)
}

/// The resumable upload's record: a header line, then one line per block.
struct State {
    path: PathBuf,
    file: std::fs::File,
    snapshot_id: String,
    done: BTreeMap<u64, String>,
    completed: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateHeader {
    image_sha256: String,
    region: String,
    snapshot_id: String,
    volume_gib: u64,
}

impl State {
    fn load(path: &Path, plan: &Plan, region: &str) -> Result<Option<State>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut lines = text.lines();
        let header: StateHeader = serde_json::from_str(lines.next().unwrap_or("")).with_context(|| format!("{} is not a publish state file", path.display()))?;
        if header.image_sha256 != plan.image_sha256 || header.region != region {
            bail!("{} records an upload of another image or region (snapshot {} in {}); delete it to start over", path.display(), header.snapshot_id, header.region);
        }
        let mut done = BTreeMap::new();
        let mut completed = false;
        for line in lines {
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => continue, // a line cut short by a kill
            };
            if v["completed"] == true {
                completed = true;
            } else if let (Some(b), Some(c)) = (v["block"].as_u64(), v["checksum"].as_str()) {
                done.insert(b, c.to_string());
            }
        }
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Some(State { path: path.to_owned(), file, snapshot_id: header.snapshot_id, done, completed }))
    }

    fn create(path: &Path, plan: &Plan, region: &str, snapshot_id: &str) -> Result<State> {
        let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let header = StateHeader { image_sha256: plan.image_sha256.clone(), region: region.into(), snapshot_id: snapshot_id.into(), volume_gib: plan.volume_gib };
        writeln!(file, "{}", serde_json::to_string(&header)?)?;
        file.sync_all()?;
        Ok(State { path: path.to_owned(), file, snapshot_id: snapshot_id.into(), done: BTreeMap::new(), completed: false })
    }

    fn record_block(&mut self, index: u64, checksum: &str) -> Result<()> {
        // One write per line on an O_APPEND file: a kill loses at most the line being written.
        self.file.write_all(format!("{{\"block\":{index},\"checksum\":\"{checksum}\"}}\n").as_bytes())?;
        self.done.insert(index, checksum.to_string());
        Ok(())
    }

    fn record_completed(&mut self) -> Result<()> {
        self.file.write_all(b"{\"completed\":true}\n")?;
        self.file.sync_all()?;
        self.completed = true;
        Ok(())
    }
}

/// The base64 sha256 over the raw block digests in block order (LINEAR).
pub fn aggregate_checksum(checksums: &BTreeMap<u64, String>) -> Result<String> {
    let mut h = Sha256::new();
    for c in checksums.values() {
        h.update(base64::Engine::decode(&base64::engine::general_purpose::STANDARD, c).context("a block checksum in the state file is not base64")?);
    }
    Ok(ebs::b64(&h.finalize()))
}

pub struct Published {
    pub snapshot_id: String,
    /// (region, AMI id), the home region first.
    pub images: Vec<(String, String)>,
}

pub fn publish(opts: &AwsOptions) -> Result<Option<Published>> {
    let env = config::Environment::from_process();
    let region = env.region(opts.region.as_deref())?;
    let shown = opts.image.display().to_string();
    let shell = {
        let f = std::fs::File::open(&opts.image).with_context(|| format!("opening {shown}"))?;
        let gpt = basalt_disk::Gpt::read(&mut &f).with_context(|| format!("{shown} is not a raw disk image (publish takes the raw .img)"))?;
        crate::console_shell::or_unknown(crate::console_shell::of_disk(&f, &gpt, &shown))
    };
    println!("{shown}: {}", crate::console_shell::describe(shell));
    crate::console_shell::check(shell, opts.allow_console_shell, &shown, " (on EC2, to everyone allowed to open the instance's serial console)")?;
    let plan = plan(&opts.image)?;
    let stem = opts.image.file_name().and_then(|n| n.to_str()).unwrap_or("basalt").trim_end_matches(".img").to_string();
    let name = opts.name.clone().unwrap_or_else(|| format!("{stem}-{}", &plan.image_sha256[..12.min(plan.image_sha256.len())]));
    let description = opts.description.clone().unwrap_or_else(|| format!("basalt {stem} (image sha256 {})", plan.image_sha256));
    let state_path = opts.state_file.clone().unwrap_or_else(|| {
        let mut s = opts.image.as_os_str().to_owned();
        s.push(".aws-upload");
        PathBuf::from(s)
    });
    let ebs_endpoint = env.endpoint(opts.endpoint_url.as_deref(), "ebs", &region);
    let ec2_endpoint = env.endpoint(opts.endpoint_url.as_deref(), "ec2", &region);

    if opts.dry_run {
        let upload = plan.data_blocks.len() as u64 * ebs::BLOCK_SIZE as u64;
        println!("plan (dry run, nothing is sent):");
        println!("  image          {} ({} bytes, sha256 {})", opts.image.display(), plan.image_bytes, plan.image_sha256);
        println!(
            "  snapshot       {} GiB volume, {} blocks of 512 KiB: {} to upload ({:.1} MiB), {} all-zero skipped",
            plan.volume_gib,
            plan.total_blocks,
            plan.data_blocks.len(),
            upload as f64 / 1048576.0,
            plan.total_blocks - plan.data_blocks.len() as u64
        );
        println!("  upload         {} in parallel via {ebs_endpoint}, state in {}", opts.parallel, state_path.display());
        if let Ok(text) = std::fs::read_to_string(&state_path) {
            println!("  resume         {} ({} lines recorded)", state_path.display(), text.lines().count().saturating_sub(1));
        }
        println!("  region         {region} via {ec2_endpoint}");
        println!(
            "  RegisterImage  {}",
            ec2::register_image_params(&ec2::ImageSpec { name: &name, description: &description, snapshot_id: "<snapshot>", volume_gib: plan.volume_gib, tags: &opts.tags })
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for r in &opts.copy_to_regions {
            println!("  CopyImage      to {r}");
        }
        for who in &opts.launch_permissions {
            println!("  launch permission for {who}");
        }
        return Ok(None);
    }

    let creds = env.credentials()?;
    let ebs_client = Client::new(creds.clone(), &region, "ebs", &ebs_endpoint)?;
    let ec2_client = Client::new(creds.clone(), &region, "ec2", &ec2_endpoint)?;

    let mut state = match State::load(&state_path, &plan, &region)? {
        Some(s) => {
            eprintln!("resuming snapshot {}: {} of {} blocks already uploaded", s.snapshot_id, s.done.len(), plan.data_blocks.len());
            s
        }
        None => {
            let mut snapshot_tags = opts.tags.clone();
            snapshot_tags.push(("basalt:image-sha256".into(), plan.image_sha256.clone()));
            let token = format!("basalt-{}-{}", &plan.image_sha256[..16.min(plan.image_sha256.len())], std::process::id());
            let started = ebs::start_snapshot(&ebs_client, plan.volume_gib, &description, &snapshot_tags, &token)?;
            if started.block_size != ebs::BLOCK_SIZE as u64 && started.block_size != 512 {
                // moto reports 512; AWS reports 524288. Anything else is a protocol we do not speak.
                bail!("StartSnapshot answered a block size of {} bytes; basalt writes 512 KiB blocks", started.block_size);
            }
            eprintln!("started snapshot {}", started.snapshot_id);
            State::create(&state_path, &plan, &region, &started.snapshot_id)?
        }
    };
    let snapshot_id = state.snapshot_id.clone();

    if !state.completed {
        upload_blocks(&ebs_client, &opts.image, &plan, &mut state, opts.parallel.max(1))?;
        let aggregate = aggregate_checksum(&state.done)?;
        let status = ebs::complete_snapshot(&ebs_client, &snapshot_id, state.done.len() as u64, &aggregate)?;
        eprintln!("completed snapshot {snapshot_id} ({status}), {} blocks, checksum {aggregate}", state.done.len());
        state.record_completed()?;
    }
    ec2::wait_snapshot_completed(&ec2_client, &snapshot_id, std::time::Duration::from_secs(3600))?;
    let image_id = ec2::register_image(&ec2_client, &ec2::ImageSpec { name: &name, description: &description, snapshot_id: &snapshot_id, volume_gib: plan.volume_gib, tags: &opts.tags })?;
    let mut images = vec![(region.clone(), image_id.clone())];
    for r in &opts.copy_to_regions {
        let c = Client::new(creds.clone(), r, "ec2", &env.endpoint(opts.endpoint_url.as_deref(), "ec2", r))?;
        images.push((r.clone(), ec2::copy_image(&c, &region, &image_id, &name, &description, &opts.tags)?));
    }
    for (r, id) in &images {
        let c = if *r == region { ec2_client.clone() } else { Client::new(creds.clone(), r, "ec2", &env.endpoint(opts.endpoint_url.as_deref(), "ec2", r))? };
        for who in &opts.launch_permissions {
            ec2::add_launch_permission(&c, id, who)?;
        }
    }
    std::fs::remove_file(&state.path).ok();
    Ok(Some(Published { snapshot_id, images }))
}

fn upload_blocks(c: &Client, image: &Path, plan: &Plan, state: &mut State, parallel: usize) -> Result<()> {
    let todo: Vec<u64> = plan.data_blocks.iter().copied().filter(|b| !state.done.contains_key(b)).collect();
    let file = std::fs::File::open(image)?;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let kill_after: Option<usize> = std::env::var(KILL_AFTER_BLOCKS_ENV).ok().and_then(|v| v.parse().ok());
    let uploaded = AtomicUsize::new(0);
    let total_bytes = plan.data_blocks.len() as u64 * ebs::BLOCK_SIZE as u64;
    let snapshot_id = state.snapshot_id.clone();
    let shared = Mutex::new((state, Progress::new("upload", Some(total_bytes)), None::<anyhow::Error>));
    {
        let mut g = shared.lock().unwrap();
        let already = g.0.done.len() as u64 * ebs::BLOCK_SIZE as u64;
        g.1.advance(already);
    }
    let total_data = plan.data_blocks.len().max(1);
    std::thread::scope(|s| {
        for _ in 0..parallel.min(todo.len().max(1)) {
            s.spawn(|| {
                let mut buf = vec![0u8; ebs::BLOCK_SIZE];
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&index) = todo.get(i) else { return };
                    let result = read_block(&file, index, plan.image_bytes, &mut buf).and_then(|_| {
                        let checksum = ebs::b64(&Sha256::digest(&buf));
                        let percent = ((plan.data_blocks.len() - todo.len() + i) * 100 / total_data) as u32;
                        ebs::put_block(c, &snapshot_id, index, &buf, &checksum, percent)?;
                        Ok(checksum)
                    });
                    let mut g = shared.lock().unwrap();
                    match result {
                        Ok(checksum) => {
                            if let Err(e) = g.0.record_block(index, &checksum) {
                                g.2.get_or_insert(e);
                                failed.store(true, Ordering::Relaxed);
                                return;
                            }
                            g.1.advance(ebs::BLOCK_SIZE as u64);
                            let n = uploaded.fetch_add(1, Ordering::Relaxed) + 1;
                            if kill_after.is_some_and(|k| n >= k) {
                                // SAFETY: sending ourselves SIGKILL; nothing runs after it.
                                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                            }
                        }
                        Err(e) => {
                            g.2.get_or_insert(e);
                            failed.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
    });
    let (state, mut progress, error) = shared.into_inner().unwrap();
    progress.finish();
    if let Some(e) = error {
        return Err(e.context(format!("uploading to snapshot {}; rerun the same command to resume from {}", state.snapshot_id, state.path.display())));
    }
    state.file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aggregate_is_the_sha256_of_the_raw_digests_in_block_order() {
        let d = |data: &[u8]| Sha256::digest(data).to_vec();
        let mut m = BTreeMap::new();
        m.insert(7, ebs::b64(&d(b"b")));
        m.insert(2, ebs::b64(&d(b"a")));
        let mut h = Sha256::new();
        h.update(d(b"a"));
        h.update(d(b"b"));
        assert_eq!(aggregate_checksum(&m).unwrap(), ebs::b64(&h.finalize()));
    }

    #[test]
    fn the_plan_skips_holes_and_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.img");
        // A GPT disk of 8 MiB with data in block 0 (the table) and block 9, and
        // a written-but-zero block 5.
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        let g = basalt_disk::Gpt::new(basalt_disk::Guid::derived(&["t"]), 8 << 20);
        g.write(&mut &f).unwrap();
        f.write_all_at(&vec![0u8; ebs::BLOCK_SIZE], 5 * ebs::BLOCK_SIZE as u64).unwrap();
        f.write_all_at(b"data", 9 * ebs::BLOCK_SIZE as u64 + 100).unwrap();
        let p = plan(&img).unwrap();
        assert_eq!(p.total_blocks, 16);
        assert_eq!(p.volume_gib, 1);
        // The backup GPT sits in the last block.
        assert_eq!(p.data_blocks, vec![0, 9, 15]);
    }

    #[test]
    fn tags_are_key_value() {
        assert_eq!(parse_tag("a=b=c").unwrap(), ("a".to_string(), "b=c".to_string()));
        assert!(parse_tag("novalue").is_err());
    }
}
