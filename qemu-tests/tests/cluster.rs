//! Three basalt machines form one etcd cluster from user data alone: each
//! gets `coreos.etcd2` with a static `initial-cluster` of the three and a
//! static address on a private network, and starts `etcd2.service` as
//! CoreOS users did (basalt runs it as etcd-member.service). The private
//! network is QEMU's multicast socket netdev on the loopback interface of a
//! network namespace this test makes, so nothing leaves the host; each VM
//! keeps its user-mode NIC as well. Checked: etcd-member.service runs on
//! each machine, `etcdctl` lists three started members, all healthy; a key
//! set on machine 1 is read on machine 3, through etcd and through the node
//! stores (which follow the cluster); the leader killed (QMP quit), the
//! other two elect another and keep taking writes.
//!
//! One boot of three VMs under TCG, with etcd's timeouts for it (heartbeat
//! 500 ms, election 5 s): every machine is small (512 MiB, one vCPU).
//!
//! And one boot of the default image without user data: etcd is off, and
//! `basaltctl start etcd.service` starts etcd-member.service.

use basalt_qemu_tests::{default_image, Vm};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(420);
const CMD: Duration = Duration::from_secs(120);
const MACHINES: usize = 3;

fn address(machine: usize) -> String {
    format!("10.10.1.{machine}")
}

fn client_url(machine: usize) -> String {
    format!("http://{}:2379", address(machine))
}

fn user_data(machine: usize) -> String {
    let cluster: Vec<String> = (1..=MACHINES).map(|m| format!("node{m}=http://{}:2380", address(m))).collect();
    format!(
        r#"#cloud-config
hostname: node{machine}
network:
  interfaces:
    - mac: "52:54:00:00:01:0{machine}"
      addresses: [{address}/24]
coreos:
  etcd2:
    name: node{machine}
    initial-cluster: {cluster}
    initial-cluster-state: new
    initial-cluster-token: basalt-e2e
    initial-advertise-peer-urls: http://$private_ipv4:2380
    listen-peer-urls: http://$private_ipv4:2380
    listen-client-urls: http://$private_ipv4:2379,http://127.0.0.1:4001
    advertise-client-urls: http://$private_ipv4:2379
    heartbeat-interval: 500
    election-timeout: 5000
  units:
    - name: etcd2.service
      command: start
"#,
        address = address(machine),
        cluster = cluster.join(","),
    )
}

/// Moves this test's thread into a network namespace of its own, with only
/// its loopback interface up: QEMU, started from this thread, inherits it,
/// so the VMs' multicast network and their user-mode forwards stay inside.
fn enter_own_network_namespace() {
    // SAFETY: unshare takes flags only and changes this thread's namespace,
    // which is what the test wants; no memory is involved.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {} (the cluster test runs as root, as make test does)", std::io::Error::last_os_error());
    let status = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip (iproute2)");
    assert!(status.success(), "ip link set lo up");
}

/// Runs `check` on the guest until it succeeds, for up to `seconds`.
fn wait_until(vm: &mut Vm, check: &str, seconds: u32) -> String {
    let (status, out) =
        vm.run(&format!("i=0; until {check}; do i=$((i+1)); [ $i -ge {seconds} ] && break; sleep 1; done >/dev/null 2>&1; {check}"), Duration::from_secs(seconds as u64 + 120)).unwrap();
    assert_eq!(status, 0, "`{check}` never held: {out}");
    out
}

fn etcdctl(machine: usize, args: &str) -> String {
    format!("etcdctl --endpoints {} {args}", client_url(machine))
}

/// etcd's v2 keys API through the member's loopback client URL, as CoreOS
/// users' units and scripts called it.
fn etcdctl_v2(args: &str) -> String {
    format!("ETCDCTL_API=2 etcdctl --endpoints http://127.0.0.1:4001 {args}")
}

