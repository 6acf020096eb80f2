//! The control socket's requests (see `crate::api`).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{say, Agent, Record};
use crate::api::{send, ImageInfo, Reply, Request};
use crate::reference::Reference;

pub fn listen(socket: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|e| format!("listening on {}: {e}", socket.display()))?;
    // Like init's socket: root and the wheel group.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660));
    if let Some(gid) = std::fs::read_to_string("/etc/group").ok().and_then(|t| t.lines().find_map(|l| l.strip_prefix("wheel:").and_then(|r| r.split(':').nth(1)).and_then(|g| g.parse::<u32>().ok()))) {
        let c = crate::linux::sys::cpath(socket);
        unsafe { libc::chown(c.as_ptr(), 0, gid) };
    }
    Ok(listener)
}

pub fn accept(agent: Arc<Agent>, listener: UnixListener) {
    for stream in listener.incoming().flatten() {
        let agent = agent.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let reply = handle(&agent, &mut stream);
            let _ = send(&mut stream, &reply);
            // An exec's input thread may hold a copy of the connection.
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// The request line; what follows it (an exec's input) stays in `reader`.
fn read_request(reader: &mut BufReader<UnixStream>) -> Result<Request, String> {
    reader.get_ref().set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    let mut line = String::new();
    reader.by_ref().take(1 << 20).read_line(&mut line).map_err(|e| e.to_string())?;
    serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))
}

/// Handles one request; the returned reply is the last line sent.
fn handle(agent: &Arc<Agent>, stream: &mut UnixStream) -> Reply {
    let mut reader = match stream.try_clone() {
        Ok(s) => BufReader::new(s),
        Err(e) => return Reply::Error(e.to_string()),
    };
    let request = match read_request(&mut reader) {
        Ok(r) => r,
        Err(e) => return Reply::Error(e),
    };
    let result = match request {
        Request::Ps => return Reply::Containers(agent.containers.lock().unwrap().values().map(|s| s.status()).collect()),
        Request::Inspect { name } => return inspect(agent, &name).map(|i| Reply::Inspect(Box::new(i))).unwrap_or_else(Reply::Error),
        Request::Images => return images_list(agent).map(Reply::Images).unwrap_or_else(Reply::Error),
        Request::Pull { reference } => {
            let store = agent.store.lock().unwrap();
            crate::pull::pull(&store, &agent.settings(), &reference)
                .map(|(image, report)| {
                    format!(
                        "{} {}: {} bytes downloaded in {:.2} s ({} resumed), {} layers unpacked, {} reused",
                        image.reference, image.manifest_digest, report.downloaded, report.seconds, report.resumed, report.layers_unpacked, report.layers_reused
                    )
                })
                .map_err(|e| e.to_string())
        }
        Request::RemoveImage { reference } => remove_image(agent, &reference),
        Request::Prune => {
            let keep: Vec<_> = agent.images_in_use().into_iter().filter_map(|(_, digest, _)| digest).collect();
            let store = agent.store.lock().unwrap();
            store.prune(&keep).map(|p| format!("removed {} blobs and {} unpacked layers, {} bytes", p.blobs.len(), p.layers.len(), p.bytes)).map_err(|e| e.to_string())
        }
        Request::Run { spec } => run(agent, spec),
        Request::Start { name } => with_container(agent, &name, |s| {
            s.start_again();
            Ok(format!("starting {name}"))
        }),
        Request::Stop { name } => with_container(agent, &name, |s| {
            let limit = Duration::from_secs(agent.settings().stop_timeout_seconds + 10);
            if s.stop_and_wait(limit) {
                Ok(format!("stopped {name}"))
            } else {
                Err(format!("{name} did not stop within {} s", limit.as_secs()))
            }
        }),
        Request::Remove { name, force } => agent.remove(&name, force).map(|_| format!("removed {name}")),
        Request::Exec { name, args, interactive, tty } => return super::exec::exec(agent, stream, reader, &name, &args, interactive, tty),
    };
    match result {
        Ok(text) => Reply::Ok(text),
        Err(e) => Reply::Error(e),
    }
}

