//! `basalt-store`: the node's key/value store service.
//!
//! Usage: basalt-store [--config PATH] [--data-dir DIR]
//!                     [--listen IP:PORT | --listen https://IP:PORT]...
//!                     [--tls-cert PEM --tls-key PEM --tls-client-ca PEM]
//!                     [--socket PATH | --no-socket] [--templates-dir DIR]
//!                     [--seed-file PATH] [--cluster URL,URL,...]

use basalt_store::daemon;

fn main() -> anyhow::Result<()> {
    daemon::run(daemon::parse_args(std::env::args().skip(1).collect())?)
}
