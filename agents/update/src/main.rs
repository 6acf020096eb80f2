//! basalt-update: the A/B update agent (basalt-update.service).
//!
//! `basalt-update` runs the service; `basalt-update write-slot` applies a
//! payload to a file or device without a machine around it (benchmarks and
//! tests on the build host).

mod state;
mod system;
mod worker;

use basalt_update::protocol::{Request, Response};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("daemon") => daemon(),
        Some("write-slot") => write_slot(&args[1..]),
        Some(other) => Err(format!("unknown command {other:?}; usage: basalt-update [daemon] | write-slot PAYLOAD TARGET SLOT [REFERENCE_USR REFERENCE_UKI]")),
    };
    if let Err(e) = result {
        eprintln!("basalt-update: error: {e}");
        std::process::exit(1);
    }
}

fn daemon() -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<worker::Command>();
    let shared = worker::Shared::new();
    let w = worker::Worker::start(shared.clone())?;
    std::thread::spawn(move || w.run(rx));
    std::fs::create_dir_all("/run/basalt").map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(basalt_update::protocol::SOCKET);
    let listener = UnixListener::bind(basalt_update::protocol::SOCKET).map_err(|e| format!("{}: {e}", basalt_update::protocol::SOCKET))?;
    // Root and the wheel group, as init's control socket.
    let _ = std::fs::set_permissions(basalt_update::protocol::SOCKET, std::fs::Permissions::from_mode(0o660));
    let path = std::ffi::CString::new(basalt_update::protocol::SOCKET).unwrap();
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    unsafe { libc::chown(path.as_ptr(), 0, 10) };
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let tx = tx.clone();
        let shared = shared.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(10)));
            if BufReader::new(&conn).take(64 << 10).read_line(&mut line).is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Status) => Response { ok: true, message: String::new(), status: Some(shared.status()) },
                Ok(req) => {
                    let (reply_tx, reply_rx) = mpsc::channel();
                    if tx.send(worker::Command { request: req, reply: reply_tx }).is_err() {
                        Response { ok: false, message: "the update worker stopped".into(), status: None }
                    } else {
                        reply_rx.recv().unwrap_or(Response { ok: false, message: "the update worker stopped".into(), status: None })
                    }
                }
                Err(e) => Response { ok: false, message: format!("bad request: {e}"), status: None },
            };
            let mut out = serde_json::to_string(&response).expect("response serializes");
            out.push('\n');
            let _ = (&conn).write_all(out.as_bytes());
        });
    }
    Ok(())
}

/// `write-slot PAYLOAD TARGET SLOT`: the apply path on the build host. The
/// payload's header and its sha256 (from PAYLOAD.sha256, as `basalt payload`
/// writes it, else computed) stand in for signed metadata.
fn write_slot(args: &[String]) -> Result<(), String> {
    use basalt_repo::payload;
    let [payload_path, target, slot, rest @ ..] = args else { return Err("usage: basalt-update write-slot PAYLOAD TARGET A|B [REFERENCE_USR REFERENCE_UKI]".into()) };
    let slot = basalt_disk::layout::Slot::parse(slot).ok_or("slot must be A or B")?;
    // Streamed from the file, as the agent streams it from the network.
    let open = || std::fs::File::open(payload_path).map_err(|e| format!("{payload_path}: {e}"));
    let header = payload::read_header(&mut std::io::BufReader::new(open()?)).map_err(|e| e.to_string())?;
    let size = open()?.metadata().map_err(|e| format!("{payload_path}: {e}"))?.len();
    let sha256 = match std::fs::read_to_string(format!("{payload_path}.sha256")).ok().and_then(|t| t.split_whitespace().next().map(str::to_string)) {
        Some(s) => s,
        None => basalt_repo::sha256_hex(&std::fs::read(payload_path).map_err(|e| format!("{payload_path}: {e}"))?),
    };
    let file = basalt_repo::FileRef { path: payload_path.clone(), size, sha256 };
    let expect = basalt_update::apply::Expect { name: &header.name, version: &header.version, usr_root_hash: &header.usr.root_hash, file: &file };
    let reference_parts = match rest {
        [usr, uki] => {
            let usr = std::fs::read(usr).map_err(|e| format!("{usr}: {e}"))?;
            let uki = std::fs::read(uki).map_err(|e| format!("{uki}: {e}"))?;
            let (kernel, initrd) = basalt_update::apply::uki_kernel_initrd(&uki)?;
            Some((usr, kernel, initrd))
        }
        [] => None,
        _ => return Err("a reference is a usr slot image and a UKI".into()),
    };
    let from_version = header.delta.as_ref().map(|d| d.version.clone()).unwrap_or_default();
    let reference = reference_parts.as_ref().map(|(usr, kernel, initrd)| payload::Reference { version: &from_version, usr, kernel, initrd });
    let started = std::time::Instant::now();
    let mut progress = |_: &str, _: u64, _: u64, _: f64| {};
    let written = basalt_update::apply::write_slot(open()?, &expect, slot, std::path::Path::new(target), reference.as_ref(), &mut progress)?;
    println!(
        "wrote {} {} to {target} (slot {}): {} bytes of usr, UKI {} bytes, {:.3} s",
        written.header.name,
        written.header.version,
        slot.letter(),
        written.header.usr.bytes,
        written.uki.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
