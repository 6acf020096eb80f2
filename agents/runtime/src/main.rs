//! basalt-runtime: the container agent (`serve`), and `run --bundle DIR ID`,
//! which runs one OCI bundle in the foreground as `runc run` does (the agent
//! starts every container that way; the benchmark compares it with runc).

use std::path::PathBuf;

const USAGE: &str = "usage: basalt-runtime serve                 the agent (basalt-runtime.service)
       basalt-runtime exec --bundle DIR --pid PID [--tty] -- CMD...   run CMD in a running container
                                      (--tty: stdin is its terminal, made its controlling one)
       basalt-runtime run --bundle DIR ID     run an OCI bundle in the foreground
       basalt-runtime pull [--store DIR] [--settings FILE] REF   pull an image into a store
       basalt-runtime seccomp [default|PATH] [CAP...]   the profile resolved for a bounding set
                                      (docker's default capabilities when none are named), as
                                      the linux.seccomp of a runtime config";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["run", "--bundle", bundle, id] | ["run", id, "--bundle", bundle] => match basalt_runtime::linux::process::run(&PathBuf::from(bundle), id) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("basalt-runtime: {id}: {e}");
                std::process::exit(basalt_runtime::linux::process::SETUP_FAILED);
            }
        },
        ["seccomp", rest @ ..] => {
            let (setting, caps) = match rest.split_first() {
                Some((first, caps)) if !first.starts_with("CAP_") => (Some(*first), caps),
                _ => (None, rest),
            };
            let caps: Vec<String> = if caps.is_empty() { basalt_runtime::linux::caps::DEFAULT.iter().map(|c| c.to_string()).collect() } else { caps.iter().map(|c| c.to_string()).collect() };
            match basalt_runtime::seccomp::for_container(setting, &caps) {
                Ok(Some(seccomp)) => println!("{}", serde_json::to_string_pretty(&seccomp).expect("serialises")),
                Ok(None) => println!("null"),
                Err(e) => fail(&e),
            }
        }
        ["serve"] => {
            if let Err(e) = basalt_runtime::agent::serve(basalt_runtime::agent::Paths::default()) {
                fail(&e);
            }
        }
        ["exec", "--bundle", bundle, "--pid", pid, rest @ ..] => {
            let (tty, command) = match rest {
                ["--tty", "--", command @ ..] => (true, command),
                ["--", command @ ..] => (false, command),
                _ => usage(),
            };
            if command.is_empty() {
                usage();
            }
            let config = basalt_runtime::oci::Config::load(std::path::Path::new(bundle)).unwrap_or_else(|e| fail(&e));
            let pid: i32 = pid.parse().unwrap_or_else(|_| usage());
            let cgroup = config
                .linux
                .cgroups_path
                .as_deref()
                .map(|p| basalt_runtime::linux::cgroup::resolve(p).map(|path| basalt_runtime::linux::cgroup::Cgroup { path }))
                .transpose()
                .unwrap_or_else(|e| fail(&e));
            let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
            match basalt_runtime::linux::process::exec_in(pid, &config, cgroup.as_ref(), &command, tty) {
                Ok(code) => std::process::exit(code),
                Err(e) => {
                    eprintln!("basalt-runtime exec: {e}");
                    std::process::exit(126);
                }
            }
        }
        ["pull", rest @ ..] => {
            let mut store = PathBuf::from(basalt_runtime::store::DEFAULT_ROOT);
            let mut settings_file = PathBuf::from(basalt_runtime::settings::SETTINGS_FILE);
            let mut rest = rest;
            let reference = loop {
                match rest {
                    ["--store", dir, tail @ ..] => (store, rest) = (PathBuf::from(dir), tail),
                    ["--settings", file, tail @ ..] => (settings_file, rest) = (PathBuf::from(file), tail),
                    [reference] => break *reference,
                    _ => usage(),
                }
            };
            let settings = basalt_runtime::settings::Settings::load(&settings_file).unwrap_or_else(|e| fail(&e));
            let store = basalt_runtime::store::Store::open(&store).unwrap_or_else(|e| fail(&e.to_string()));
            match basalt_runtime::pull::pull(&store, &settings, reference) {
                Ok((image, report)) => println!(
                    "{} {}: {} bytes downloaded in {:.2} s ({} resumed), {} layers unpacked in {:.2} s, {} reused",
                    image.reference, image.manifest_digest, report.downloaded, report.seconds, report.resumed, report.layers_unpacked, report.unpack_seconds, report.layers_reused
                ),
                Err(e) => fail(&e.to_string()),
            }
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn fail(message: &str) -> ! {
    eprintln!("basalt-runtime: {message}");
    std::process::exit(1)
}