#[test]
fn three_machines_form_an_etcd_cluster_that_survives_its_leader() {
    enter_own_network_namespace();
    let image = default_image();
    let dir = tempfile::tempdir().unwrap();
    let group_port = 40000 + (std::process::id() % 20000) as u16;
    let started = Instant::now();
    let mut vms: Vec<Vm> = (1..=MACHINES)
        .map(|machine| {
            let path = dir.path().join(format!("user-data-{machine}"));
            std::fs::write(&path, user_data(machine)).unwrap();
            let nic = [
                "-netdev".to_string(),
                format!("socket,id=cluster,mcast=230.0.0.1:{group_port},localaddr=127.0.0.1"),
                "-device".to_string(),
                format!("virtio-net-pci,netdev=cluster,mac=52:54:00:00:01:0{machine}"),
            ];
            Vm::boot_with_qemu_args(
                &format!("cluster_node{machine}"),
                &image,
                |c| {
                    c.memory_mib = 512;
                    c.cpus = 1;
                    c.fw_cfg.push(("opt/org.basalt/user-data".into(), path.clone()));
                },
                &nic,
            )
            .unwrap()
        })
        .collect();
    for vm in &mut vms {
        vm.wait_ready(BOOT).unwrap();
    }
    eprintln!("three machines ready after {:.0} s", started.elapsed().as_secs_f64());

    // Each machine: cloud-config enabled etcd-member.service, which
    // etcd2.service names; its data is on ROOT, root's only.
    for (index, vm) in vms.iter_mut().enumerate() {
        let machine = index + 1;
        wait_until(vm, "basaltctl status | grep -q '^etcd-member.service *active'", 300);
        assert_eq!(vm.run_ok("stat -c '%a %U' /var/lib/etcd", CMD).unwrap(), "700 root\n");
        let env = vm.run_ok("cat /etc/basalt/etcd-member.env", CMD).unwrap();
        assert!(env.contains(&format!("ETCD_LISTEN_PEER_URLS=http://{}:2380\n", address(machine))), "$private_ipv4 is the static address: {env}");
    }
    // The cluster is whole once every member reports healthy.
    wait_until(&mut vms[0], &format!("{} 2>&1 | grep -c 'is healthy' | grep -qx 3", etcdctl(1, "endpoint health --cluster")), 300);
    eprintln!("a healthy three-member cluster after {:.0} s", started.elapsed().as_secs_f64());
    for (index, vm) in vms.iter_mut().enumerate() {
        let machine = index + 1;
        let members = vm.run_ok(&etcdctl(machine, "member list"), CMD).unwrap();
        let started_members: Vec<&str> = members.lines().filter(|line| line.contains(", started, ")).collect();
        assert_eq!(started_members.len(), MACHINES, "node{machine} sees: {members}");
        for m in 1..=MACHINES {
            assert!(members.contains(&format!(", node{m}, http://{}:2380, {}", address(m), client_url(m))), "node{machine} sees: {members}");
        }
        let health = vm.run_ok(&format!("{} 2>&1", etcdctl(machine, "endpoint health --cluster")), CMD).unwrap();
        assert_eq!(health.matches("is healthy").count(), MACHINES, "node{machine}: {health}");
    }

    // A key set on machine 1 (v2, with a TTL, as the talk's etcdctl) is read
    // on machine 3; one through the v3 API too.
    vms[0].run_ok(&etcdctl_v2("set --ttl 600 /foo/bar 'Hello world'"), CMD).unwrap();
    assert_eq!(vms[2].run_ok(&etcdctl_v2("get --quorum /foo/bar"), CMD).unwrap(), "Hello world\n");
    vms[0].run_ok(&etcdctl(1, "put /basalt/greeting from-node1"), CMD).unwrap();
    assert_eq!(vms[2].run_ok(&etcdctl(3, "get --print-value-only /basalt/greeting"), CMD).unwrap(), "from-node1\n");

    // The node store (127.0.0.1:2379) follows the cluster: a key set with a
    // TTL through machine 1's store is read through machine 3's. Each store
    // may still be restarting until its member had a quorum.
    let store = |args: &str| format!("ETCDCTL_API=2 etcdctl --endpoints http://127.0.0.1:2379 {args}");
    wait_until(&mut vms[0], &format!("{} >/dev/null 2>&1", store("set --ttl 600 /node/store from-node1")), 120);
    let read = wait_until(&mut vms[2], &format!("{} 2>&1", store("get /node/store")), 60);
    assert_eq!(read, "from-node1\n", "node3's store: {read}");

    // Kill the leader: the other two elect another and keep serving writes.
    let status = vms[0].run_ok(&etcdctl(1, "endpoint status --cluster"), CMD).unwrap();
    let leader_line = status.lines().find(|line| line.split(", ").nth(4) == Some("true")).unwrap_or_else(|| panic!("no leader in: {status}"));
    let leader = (1..=MACHINES).find(|m| leader_line.starts_with(&client_url(*m))).unwrap_or_else(|| panic!("leader {leader_line:?}"));
    eprintln!("killing the leader, node{leader}");
    vms[leader - 1].power_cut().unwrap();
    let survivors: Vec<usize> = (1..=MACHINES).filter(|m| *m != leader).collect();
    let (writer, reader) = (survivors[0], survivors[1]);
    let write = etcdctl_v2(&format!("set /after/leader-loss written-by-node{writer}"));
    wait_until(&mut vms[writer - 1], &format!("{write} >/dev/null"), 120);
    assert_eq!(vms[reader - 1].run_ok(&etcdctl_v2("get --quorum /after/leader-loss"), CMD).unwrap(), format!("written-by-node{writer}\n"));
    vms[reader - 1].run_ok(&etcdctl(reader, "put /after/v3 written-by-node-reader"), CMD).unwrap();
    assert_eq!(vms[writer - 1].run_ok(&etcdctl(writer, "get --print-value-only /after/v3"), CMD).unwrap(), "written-by-node-reader\n");
    // The cluster knows one member is gone: two healthy, one not.
    let (_, health) = vms[writer - 1].run(&format!("{} 2>&1", etcdctl(writer, "endpoint health --cluster")), CMD).unwrap();
    assert_eq!(health.matches("is healthy").count(), 2, "{health}");
    assert!(health.contains(&format!("{} is unhealthy", client_url(leader))), "{health}");
    eprintln!("writes go on without node{leader}; {:.0} s in all", started.elapsed().as_secs_f64());
    for machine in survivors {
        vms[machine - 1].power_cut().unwrap();
    }
}

