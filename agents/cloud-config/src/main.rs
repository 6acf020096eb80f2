//! basalt-cloud-config: finds this machine's user data, checks it, and
//! applies it to the root. Runs before the other services at every boot.
//!
//!   basalt-cloud-config [apply]     find, validate, apply (the boot-time job)
//!   basalt-cloud-config validate F  check a file, print each problem
//!   basalt-cloud-config show [F]    what the user data says, after substitution
//!
//! Exit status: 0 unless something is fatal (the root is missing). Rejected
//! keys are logged, never fatal: a machine with bad user data must still
//! boot and be reachable.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use basalt_cloud_config::apply::{Applier, ProcessRunner, Root};
use basalt_cloud_config::datasource::{self, Environment, Retry};
use basalt_cloud_config::metadata::{self, Metadata};
use basalt_cloud_config::status::{Status, STATUS_FILE};
use basalt_cloud_config::supervisor::RequestDir;
use basalt_cloud_config::{parse_user_data, Problem, UserData};

#[derive(Parser)]
#[command(name = "basalt-cloud-config", about = "Find, check and apply this machine's user data")]
struct Cli {
    /// The root to configure.
    #[arg(long, default_value = "/", global = true)]
    root: PathBuf,
    /// Where sysfs is (block devices, fw_cfg, DMI).
    #[arg(long, default_value = "/sys", global = true)]
    sys: PathBuf,
    /// Where device nodes are.
    #[arg(long, default_value = "/dev", global = true)]
    dev: PathBuf,
    /// The kernel command line to read.
    #[arg(long, default_value = "/proc/cmdline", global = true)]
    cmdline: PathBuf,
    /// Ask this EC2-style metadata service (default: 169.254.169.254, on EC2 only).
    #[arg(long, global = true)]
    imds_url: Option<String>,
    /// Attempts per network request while the network comes up.
    #[arg(long, default_value_t = 10, global = true)]
    retries: u32,
    /// Never take a temporary DHCP lease for the network sources (`apply`
    /// takes one when there is no default route yet; `show` never does).
    #[arg(long, global = true)]
    no_dhcp: bool,
    /// Use this file as the user data instead of looking for a datasource.
    #[arg(long, global = true)]
    user_data: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Find the user data, check it and apply it to the root (the default).
    Apply,
    /// Check a user-data file; print each problem with its line and column.
    Validate {
        file: PathBuf,
        /// Print the problems as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print what the user data says (from FILE or the datasources), as JSON.
    Show { file: Option<PathBuf> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None | Some(Command::Apply) => apply(&cli),
        Some(Command::Validate { file, json }) => validate(file, *json),
        Some(Command::Show { file }) => show(&cli, file.as_ref()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cloud-config: fatal: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn environment(cli: &Cli) -> Environment {
    Environment {
        sys: cli.sys.clone(),
        dev: cli.dev.clone(),
        cmdline: cli.cmdline.clone(),
        imds_url: cli.imds_url.clone(),
        retry: Retry { attempts: cli.retries, ..Retry::default() },
        ephemeral_dhcp: !cli.no_dhcp && matches!(cli.command, None | Some(Command::Apply)),
    }
}

/// User data with where it came from, OEM defaults merged in first.
struct Gathered {
    source: String,
    raw: Vec<u8>,
    user_data: UserData,
    metadata: Metadata,
}

/// The user data and what went wrong finding it (datasources that were
/// there but failed); `None` when no source had anything.
fn gather(cli: &Cli, file: Option<&PathBuf>) -> Result<(Option<Gathered>, Vec<String>)> {
    if let Some(file) = file.or(cli.user_data.as_ref()) {
        let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let user_data = parse_user_data(&raw);
        return Ok((Some(Gathered { source: format!("file {}", file.display()), raw, user_data, metadata: Metadata::default() }), Vec::new()));
    }
    let discovery = datasource::discover(&environment(cli));
    for note in &discovery.notes {
        eprintln!("cloud-config: {note}");
    }
    if discovery.oem.is_none() && discovery.user.is_none() {
        return Ok((None, discovery.errors));
    }
    let mut gathered = Gathered { source: String::new(), raw: Vec::new(), user_data: UserData::default(), metadata: Metadata::default() };
    let mut sources = Vec::new();
    for (found, label) in [(discovery.oem, "oem"), (discovery.user, "user data")] {
        let Some(found) = found else { continue };
        sources.push(found.source.clone());
        let raw = found.user_data.unwrap_or_default();
        let mut parsed = parse_user_data(&raw);
        for problem in &mut parsed.report.problems {
            if label == "oem" {
                problem.part = Some(match problem.part.take() {
                    Some(part) => format!("oem {part}"),
                    None => "oem".to_string(),
                });
            }
        }
        gathered.user_data.config.merge(parsed.config);
        gathered.user_data.scripts.extend(parsed.scripts);
        gathered.user_data.report.problems.extend(parsed.report.problems);
        gathered.metadata.fill_from(found.metadata);
        gathered.raw.extend_from_slice(&raw);
    }
    gathered.source = sources.join(", ");
    Ok((Some(gathered), discovery.errors))
}

fn apply(cli: &Cli) -> Result<ExitCode> {
    if !cli.root.is_dir() {
        bail!("the root {} is not a directory", cli.root.display());
    }
    let root = Root::new(&cli.root);
    let (gathered, datasource_errors) = gather(cli, None)?;
    let Some(mut gathered) = gathered else {
        let status = Status { source: "none".into(), datasource_errors, ..Status::default() };
        log_lines(&status.lines());
        keep(&root, &status);
        return Ok(ExitCode::SUCCESS);
    };
    let instance_id = metadata::instance_id(&gathered.metadata, &gathered.raw);
    gathered.metadata.instance_id = Some(instance_id.clone());
    let mut status = Status {
        source: gathered.source.clone(),
        bytes: gathered.raw.len(),
        instance_id,
        datasource_errors,
        problems: gathered.user_data.report.problems.clone(),
        changes: Vec::new(),
        failures: Vec::new(),
    };
    // Before applying: commands may take a while, and their output follows.
    log_lines(&status.found_lines());

    let mut supervisor = RequestDir::new(&cli.root);
    let mut runner = ProcessRunner::default();
    let live = cli.root == std::path::Path::new("/");
    let mut applier = Applier { root: root.clone(), supervisor: &mut supervisor, runner: &mut runner, live };
    let log = applier.apply(&gathered.user_data, &gathered.metadata);
    status.changes = log.changes;
    status.failures = log.failures;
    log_lines(&status.outcome_lines());
    keep(&root, &status);
    Ok(ExitCode::SUCCESS)
}

fn log_lines(lines: &[String]) {
    for line in lines {
        eprintln!("cloud-config: {line}");
    }
}

/// Keeps the run for `basaltctl config show` and for tests that look at a
/// machine from outside.
fn keep(root: &Root, status: &Status) {
    let json = serde_json::to_string_pretty(status).unwrap_or_default() + "\n";
    if let Err(error) = root.write(STATUS_FILE, json.as_bytes(), 0o644, 0, 0) {
        eprintln!("cloud-config: failed: writing {STATUS_FILE}: {error}");
    }
}

fn validate(file: &PathBuf, json: bool) -> Result<ExitCode> {
    let raw = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let report = basalt_cloud_config::validate(&raw);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render(&file.display().to_string()));
    }
    Ok(if report.has_errors() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[derive(Serialize)]
struct Shown<'a> {
    source: &'a str,
    metadata: &'a Metadata,
    config: &'a basalt_cloud_config::config::CloudConfig,
    scripts: &'a [basalt_cloud_config::validate::Script],
    problems: &'a [Problem],
}

fn show(cli: &Cli, file: Option<&PathBuf>) -> Result<ExitCode> {
    let (gathered, errors) = gather(cli, file)?;
    for error in &errors {
        eprintln!("cloud-config: datasource failed: {error}");
    }
    let Some(gathered) = gathered else {
        println!("no user data found");
        return Ok(ExitCode::SUCCESS);
    };
    let mut config = gathered.user_data.config.clone();
    config.substitute(&|text| gathered.metadata.substitute(text));
    let shown = Shown { source: &gathered.source, metadata: &gathered.metadata, config: &config, scripts: &gathered.user_data.scripts, problems: &gathered.user_data.report.problems };
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(ExitCode::SUCCESS)
}
