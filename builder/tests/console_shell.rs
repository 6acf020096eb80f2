//! An image built with `console_shell: always` (an unauthenticated root shell
//! on the serial console of every machine it boots) is refused by `basalt
//! flash` and `basalt publish aws` unless `--allow-console-shell` is given,
//! before anything is written or sent; with the flag it goes through. Both
//! read the setting from the image (its UKI's command line), not from a spec.
//! Publishing runs against a local moto server (PyPI `moto[server]`).

use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn basalt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The default spec with `console_shell: always`, built into `dir`.
fn always_image(dir: &Path) -> PathBuf {
    let spec = std::fs::read_to_string(repo().join("image/basalt.yaml")).unwrap();
    assert!(spec.contains("\nconsole_shell: hypervisor\n"), "the default spec is expected to say console_shell: hypervisor");
    // Beside the default spec's own files, which it names relative to itself.
    std::os::unix::fs::symlink(repo().join("image/rootfs"), dir.join("rootfs")).unwrap();
    std::fs::write(dir.join("always.yaml"), spec.replace("\nconsole_shell: hypervisor\n", "\nconsole_shell: always\n")).unwrap();
    let img = dir.join("always.img");
    let o = basalt().args(["build", "--spec"]).arg(dir.join("always.yaml")).arg("--lock").arg(repo().join("image/inputs.lock")).arg("--output").arg(&img).output().unwrap();
    assert!(o.status.success(), "build failed: {}", text(&o));
    assert!(text(&o).contains("console shell: ALWAYS"), "{}", text(&o));
    img
}

fn marked_disk(path: &Path, bytes: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    f.write_all_at(&[0xa5; 4096], 0).unwrap();
}

fn untouched(path: &Path) -> bool {
    let mut head = [0u8; 4096];
    std::fs::File::open(path).unwrap().read_exact_at(&mut head, 0).unwrap();
    head.iter().all(|&b| b == 0xa5)
}

#[test]
fn flash_refuses_an_always_image_untouched_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let img = always_image(dir.path());
    let bytes = std::fs::metadata(&img).unwrap().len();
    let disk = dir.path().join("disk.raw");
    marked_disk(&disk, bytes);

    let o = basalt().arg("flash").arg(&img).arg(&disk).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "flashed an always image without --allow-console-shell: {t}");
    assert!(t.contains("console shell: ALWAYS") && t.contains("console_shell: always") && t.contains("--allow-console-shell"), "{t}");
    assert!(untouched(&disk), "a refused flash must not touch the target");

    // Compressed, the same: read before the target is touched.
    let zst = dir.path().join("always.img.zst");
    let o = basalt().arg("convert").arg(&img).args(["--format", "raw.zst", "-o"]).arg(&zst).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = basalt().arg("flash").arg(&zst).arg(&disk).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("--allow-console-shell"), "{}", text(&o));
    assert!(untouched(&disk), "a refused flash must not touch the target");

    // Allowed, it is flashed, and says what it flashed.
    let o = basalt().arg("flash").arg(&img).arg(&disk).arg("--allow-console-shell").output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("console shell: ALWAYS"), "{}", text(&o));
    let o = Command::new("cmp").arg(&img).arg(&disk).output().unwrap();
    assert!(o.status.success(), "the disk is not the image: {}", text(&o));
}

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
            .expect("moto_server not found: install it with `pip install 'moto[server]'` (make deps)");
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

fn publish(moto: &Moto, image: &Path, args: &[&str], log: &Path) -> Output {
    let mut cmd = basalt();
    cmd.args(["publish", "aws"]).arg(image).args(args).args(["--endpoint-url", &moto.url]);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("HOME", log.parent().unwrap());
    cmd.envs([("AWS_ACCESS_KEY_ID", "AKIDTEST"), ("AWS_SECRET_ACCESS_KEY", "secret"), ("AWS_REGION", "us-east-1")]);
    cmd.env("BASALT_AWS_REQUEST_LOG", log);
    cmd.output().unwrap()
}

#[test]
fn publish_refuses_an_always_image_before_sending_anything_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let img = always_image(dir.path());
    let moto = Moto::start();
    let log = dir.path().join("requests.jsonl");

    for args in [&["--dry-run"][..], &[]] {
        let o = publish(&moto, &img, args, &log);
        let t = text(&o);
        assert!(!o.status.success(), "published an always image without --allow-console-shell ({args:?}): {t}");
        assert!(t.contains("console shell: ALWAYS") && t.contains("console_shell: always") && t.contains("--allow-console-shell") && t.contains("EC2"), "{t}");
        assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty(), "a refused publish sent requests");
        assert!(!dir.path().join("always.img.aws-upload").exists(), "a refused publish left upload state");
    }

    let o = publish(&moto, &img, &["--allow-console-shell"], &log);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("console shell: ALWAYS"), "{t}");
    let ami = String::from_utf8_lossy(&o.stdout).lines().find_map(|l| l.strip_prefix("us-east-1 ").map(str::to_string)).unwrap_or_default();
    assert!(ami.starts_with("ami-"), "{t}");
}