/// Without user data etcd does not run, and Debian's own etcd.service is
/// not loaded; the CoreOS names start etcd-member.service, which then serves
/// a one-member cluster on its loopback URL from its defaults.
#[test]
fn etcd_is_off_unless_configured_and_answers_to_its_coreos_names() {
    let mut vm = Vm::boot_with("cluster_unconfigured", &default_image(), |c| {
        c.memory_mib = 512;
        c.cpus = 1;
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();
    let status = vm.run_ok("basaltctl status", CMD).unwrap();
    let etcd_lines: Vec<&str> = status.lines().filter(|line| line.starts_with("etcd")).collect();
    assert_eq!(etcd_lines.len(), 1, "only etcd-member.service, no unit of Debian's: {status}");
    assert_eq!(etcd_lines[0].split_whitespace().take(2).collect::<Vec<_>>(), ["etcd-member.service", "inactive"], "{status}");
    assert!(!vm.run_ok("ls /var/lib", CMD).unwrap().lines().any(|name| name == "etcd"), "etcd never ran");
    vm.run_ok("basaltctl start etcd.service", CMD).unwrap();
    wait_until(&mut vm, &format!("{} >/dev/null 2>&1", etcdctl_v2("set /hello world")), 120);
    assert_eq!(vm.run_ok(&etcdctl_v2("get /hello"), CMD).unwrap(), "world\n");
    wait_until(&mut vm, "basaltctl status | grep -q '^etcd-member.service *active'", 30);
    assert_eq!(vm.run_ok("stat -c '%a' /var/lib/etcd", CMD).unwrap(), "700\n");
    vm.run_ok("basaltctl stop etcd2.service", CMD).unwrap();
    wait_until(&mut vm, "basaltctl status | grep -q '^etcd-member.service *inactive'", 60);
    vm.power_cut().unwrap();
}