fn with_container(agent: &Agent, name: &str, f: impl FnOnce(&super::Supervised) -> Result<String, String>) -> Result<String, String> {
    let supervised = agent.containers.lock().unwrap().get(name).cloned().ok_or_else(|| format!("no container {name:?}"))?;
    f(&supervised)
}

fn images_list(agent: &Agent) -> Result<Vec<ImageInfo>, String> {
    let in_use = agent.images_in_use();
    let store = agent.store.lock().unwrap();
    let mut list = Vec::new();
    for (reference, record) in store.references().map_err(|e| e.to_string())? {
        let size = store.image_by_digest(&reference, &record.manifest, record.pulled).map(|i| i.size()).unwrap_or(0);
        let used_by = in_use
            .iter()
            .filter(|(_, digest, image)| digest.as_ref() == Some(&record.manifest) || Reference::parse(image).is_ok_and(|r| r.to_string() == reference))
            .map(|(name, _, _)| name.clone())
            .collect();
        list.push(ImageInfo { reference, digest: record.manifest.to_string(), size, pulled: record.pulled, used_by });
    }
    Ok(list)
}

fn remove_image(agent: &Agent, text: &str) -> Result<String, String> {
    let reference = Reference::parse(text).map_err(|e| e.to_string())?.to_string();
    let users: Vec<String> = images_list(agent)?.into_iter().filter(|i| i.reference == reference).flat_map(|i| i.used_by).collect();
    if !users.is_empty() {
        return Err(format!("{reference} is used by container(s) {}; remove them first", users.join(", ")));
    }
    let store = agent.store.lock().unwrap();
    match store.untag(&reference).map_err(|e| e.to_string())? {
        true => Ok(format!("untagged {reference} (`basaltctl images prune` frees its space)")),
        false => Err(format!("no image {reference}")),
    }
}

fn run(agent: &Arc<Agent>, mut spec: crate::spec::ContainerSpec) -> Result<String, String> {
    spec.source = "basaltctl".into();
    spec.check()?;
    if agent.containers.lock().unwrap().contains_key(&spec.name) {
        return Err(format!("a container named {} exists; remove it first", spec.name));
    }
    if spec.network == "bridge" {
        // Another container that is to run with the same host port: one of
        // the two could not start.
        for other in agent.containers.lock().unwrap().values().map(|s| s.record()).filter(|r| r.desired_running && r.spec.network == "bridge") {
            if let Some(port) = spec.ports.iter().find(|p| other.spec.ports.iter().any(|q| crate::network::ports::overlap(p, q))) {
                return Err(format!("ports: host port {} is already published by container {}", crate::network::ports::describe(port), other.spec.name));
            }
        }
    }
    let name = spec.name.clone();
    let record = Record { spec, desired_running: true, image_digest: None };
    agent.save_record(&record)?;
    agent.adopt(record);
    say(&format!("{name}: created by basaltctl run"));
    Ok(format!("started {name}"))
}

fn inspect(agent: &Arc<Agent>, name: &str) -> Result<crate::api::Inspection, String> {
    let supervised = agent.containers.lock().unwrap().get(name).cloned().ok_or_else(|| format!("no container {name:?}"))?;
    let spec = supervised.record().spec;
    let capabilities = crate::bundle::capabilities_of(&spec)?;
    let (device_rules, _) = crate::bundle::devices_of(&spec)?;
    let seccomp = spec.seccomp.clone().unwrap_or_else(|| if spec.privileged { crate::seccomp::UNCONFINED.into() } else { crate::seccomp::DEFAULT.into() });
    Ok(crate::api::Inspection { status: supervised.status(), spec, capabilities, seccomp, device_rules })
}
