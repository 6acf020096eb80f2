//! Accept loops: HTTP/1.1 with keep-alive on TCP (plain on loopback, TLS
//! with client certificates anywhere) and on a Unix socket, each connection
//! served by hyper on the shared runtime.

use crate::http::{handle, App};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::Path;
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

pub async fn serve_tcp(listener: TcpListener, app: Arc<App>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("basalt-store: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small request/response pairs: Nagle would add 40 ms to each.
        let _ = stream.set_nodelay(true);
        spawn_connection(stream, app.clone());
    }
}

/// How long a TLS client has to finish its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TLS: the handshake (client certificate required) on the connection's own
/// task, then HTTP as on any other connection. A refused handshake is
/// logged with the peer's address and the reason.
pub async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, app: Arc<App>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("basalt-store: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => spawn_connection(tls, app),
                Ok(Err(e)) => eprintln!("basalt-store: TLS from {peer} refused: {e}"),
                Err(_) => eprintln!("basalt-store: TLS from {peer}: no handshake within {HANDSHAKE_TIMEOUT:?}"),
            }
        });
    }
}

/// Serves one keep-alive HTTP/1 connection, TCP or Unix, on its own task.
fn spawn_connection<S>(stream: S, app: Arc<App>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req| handle(app.clone(), req));
        let _ = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), service).await;
    });
}

pub async fn serve_unix(listener: UnixListener, app: Arc<App>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("basalt-store: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        spawn_connection(stream, app.clone());
    }
}

/// Bind the Unix socket, replacing a stale one left by a previous run.
pub fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Root and the socket's group may talk to the store; nobody else.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}
