//! TLS with client certificates: certificates made by `openssl` (an
//! implementation other than ours), a store with a plain loopback listener
//! and an `https://` one, and a rustls client. Only a client whose
//! certificate chains to `tls_client_ca` gets an answer; configurations that
//! cannot work are refused at start, naming the file or the field.

use basalt_store::client::{Client, SetOptions};
use basalt_store::harness::StoreProcess;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const STORE: &str = env!("CARGO_BIN_EXE_basalt-store");

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap_or_else(|e| panic!("running openssl (Debian package openssl): {e}"));
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`NAME-ca.pem`/`.key`).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
}

/// A certificate `NAME.pem`/`NAME.key` signed by CA `ca`, with extensions.
fn leaf(dir: &Path, ca: &str, name: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
    openssl(dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", &format!("/CN={name}"), "-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr")]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "cluster");
        ca(d, "rogue");
        leaf(d, "cluster", "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
        leaf(d, "cluster", "client", "extendedKeyUsage=clientAuth\n");
        leaf(d, "rogue", "intruder", "extendedKeyUsage=clientAuth\n");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn path_str(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn tls_args(&self) -> Vec<String> {
        ["--tls-cert", "server.pem", "--tls-key", "server.key", "--tls-client-ca", "cluster-ca.pem"]
            .iter()
            .enumerate()
            .map(|(i, a)| if i % 2 == 1 { self.path_str(a) } else { a.to_string() })
            .collect()
    }

    /// A client trusting the cluster CA, presenting `identity` (`NAME` of
    /// `NAME.pem`/`NAME.key`) if given.
    fn client(&self, identity: Option<&str>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("cluster-ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider())).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.path(&format!("{name}.pem"))).unwrap().map(Result::unwrap).collect();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Arc::new(config)
    }
}

/// One HTTP/1.1 request over TLS; the whole answer, or the error that ended
/// the connection.
fn https(addr: &str, config: Arc<rustls::ClientConfig>, method: &str, path: &str) -> std::io::Result<String> {
    let conn = rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).map_err(std::io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A close without TLS's close_notify, after a whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn only_clients_with_a_certificate_from_the_ca_get_answers() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let mut args = vec!["--listen".to_string(), "https://127.0.0.1:0".to_string()];
    args.extend(pki.tls_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let store = StoreProcess::start(Path::new(STORE), data.path(), &args);
    let addr = store.tls_endpoint.clone().expect("a TLS listener");

    // A client with a certificate from the cluster CA: the whole API.
    let good = pki.client(Some("client"));
    let answer = https(&addr, good.clone(), "PUT", "/v2/keys/over/tls?value=yes").unwrap();
    assert!(answer.starts_with("HTTP/1.1 201 Created") && answer.contains(r#""value":"yes""#), "{answer}");
    let answer = https(&addr, good.clone(), "GET", "/v2/keys/nope").unwrap();
    assert!(answer.starts_with("HTTP/1.1 404") && answer.contains(r#""errorCode":100"#), "{answer}");
    // /v2/members names the TLS listener with its scheme.
    let answer = https(&addr, good.clone(), "GET", "/v2/members").unwrap();
    assert!(answer.contains(&format!("https://{addr}")), "{answer}");
    // The same keyspace on the plain loopback listener.
    let mut plain = Client::new(store.endpoint.clone());
    assert_eq!(plain.get("/over/tls", false).unwrap().event.node.value.as_deref(), Some("yes"));
    plain.set("/over/plain", "1", &SetOptions::default()).unwrap();
    assert!(https(&addr, good, "GET", "/v2/keys/over/plain").unwrap().contains(r#""value":"1""#));

    // No client certificate, or one from another CA: no answer at all.
    let e = https(&addr, pki.client(None), "GET", "/v2/keys/over/tls").unwrap_err().to_string();
    assert!(e.contains("CertificateRequired"), "{e}");
    let e = https(&addr, pki.client(Some("intruder")), "GET", "/v2/keys/over/tls").unwrap_err().to_string();
    assert!(e.contains("UnknownCA"), "{e}");

    // Plain HTTP on the TLS port gets no HTTP answer (a TLS alert record, 21).
    let mut sock = TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    sock.write_all(b"GET /v2/keys/over/tls HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = sock.read_to_end(&mut answer);
    assert!(answer.first().is_none_or(|b| *b == 21) && !String::from_utf8_lossy(&answer).contains("yes"), "{answer:?}");

    // Nothing the refused clients sent was applied.
    let r = plain.get("/over", true).unwrap();
    assert_eq!(r.event.node.nodes.len(), 2);
}

/// Starts `basalt-store` expecting it to refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(STORE).arg("--data-dir").arg(data.path()).args(["--no-socket", "--templates-dir", "/nonexistent", "--seed-file", ""]).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} started");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn configurations_that_cannot_work_are_refused_at_start() {
    let pki = Pki::new();
    // Beyond loopback only over TLS, and TLS only with all three files.
    let e = refused(&["--listen", "10.0.0.5:2379"]);
    assert!(e.contains("10.0.0.5:2379 is not loopback") && e.contains("write it as https://10.0.0.5:2379"), "{e}");
    let e = refused(&["--listen", "https://127.0.0.1:0", "--tls-cert", &pki.path_str("server.pem")]);
    assert!(e.contains("needs tls_key, tls_client_ca"), "{e}");
    let base = |cert: &str, key: &str, ca: &str| {
        vec!["--listen".to_string(), "https://127.0.0.1:0".into(), "--tls-cert".into(), pki.path_str(cert), "--tls-key".into(), pki.path_str(key), "--tls-client-ca".into(), pki.path_str(ca)]
    };
    let run = |args: Vec<String>| refused(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let e = run(base("missing.pem", "server.key", "cluster-ca.pem"));
    assert!(e.contains("tls_cert") && e.contains("missing.pem: cannot read"), "{e}");
    let e = run(base("server.key", "server.key", "cluster-ca.pem"));
    assert!(e.contains("tls_cert") && e.contains("holds no PEM certificate"), "{e}");
    let e = run(base("server.pem", "server.pem", "cluster-ca.pem"));
    assert!(e.contains("tls_key") && e.contains("no usable PEM private key"), "{e}");
    let e = run(base("server.pem", "server.key", "server.key"));
    assert!(e.contains("tls_client_ca") && e.contains("holds no PEM certificate"), "{e}");
    // A key that is not the certificate's.
    let e = run(base("server.pem", "client.key", "cluster-ca.pem"));
    assert!(e.contains("server.pem and tls_key") && e.contains("client.key: the private key is not the certificate's"), "{e}");
}
