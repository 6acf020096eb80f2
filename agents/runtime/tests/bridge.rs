//! The bridge network on the build host (as root), inside a network
//! namespace the test makes, so the host's own interfaces and firewall are
//! never touched: a bridge, two containers' namespaces with veth pairs and
//! addresses, published TCP and UDP ports reached on 127.0.0.1 and on the
//! bridge's address, containers reaching each other, the published port
//! from a container (hairpin), and an "outside" namespace on a veth with
//! 198.18.0.0/24 (the benchmarking range): containers reach it masqueraded,
//! it reaches a published port with its own address kept, and it cannot
//! reach a container's address directly. Then a port another container
//! publishes and one a program holds are refused leaving nothing behind;
//! stop and removal release ports, interfaces and addresses; and an agent
//! started after a crash clears what the last one left.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use basalt_runtime::network::{link, netns, veth_name, Network};
use basalt_runtime::settings::NetworkSettings;
use basalt_runtime::spec::Port;

const TIMEOUT: Duration = Duration::from_secs(5);

fn tcp(host_port: u16, container_port: u16) -> Port {
    Port { host_ip: None, host_port, container_port, protocol: "tcp".into() }
}

/// Moves the calling thread into the namespace held at `path`.
fn join(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "joining {}", path.display());
}

/// A TCP server in namespace `path` that answers each connection with
/// "NAME saw PEER_ADDRESS", and a UDP one on the same port.
fn serve(path: PathBuf, name: &'static str, port: u16) {
    let (ready, wait) = mpsc::channel();
    std::thread::spawn(move || {
        join(&path);
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        let udp = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            while let Ok((_, peer)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(format!("{name} saw {} over udp", peer.ip()).as_bytes(), peer);
            }
        });
        ready.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            let peer = stream.peer_addr().unwrap();
            let mut stream = stream;
            let _ = stream.write_all(format!("{name} saw {}", peer.ip()).as_bytes());
        }
    });
    wait.recv().unwrap();
}

/// What the server at `address` says, or the error, from the calling thread's namespace.
fn ask(address: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

/// `ask` from inside the namespace at `path`.
fn ask_from(path: &Path, address: SocketAddr) -> Result<String, String> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        join(&path);
        ask(address)
    })
    .join()
    .unwrap()
}

fn ask_udp(address: SocketAddr) -> Result<String, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    socket.set_read_timeout(Some(TIMEOUT)).unwrap();
    socket.send_to(b"hello", address).map_err(|e| e.to_string())?;
    let mut buffer = [0u8; 128];
    let (n, _) = socket.recv_from(&mut buffer).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn interface_exists(name: &str) -> bool {
    link::index(name).is_ok()
}

#[test]
fn containers_on_the_bridge_are_reached_through_published_ports_and_reach_out() {
    // Everything runs on a thread with a network namespace of its own.
    std::thread::spawn(|| {
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET): the test runs as root");
        in_own_namespace();
    })
    .join()
    .unwrap();
}

/// Unmounts the namespaces held below the test's directory, also when it fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(self.0.join("netns")).into_iter().flatten().flatten() {
            netns::remove(&entry.path());
        }
        netns::remove(&self.0.join("outside"));
    }
}

