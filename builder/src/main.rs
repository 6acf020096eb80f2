//! `basalt`: builds, runs and ships basalt disk images.

mod boot;
mod civil;
mod console_shell;
mod fat_fixup;
mod flash;
mod formats;
mod image;
mod inputs;
mod modules;
mod payload;
mod publish;
mod repo;
mod spec;
mod stream;
mod tree;
mod usr;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "basalt", version, about = "Build, run and ship basalt images")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch the pinned Debian packages into the cache ($BASALT_CACHE, default ~/.cache/basalt).
    Fetch {
        #[arg(long, default_value = "image/inputs.lock")]
        lock: PathBuf,
    },
    /// Build a disk image from an image spec.
    Build {
        #[arg(long, default_value = "image/basalt.yaml")]
        spec: PathBuf,
        /// The lock file with the pinned inputs (default: inputs.lock next to the spec).
        #[arg(long)]
        lock: Option<PathBuf>,
        #[arg(long, short, default_value = "out/basalt.img")]
        output: PathBuf,
        /// Directory holding the static `init` binary (default: next to this program).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Development images: an ssh public key file for user `core` (repeatable).
        #[arg(long = "authorized-key")]
        authorized_key: Vec<PathBuf>,
        /// Formats to write (comma-separated). The raw image is always written
        /// to OUTPUT; others go next to it (basalt.qcow2, basalt.vmdk, ...).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "raw")]
        format: Vec<formats::OutputFormat>,
    },
    /// Convert a raw image to another format (writes OUT and OUT.sha256).
    Convert {
        image: PathBuf,
        #[arg(long, value_enum)]
        format: formats::OutputFormat,
        /// Output file (default: IMAGE with the format's extension).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Write an image to a disk: verified while streaming, first MiB written last.
    Flash {
        /// Raw image (.img) or zstd-compressed raw (.img.zst): a file or an http(s) URL.
        image: String,
        /// The disk (block device), or a file standing in for one.
        device: PathBuf,
        /// The image's sha256 (default: read from IMAGE.sha256).
        #[arg(long)]
        sha256: Option<String>,
        /// Keep this partition of the old disk (e.g. OEM) where the new table has it at the same place (repeatable).
        #[arg(long = "keep-partition", value_name = "LABEL")]
        keep_partition: Vec<String>,
        /// Write this file as cloud-config.yml into the OEM partition.
        #[arg(long, value_name = "FILE")]
        cloud_config: Option<PathBuf>,
        /// Flash an image built with `console_shell: always` (an unauthenticated root shell on the serial console) all the same.
        #[arg(long)]
        allow_console_shell: bool,
    },
    /// Publish an image to a cloud.
    Publish {
        #[command(subcommand)]
        cloud: PublishCloud,
    },
    /// Check a cloud-config (user data) file as the machine's cloud-config
    /// agent would: each problem as FILE:LINE:COLUMN: error|warning: KEY: reason.
    /// Exits 1 if anything would be rejected.
    ValidateConfig {
        file: PathBuf,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make an update payload from a built raw image (writes OUT and OUT.sha256).
    Payload {
        image: PathBuf,
        /// Output file (default: NAME-VERSION.payload, or NAME-OLD-to-VERSION.delta, next to IMAGE).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Make a delta against this older image of the same name: machines
        /// running it apply the delta to what they have.
        #[arg(long, value_name = "OLD_IMAGE")]
        from: Option<PathBuf>,
        /// zstd level.
        #[arg(long, default_value_t = payload::DEFAULT_LEVEL)]
        level: i32,
    },
    /// Keep a signed update repository of payloads and channels.
    Repo {
        #[command(subcommand)]
        cmd: repo::RepoCmd,
    },
    /// Boot an image in QEMU with OVMF; the serial console is this terminal (Ctrl-A X quits).
    Run {
        #[arg(default_value = "out/basalt.img")]
        image: PathBuf,
        /// Give the machine this user data (QEMU fw_cfg opt/org.basalt/user-data).
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
        /// Host port forwarded to the guest's ssh port.
        #[arg(long, default_value_t = 2222)]
        ssh_port: u16,
        #[arg(long, default_value_t = 1024)]
        memory_mib: u32,
        /// Boot without fw_cfg opt/org.basalt/console-shell=1, as EC2 or hardware would: an image built with
        /// `console_shell: hypervisor` then has no shell on its console.
        #[arg(long)]
        no_console_shell: bool,
    },
}

#[derive(Subcommand)]
enum PublishCloud {
    /// Upload the raw image as an EBS snapshot (EBS direct APIs) and register an AMI.
    Aws {
        #[arg(default_value = "out/basalt.img")]
        image: PathBuf,
        /// AMI name (default: image name and the start of its sha256).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, or the profile's region).
        #[arg(long)]
        region: Option<String>,
        /// Endpoint for EBS and EC2 (default: AWS_ENDPOINT_URL_EBS/_EC2, AWS_ENDPOINT_URL, or AWS).
        #[arg(long)]
        endpoint_url: Option<String>,
        /// Also copy the AMI to this region (repeatable).
        #[arg(long = "copy-to-region", value_name = "REGION")]
        copy_to_region: Vec<String>,
        /// Let this account id launch the AMI, or `all` to make it public (repeatable).
        #[arg(long = "launch-permission", value_name = "ACCOUNT|all")]
        launch_permission: Vec<String>,
        /// Tag for snapshot and AMI (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = publish::parse_tag)]
        tag: Vec<(String, String)>,
        /// Blocks uploaded at once.
        #[arg(long, default_value_t = 16)]
        parallel: usize,
        /// Print the plan and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where the resumable upload state is kept (default: IMAGE.aws-upload).
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// Publish an image built with `console_shell: always` (an unauthenticated root shell on the serial console) all the same.
        #[arg(long)]
        allow_console_shell: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("basalt: error: {e:#}");
        std::process::exit(1);
    }
}

/// Reads public key files; each line must look like an ssh public key.
fn read_authorized_keys(files: &[PathBuf]) -> Result<Option<String>> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut keys = String::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading --authorized-key {}", f.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let kind = line.split_whitespace().next().unwrap_or("");
            if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) || line.split_whitespace().count() < 2 {
                anyhow::bail!("{}:{}: not an ssh public key (expected `ssh-ed25519 AAAA... comment`)", f.display(), i + 1);
            }
            keys.push_str(line.trim());
            keys.push('\n');
        }
    }
    Ok(Some(keys))
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        _ => Ok(0),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Fetch { lock } => inputs::fetch(&inputs::Lock::load(&lock)?, &inputs::cache_dir()),
        Cmd::Build { spec, lock, output, bin_dir, format, authorized_key } => {
            let lock = lock.unwrap_or_else(|| spec.parent().unwrap_or(std::path::Path::new(".")).join("inputs.lock"));
            let bin_dir = match bin_dir {
                Some(d) => d,
                None => std::env::current_exe()?.parent().context("locating the basalt binary")?.to_path_buf(),
            };
            let authorized_keys = read_authorized_keys(&authorized_key)?;
            let r = image::build(&image::BuildOptions { spec_path: spec, lock_path: lock, output, bin_dir, epoch: source_date_epoch()?, authorized_keys })?;
            println!("built {} in {:.1} s", r.output.display(), r.seconds);
            println!("  disk          {:>8.1} MiB (sparse)", r.disk_bytes as f64 / 1048576.0);
            println!("  UKI           {:>8.1} MiB  EFI/Linux/{}", r.uki_bytes as f64 / 1048576.0, r.uki_name);
            println!("  initramfs     {:>8.1} MiB", r.initramfs_bytes as f64 / 1048576.0);
            println!("  /usr files    {:>8.1} MiB", r.usr_tree_bytes as f64 / 1048576.0);
            println!("  /usr squashfs {:>8.1} MiB", r.usr_fs_bytes as f64 / 1048576.0);
            println!("  USR-A used    {:>8.1} MiB  verity root {}", r.usr_slot_used_bytes as f64 / 1048576.0, r.verity_root_hash);
            println!("  {}", console_shell::describe(Some(r.console_shell)));
            formats::write_sha256_file(&r.output)?;
            for f in format.into_iter().filter(|f| *f != formats::OutputFormat::Raw) {
                let out = f.output_path(&r.output);
                formats::convert(&r.output, f, &out)?;
                formats::write_sha256_file(&out)?;
                println!("  {:<13} {}", f.name(), out.display());
            }
            Ok(())
        }
        Cmd::Flash { image, device, sha256, keep_partition, cloud_config, allow_console_shell } => {
            let r = flash::flash(&flash::FlashOptions { source: image, target: device.clone(), sha256, keep_partitions: keep_partition, cloud_config, allow_console_shell })?;
            println!("flashed {} in {:.1} s ({:.1} MiB/s), sha256 {}", device.display(), r.seconds, r.image_bytes as f64 / 1048576.0 / r.seconds.max(1e-3), r.sha256);
            Ok(())
        }
        Cmd::Publish { cloud: PublishCloud::Aws { image, name, description, region, endpoint_url, copy_to_region, launch_permission, tag, parallel, dry_run, state_file, allow_console_shell } } => {
            let opts = publish::AwsOptions {
                image,
                name,
                description,
                region,
                endpoint_url,
                copy_to_regions: copy_to_region,
                launch_permissions: launch_permission,
                tags: tag,
                parallel,
                dry_run,
                state_file,
                allow_console_shell,
            };
            if let Some(p) = publish::publish(&opts)? {
                println!("snapshot {}", p.snapshot_id);
                for (region, ami) in p.images {
                    println!("{region} {ami}");
                }
            }
            Ok(())
        }
        Cmd::Convert { image, format, output } => {
            let output = output.unwrap_or_else(|| format.output_path(&image));
            if std::fs::canonicalize(&output).ok().is_some_and(|o| std::fs::canonicalize(&image).ok() == Some(o)) {
                anyhow::bail!("{} would overwrite the source image; choose another --output", output.display());
            }
            formats::convert(&image, format, &output)?;
            formats::write_sha256_file(&output)?;
            println!("wrote {} ({})", output.display(), format.name());
            Ok(())
        }
        Cmd::ValidateConfig { file, json } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = basalt_cloud_config::validate(&bytes);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render(&file.display().to_string()));
            }
            if report.has_errors() {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Payload { image, output, from, level } => {
            let r = payload::make(&payload::PayloadOptions { image, output, from, level })?;
            let mib = |b: u64| b as f64 / 1048576.0;
            match &r.from_version {
                Some(old) => println!("wrote {} in {:.1} s: {} {old} -> {}", r.output.display(), r.seconds, r.name, r.version),
                None => println!("wrote {} in {:.1} s: {} {}", r.output.display(), r.seconds, r.name, r.version),
            }
            println!("  usr slot image {:>8.1} MiB", mib(r.usr_bytes));
            println!("  UKI (x2)       {:>8.1} MiB", mib(r.uki_bytes));
            println!(
                "  {:<14} {:>8.1} MiB  ({:.1}% of the {:.1} MiB it carries)",
                if r.from_version.is_some() { "delta" } else { "payload" },
                mib(r.payload_bytes),
                100.0 * r.payload_bytes as f64 / (r.usr_bytes + 2 * r.uki_bytes) as f64,
                mib(r.usr_bytes + 2 * r.uki_bytes)
            );
            println!("  sha256         {}", r.sha256);
            Ok(())
        }
        Cmd::Repo { cmd } => repo::run(cmd),
        Cmd::Run { image, user_data, ssh_port, memory_mib, no_console_shell } => {
            let state = tempfile::Builder::new().prefix("basalt-run-").tempdir()?;
            let mut cfg = basalt_vm::VmConfig::new(&image, state.path());
            if let Some(file) = user_data {
                let report = basalt_cloud_config::validate(&std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
                eprint!("{}", report.render(&file.display().to_string()));
                cfg.fw_cfg.push((basalt_cloud_config::datasource::fw_cfg::USER_DATA_NAME.into(), std::fs::canonicalize(&file)?));
            }
            cfg.ssh_port = ssh_port;
            cfg.memory_mib = memory_mib;
            cfg.console_shell = !no_console_shell;
            cfg.prepare()?;
            let accel = basalt_vm::detect_accel();
            eprintln!("basalt: booting {} ({accel:?}; ssh on 127.0.0.1:{ssh_port}; Ctrl-A X quits)", image.display());
            let status = cfg.command(accel).args(["-serial", "mon:stdio"]).status().context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
