//! The service as a whole: open the store, listen on TCP and the Unix
//! socket, run the templates, and serve until SIGTERM. `basalt-store` is
//! this plus argument parsing; the benchmark runs it as a child process too.

use crate::client::Endpoint;
use crate::config::Config;
use crate::config::DEFAULT_PATH;
use crate::http::App;
use crate::service::{Backend, Limits, Store};
use crate::{seed, server, template, tls};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Parse `basalt-store` arguments (also used by the benchmark's child).
pub fn parse_args(args: Vec<String>) -> Result<Config> {
    let mut config_path = None;
    for pair in args.windows(2) {
        if pair[0] == "--config" {
            config_path = Some(PathBuf::from(&pair[1]));
        }
    }
    let mut config = match &config_path {
        Some(p) => Config::load(p, false)?,
        None => Config::load(DEFAULT_PATH.as_ref(), true)?,
    };
    let mut listen = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--config" => {
                value("--config")?;
            }
            "--data-dir" => config.data_dir = value("--data-dir")?.into(),
            "--listen" => listen.push(value("--listen")?),
            "--socket" => config.socket = value("--socket")?.into(),
            "--no-socket" => config.socket = PathBuf::new(),
            "--templates-dir" => config.templates_dir = value("--templates-dir")?.into(),
            "--seed-file" => config.seed_file = value("--seed-file")?.into(),
            "--tls-cert" => config.tls_cert = value("--tls-cert")?.into(),
            "--tls-key" => config.tls_key = value("--tls-key")?.into(),
            "--tls-client-ca" => config.tls_client_ca = value("--tls-client-ca")?.into(),
            "--cluster" => config.cluster = value("--cluster")?.split(',').map(str::to_string).collect(),
            "--cluster-prefix" => config.cluster_prefix = value("--cluster-prefix")?,
            "--cluster-snapshot-every" => config.cluster_snapshot_every = value("--cluster-snapshot-every")?.parse().context("--cluster-snapshot-every takes a number")?,
            "-h" | "--help" => {
                println!("usage: basalt-store [--config PATH] [--data-dir DIR] [--listen IP:PORT|https://IP:PORT]... [--tls-cert PEM --tls-key PEM --tls-client-ca PEM] [--socket PATH | --no-socket] [--templates-dir DIR] [--seed-file PATH] [--cluster URL,URL,... [--cluster-prefix PREFIX]]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if !listen.is_empty() {
        config.listen = listen;
    }
    config.validate("command line".as_ref())?;
    Ok(config)
}

pub fn run(config: Config) -> Result<()> {
    // Certificates are checked before anything else happens.
    let tls = if config.listeners().iter().any(|l| l.tls) {
        let server = tls::server_config(&config.tls_cert, &config.tls_key, &config.tls_client_ca)?;
        Some(tokio_rustls::TlsAcceptor::from(server))
    } else {
        None
    };
    let limits = Limits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
    let store = if config.cluster.is_empty() {
        Store::open(&config.data_dir, limits, config.history).with_context(|| format!("opening the store in {}", config.data_dir.display()))?
    } else {
        let endpoints = config.cluster.iter().map(|u| Endpoint::parse(u)).collect();
        let backend = Backend::Cluster { endpoints, prefix: config.cluster_prefix.clone(), snapshot_every: config.cluster_snapshot_every };
        Store::open_backend(backend, limits, config.history).with_context(|| format!("reading the store's log from the etcd cluster {}", config.cluster.join(", ")))?
    };
    // Seed keys go in before anybody is served or a template renders.
    if !config.seed_file.as_os_str().is_empty() {
        match seed::seed_from_file(&store, &config.seed_file) {
            Ok(seed::Outcome::Absent | seed::Outcome::AlreadyApplied) => {}
            Ok(seed::Outcome::Applied { created, kept }) => {
                eprintln!("basalt-store: seeded {created} key(s) from {}, {} already there", config.seed_file.display(), kept.len());
                for (key, why) in kept.iter().filter(|(_, why)| !why.is_empty()) {
                    eprintln!("basalt-store: seed key {key} left alone: {why}");
                }
            }
            // The store serves without the seed rather than not at all.
            Err(e) => eprintln!("basalt-store: {e}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let mut tcp = Vec::new();
        for l in &config.listeners() {
            let listener = tokio::net::TcpListener::bind(l.addr).await.with_context(|| format!("listening on {}", l.addr))?;
            let scheme = if l.tls { "https" } else { "http" };
            let url = format!("{scheme}://{}", listener.local_addr().context("the listener's address")?);
            tcp.push((listener, l.tls, url));
        }
        let client_urls: Vec<String> = tcp.iter().map(|(_, _, url)| url.clone()).collect();
        let app = Arc::new(App { store: store.clone(), client_urls });
        for (listener, is_tls, url) in tcp {
            match (&tls, is_tls) {
                (Some(acceptor), true) => {
                    eprintln!("basalt-store: listening on {url} (client certificates from {})", config.tls_client_ca.display());
                    tokio::spawn(server::serve_tls(listener, acceptor.clone(), app.clone()));
                }
                _ => {
                    eprintln!("basalt-store: listening on {url}");
                    tokio::spawn(server::serve_tcp(listener, app.clone()));
                }
            }
        }
        if !config.socket.as_os_str().is_empty() {
            let listener = server::bind_unix(&config.socket).with_context(|| format!("listening on {}", config.socket.display()))?;
            // Like init's control socket: root and the wheel group (core is in it).
            if !config.socket_group.is_empty() {
                let gid = template::lookup_group(&config.socket_group);
                match gid.map(|gid| std::os::unix::fs::chown(&config.socket, None, Some(gid))) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => eprintln!("basalt-store: cannot give {} to group {}: {e}", config.socket.display(), config.socket_group),
                    None => eprintln!("basalt-store: no group {:?}: {} is for root only", config.socket_group, config.socket.display()),
                }
            }
            eprintln!("basalt-store: listening on unix:{}", config.socket.display());
            tokio::spawn(server::serve_unix(listener, app.clone()));
        }
        if config.templates_dir.is_dir() {
            // A broken resource file is reported and skipped; the others run.
            let (templates, errors) = template::load_dir(&config.templates_dir);
            for e in &errors {
                eprintln!("basalt-store: {e}; template skipped");
            }
            eprintln!("basalt-store: {} template(s) from {}", templates.len(), config.templates_dir.display());
            let store = store.clone();
            std::thread::Builder::new().name("templates".into()).spawn(move || template::run(store, templates)).context("starting the template thread")?;
        }
        eprintln!("basalt-store: ready at index {}", store.index());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        // Every acknowledged write is already on disk: nothing to flush.
        Ok(())
    })
}