fn in_own_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let _unmount = Unmount(dir.path().to_owned());
    let mut socket = link::open().unwrap();
    link::set_up(&mut socket, link::index("lo").unwrap()).unwrap();
    let settings = NetworkSettings { bridge: "bt0".into(), subnet: "10.99.0.0/24".parse().unwrap() };
    let gateway = Ipv4Addr::new(10, 99, 0, 1);
    let addresses = dir.path().join("addresses.json");
    let network = Network::new(&dir.path().join("netns"), &addresses);

    let a = network.attach("a", &[tcp(8080, 80), Port { protocol: "udp".into(), ..tcp(5353, 80) }], &settings).unwrap();
    let b = network.attach("b", &[], &settings).unwrap();
    assert_eq!((a.address, b.address, a.gateway), (Ipv4Addr::new(10, 99, 0, 2), Ipv4Addr::new(10, 99, 0, 3), gateway));
    assert!(interface_exists("bt0") && interface_exists(&a.host_interface) && interface_exists(&b.host_interface));
    serve(a.namespace.clone(), "a", 80);
    serve(b.namespace.clone(), "b", 80);

    // A container's namespace has lo and its eth0, with its address and route.
    let inside = {
        let path = a.namespace.clone();
        std::thread::spawn(move || {
            join(&path);
            std::fs::read_to_string("/proc/thread-self/net/route").unwrap() + &std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
        })
        .join()
        .unwrap()
    };
    assert!(inside.contains("eth0\t00000000\t0100630A"), "default route via 10.99.0.1: {inside}");
    let interfaces: Vec<&str> = inside.lines().filter_map(|l| l.split_once(':').map(|(n, _)| n.trim())).filter(|n| !n.contains(' ')).collect();
    assert_eq!(interfaces.iter().filter(|n| **n == "lo" || **n == "eth0").count(), 2, "{inside}");
    assert_eq!(interfaces.len(), 2, "only lo and eth0: {inside}");

    // Published: from this machine on 127.0.0.1 and on the bridge's address, TCP and UDP.
    assert_eq!(ask(addr(Ipv4Addr::LOCALHOST, 8080)).unwrap(), format!("a saw {gateway}"));
    assert_eq!(ask(addr(gateway, 8080)).unwrap(), format!("a saw {gateway}"));
    assert_eq!(ask_udp(addr(Ipv4Addr::LOCALHOST, 5353)).unwrap(), format!("a saw {gateway} over udp"));
    // Container to container directly, with its own address; and through the published port.
    assert_eq!(ask_from(&b.namespace, addr(a.address, 80)).unwrap(), format!("a saw {}", b.address));
    assert_eq!(ask_from(&a.namespace, addr(b.address, 80)).unwrap(), format!("b saw {}", a.address));
    assert_eq!(ask_from(&b.namespace, addr(gateway, 8080)).unwrap(), format!("a saw {gateway}"));

    // The outside world: a namespace on a veth, 198.18.0.2, this one 198.18.0.1.
    let outside_path = dir.path().join("outside");
    let outside = netns::create(&outside_path).unwrap();
    use std::os::fd::AsRawFd;
    link::create_veth(&mut socket, "up0", "eth0", outside.as_raw_fd()).unwrap();
    let up0 = link::index("up0").unwrap();
    link::add_address(&mut socket, up0, Ipv4Addr::new(198, 18, 0, 1), 24).unwrap();
    link::set_up(&mut socket, up0).unwrap();
    netns::enter(&outside, || {
        let mut inside = link::open()?;
        let eth0 = link::index("eth0")?;
        link::add_address(&mut inside, eth0, Ipv4Addr::new(198, 18, 0, 2), 24).map_err(|e| e.to_string())?;
        link::set_up(&mut inside, eth0).map_err(|e| e.to_string())?;
        link::set_up(&mut inside, link::index("lo")?).map_err(|e| e.to_string())?;
        link::add_default_route(&mut inside, Ipv4Addr::new(198, 18, 0, 1), eth0).map_err(|e| e.to_string())
    })
    .unwrap();
    serve(outside_path.clone(), "outside", 9000);
    let me = Ipv4Addr::new(198, 18, 0, 1);
    assert_eq!(ask_from(&b.namespace, addr(Ipv4Addr::new(198, 18, 0, 2), 9000)).unwrap(), format!("outside saw {me}"), "masqueraded on the way out");
    assert_eq!(ask_from(&outside_path, addr(me, 8080)).unwrap(), "a saw 198.18.0.2", "the client's address is kept through the published port");
    let direct = ask_from(&outside_path, addr(a.address, 80));
    assert!(direct.is_err(), "a container's address is not reachable from outside: {direct:?}");

    // Refused, leaving nothing: a port another container publishes, a port a program holds.
    let error = network.attach("c", &[tcp(8080, 81)], &settings).unwrap_err();
    assert_eq!(error, "ports: host port 8080/tcp is already published by container a");
    let program = TcpListener::bind("0.0.0.0:7070").unwrap();
    let error = network.attach("c", &[tcp(7070, 80)], &settings).unwrap_err();
    assert_eq!(error, "ports: host port 7070/tcp is in use by a program on this machine");
    drop(program);
    assert!(!network.namespace_path("c").exists());
    assert!(network.address("c").is_none());
    // While published, the port is kept from programs.
    assert!(TcpListener::bind("0.0.0.0:8080").is_err());

    // Stopped: the port, the veth pair and the namespace go; the address stays a's.
    network.detach("a");
    assert!(!interface_exists(&a.host_interface) && !a.namespace.exists());
    assert!(ask(addr(Ipv4Addr::LOCALHOST, 8080)).unwrap_err().contains("refused"), "nothing is published on 8080 any more");
    drop(TcpListener::bind("0.0.0.0:8080").unwrap());
    assert_eq!(network.address("a"), Some(a.address));
    let c = network.attach("c", &[tcp(8080, 80)], &settings).unwrap();
    assert_eq!(c.address, Ipv4Addr::new(10, 99, 0, 4), "a's address is still a's");
    serve(c.namespace.clone(), "c", 80);
    assert_eq!(ask(addr(Ipv4Addr::LOCALHOST, 8080)).unwrap(), format!("c saw {gateway}"));
    // Removed: the address is free again.
    network.release("a").unwrap();
    assert_eq!(network.attach("d", &[], &settings).unwrap().address, a.address);

    // An agent after a crash: the next one clears namespaces, veth pairs and rules, and keeps the addresses of containers that exist.
    drop(network);
    let network = Network::new(&dir.path().join("netns"), &addresses);
    network.clean_leftovers(&["b".to_string(), "c".to_string()]);
    assert!(!interface_exists(&b.host_interface) && !interface_exists(&c.host_interface) && !interface_exists(&veth_name(Ipv4Addr::new(10, 99, 0, 2))));
    assert!(!c.namespace.exists());
    // 127.0.0.1:8080 is this namespace's own again: no rule sends it on.
    let here = TcpListener::bind("127.0.0.1:8080").unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = here.accept().unwrap();
        stream.write_all(b"here").unwrap();
    });
    assert_eq!(ask(addr(Ipv4Addr::LOCALHOST, 8080)).unwrap(), "here", "the rules are gone");
    assert_eq!((network.address("b"), network.address("c"), network.address("d")), (Some(b.address), Some(c.address), None));
    netns::remove(&outside_path);
}
