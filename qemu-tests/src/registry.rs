//! A real OCI registry for tests and benchmarks: Debian's `docker-registry`
//! on a free loopback port with its storage in a temporary directory
//! (anonymous, htpasswd basic auth, or bearer tokens from a small token
//! service the harness runs), and test images made here from the static
//! busybox of the pinned `busybox-static` package, written as an OCI layout
//! and pushed with `skopeo`.

use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub enum Auth {
    Anonymous,
    /// htpasswd (bcrypt) users: basic authentication.
    Basic {
        user: String,
        password: String,
    },
    /// Docker token authentication: a token service on loopback hands out
    /// RS256 tokens for these credentials, which the registry checks against
    /// the service's certificate.
    Token {
        user: String,
        password: String,
    },
}

pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
    _token_service: Option<std::thread::JoinHandle<()>>,
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16 | (*chunk.get(1).unwrap_or(&0) as u32) << 8 | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64url(bytes: &[u8]) -> String {
    base64(bytes).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    pub fn start(auth: Auth) -> Result<Registry> {
        let dir = tempfile::Builder::new().prefix("basalt-registry-").tempdir()?;
        let port = free_port()?;
        let mut auth_yaml = String::new();
        let mut credentials = None;
        let mut token_service = None;
        match auth {
            Auth::Anonymous => {}
            Auth::Basic { user, password } => {
                let hash = Command::new("python3")
                    .args(["-W", "ignore", "-c", "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))", &password])
                    .output()
                    .context("python3 (for a bcrypt htpasswd entry)")?;
                let hash = String::from_utf8(hash.stdout)?.trim().to_string();
                if !hash.starts_with("$2") {
                    bail!("python3 made no bcrypt hash");
                }
                std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n"))?;
                auth_yaml = format!("auth:\n  htpasswd:\n    realm: basalt-test\n    path: {}\n", dir.path().join("htpasswd").display());
                credentials = Some((user, password));
            }
            Auth::Token { user, password } => {
                let key = dir.path().join("token.key");
                let cert = dir.path().join("token.pem");
                let status = Command::new("openssl")
                    .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=basalt-test-token"])
                    .arg("-keyout")
                    .arg(&key)
                    .arg("-out")
                    .arg(&cert)
                    .stderr(Stdio::null())
                    .status()
                    .context("openssl")?;
                if !status.success() {
                    bail!("openssl could not make the token service's key");
                }
                let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output()?.stdout;
                let token_port = free_port()?;
                let listener = TcpListener::bind(("127.0.0.1", token_port))?;
                let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
                let key_path = key.clone();
                token_service = Some(std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let _ = serve_token(stream, &expected, &key_path, &der);
                    }
                }));
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{token_port}/token\n    service: basalt-test-registry\n    issuer: basalt-test-issuer\n    rootcertbundle: {}\n",
                    cert.display()
                );
                credentials = Some((user, password));
            }
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            dir.path().join("storage").display()
        );
        std::fs::write(dir.path().join("config.yml"), config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (Debian package docker-registry; `make deps` installs it)")?;
        let registry = Registry { child, port, dir, credentials, _token_service: token_service };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("docker-registry did not listen on {port}: {}", std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `tag` of an OCI layout as NAME:TAG (`--all`: an index with all its images).
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> Result<()> {
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some((user, password)) = &self.credentials {
            command.arg(format!("--dest-creds={user}:{password}"));
        }
        let output = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.address()))
            .output()
            .context("running skopeo (Debian package skopeo; `make deps` installs it)")?;
        if !output.status.success() {
            bail!("skopeo copy failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    /// Where the registry keeps a blob's bytes (for tests that damage it).
    pub fn blob_file(&self, digest_hex: &str) -> PathBuf {
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&digest_hex[..2]).join(digest_hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request of the token service: checks basic credentials, answers a
/// token for the scope asked for.
fn serve_token(stream: TcpStream, expected: &str, key: &Path, cert_der: &[u8]) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") && value.trim() == expected {
                authorized = true;
            }
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let mut scopes = Vec::new();
    let mut service = String::new();
    for pair in path.split_once('?').map(|(_, q)| q).unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = url_decode(v);
        match k {
            "scope" => scopes.push(v),
            "service" => service = v,
            _ => {}
        }
    }
    let mut out = stream;
    if !authorized {
        out.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        return Ok(());
    }
    let access: Vec<String> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<String> = actions.split(',').map(|a| format!("\"{a}\"")).collect();
            Some(format!(r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#, actions.join(",")))
        })
        .collect();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let header = format!(r#"{{"typ":"JWT","alg":"RS256","x5c":["{}"]}}"#, base64(cert_der));
    let claims =
        format!(r#"{{"iss":"basalt-test-issuer","sub":"tester","aud":"{service}","exp":{},"nbf":{},"iat":{},"jti":"{}","access":[{}]}}"#, now + 600, now - 60, now - 60, now, access.join(","));
    let signing_input = format!("{}.{}", base64url(header.as_bytes()), base64url(claims.as_bytes()));
    let mut sign = Command::new("openssl").args(["dgst", "-sha256", "-sign"]).arg(key).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
    sign.stdin.take().unwrap().write_all(signing_input.as_bytes())?;
    let mut signature = Vec::new();
    sign.stdout.take().unwrap().read_to_end(&mut signature)?;
    sign.wait()?;
    let body = format!(r#"{{"token":"{signing_input}.{}"}}"#, base64url(&signature));
    out.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())?;
    Ok(())
}

fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The static busybox of the pinned busybox-static package (from the input cache).
pub fn busybox() -> Result<Vec<u8>> {
    let cache = std::env::var_os("BASALT_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/basalt"));
    let debs = cache.join("debs");
    let deb = std::fs::read_dir(&debs)
        .with_context(|| format!("{} (run `make inputs` to fetch the pinned packages)", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("busybox-static_")))
        .with_context(|| format!("no busybox-static package in {}", debs.display()))?;
    for entry in basalt_deb::read_data(&deb)? {
        if let (true, basalt_deb::EntryKind::File(data)) = (entry.path == "/bin/busybox", entry.kind) {
            return Ok(data);
        }
    }
    bail!("{}: no /bin/busybox", deb.display())
}

/// Applets linked in test images' /bin.
pub const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "ls", "sleep", "id", "hostname", "head", "dd", "mount", "ps", "grep", "readlink", "test", "true", "false", "kill", "touch", "mkdir", "env", "pwd", "wc", "yes", "rm", "stat",
    "tail",
];

pub enum LayerFile {
    File { path: String, mode: u32, data: Vec<u8> },
    Dir { path: String },
    Symlink { path: String, target: String },
}

/// A tar layer of these entries (owner root, fixed mtime).
pub fn tar_layer(entries: &[LayerFile]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        match entry {
            LayerFile::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, &data[..])?;
            }
            LayerFile::Dir { path } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            LayerFile::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// busybox in /bin with its applets, plus /etc/passwd and /tmp.
pub fn busybox_layer(busybox: &[u8]) -> Result<Vec<u8>> {
    let mut entries = vec![
        LayerFile::Dir { path: "bin".into() },
        LayerFile::File { path: "bin/busybox".into(), mode: 0o755, data: busybox.to_vec() },
        LayerFile::Dir { path: "etc".into() },
        LayerFile::File { path: "etc/passwd".into(), mode: 0o644, data: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n".to_vec() },
        LayerFile::File { path: "etc/group".into(), mode: 0o644, data: b"root:x:0:\nnogroup:x:65534:\n".to_vec() },
        LayerFile::Dir { path: "tmp".into() },
        LayerFile::Dir { path: "root".into() },
    ];
    for applet in APPLETS {
        entries.push(LayerFile::Symlink { path: format!("bin/{applet}"), target: "busybox".into() });
    }
    tar_layer(&entries)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// What the image config says about running it.
#[derive(Default, Clone)]
pub struct RunConfig {
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// The digests of an image written into a layout.
pub struct WrittenImage {
    pub manifest: String,
    pub manifest_size: usize,
    pub config: String,
    pub layers: Vec<String>,
    pub diff_ids: Vec<String>,
}

/// An OCI image layout under construction (blobs written as they come).
pub struct Layout {
    pub dir: PathBuf,
    tags: Vec<(String, String, &'static str, usize)>,
}

fn json_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap()
}

impl Layout {
    pub fn new(dir: &Path) -> Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout { dir: dir.to_path_buf(), tags: Vec::new() })
    }

    pub fn blob(&self, bytes: &[u8]) -> Result<String> {
        let hex = sha256_hex(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes)?;
        Ok(hex)
    }

    /// Writes an image (layers given uncompressed) for `architecture`; not tagged.
    pub fn image(&self, layers: &[(Vec<u8>, Compression)], run: &RunConfig, architecture: &str) -> Result<WrittenImage> {
        let mut descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_digests = Vec::new();
        for (tar, compression) in layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            let (compressed, media_type) = match compression {
                Compression::Gzip => {
                    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    encoder.write_all(tar)?;
                    (encoder.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
                }
                Compression::Zstd => (zstd::encode_all(&tar[..], 3)?, "application/vnd.oci.image.layer.v1.tar+zstd"),
            };
            let hex = self.blob(&compressed)?;
            layer_digests.push(format!("sha256:{hex}"));
            descriptors.push(format!(r#"{{"mediaType":"{media_type}","digest":"sha256:{hex}","size":{}}}"#, compressed.len()));
        }
        let config = format!(
            r#"{{"architecture":"{architecture}","os":"linux","config":{{"Env":{},"Entrypoint":{},"Cmd":{},"WorkingDir":"{}","User":"{}"}},"rootfs":{{"type":"layers","diff_ids":{}}}}}"#,
            json_strings(&run.env),
            if run.entrypoint.is_empty() { "null".to_string() } else { json_strings(&run.entrypoint) },
            json_strings(&run.cmd),
            run.working_dir,
            run.user,
            json_strings(&diff_ids)
        );
        let config_hex = self.blob(config.as_bytes())?;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descriptors.join(",")
        );
        let manifest_hex = self.blob(manifest.as_bytes())?;
        Ok(WrittenImage { manifest: format!("sha256:{manifest_hex}"), manifest_size: manifest.len(), config: format!("sha256:{config_hex}"), layers: layer_digests, diff_ids })
    }

    pub fn tag_manifest(&mut self, tag: &str, image: &WrittenImage) {
        self.tags.push((tag.to_string(), image.manifest.clone(), "application/vnd.oci.image.manifest.v1+json", image.manifest_size));
    }

    /// Tags an image index over (architecture, image) pairs.
    pub fn tag_index(&mut self, tag: &str, images: &[(&str, &WrittenImage)]) -> Result<String> {
        let manifests: Vec<String> = images
            .iter()
            .map(|(arch, image)| {
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"}}}}"#,
                    image.manifest, image.manifest_size
                )
            })
            .collect();
        let index = format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#, manifests.join(","));
        let hex = self.blob(index.as_bytes())?;
        self.tags.push((tag.to_string(), format!("sha256:{hex}"), "application/vnd.oci.image.index.v1+json", index.len()));
        Ok(format!("sha256:{hex}"))
    }

    /// Writes index.json with every tag so far.
    pub fn finish(&self) -> Result<()> {
        let manifests: Vec<String> = self
            .tags
            .iter()
            .map(|(tag, digest, media_type, size)| format!(r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#))
            .collect();
        std::fs::write(self.dir.join("index.json"), format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, manifests.join(",")))?;
        Ok(())
    }
}
