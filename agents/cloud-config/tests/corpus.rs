//! Host tests over tests/corpus/: realistic cloud-configs in the
//! coreos-cloudinit dialect (and basalt's extensions), each parsed and then
//! applied twice to a scratch root with the expected results, the second
//! time changing nothing.

mod common;

use std::io::Write;

use basalt_cloud_config::apply::Log;
use basalt_cloud_config::{parse_user_data, validate};
use common::{apply_twice, cloud_metadata, corpus, Applied};

fn warnings_of(name: &str) -> Vec<String> {
    validate(&corpus(name)).problems.iter().map(|problem| problem.to_string()).collect()
}

#[test]
fn every_corpus_file_is_free_of_errors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let report = validate(&corpus(&name));
        assert_eq!(report.error_count(), 0, "{name}:\n{report}");
    }
}

/// Every file, applied twice: the second run must change nothing, run
/// nothing and fail nothing.
#[test]
fn applying_any_corpus_file_twice_changes_nothing_the_second_time() {
    for name in [
        "containers-and-store.yml",
        "etcd-fleet-cluster.yml",
        "etcd2-static-cluster.yml",
        "multipart.txt",
        "script.sh",
        "seed-coreos-user-data.yml",
        "ssh-and-hostname.yml",
        "static-network.yml",
        "units-and-drop-ins.yml",
        "update-and-reboot-window.yml",
        "users-and-groups.yml",
        "write-files.yml",
    ] {
        let applied = apply_twice(&corpus(name), &cloud_metadata());
        assert!(applied.first.failures.is_empty(), "{name}: {:?}", applied.first.failures);
        assert!(!applied.first.changes.is_empty(), "{name} changed nothing");
        assert_eq!(applied.second, Log::default(), "{name}");
    }
}

const ETCD_HEADER: &str = "# Written by basalt-cloud-config from user data; replaced when the user data changes.\n";

#[test]
fn the_etcd_and_fleet_example_configures_etcd_and_warns_about_fleet() {
    assert_eq!(warnings_of("etcd-fleet-cluster.yml"), ["12:3: warning: coreos.fleet: fleet is not part of basalt; declare units under coreos.units or containers under `containers`; ignored"]);
    let applied = apply_twice(&corpus("etcd-fleet-cluster.yml"), &cloud_metadata());
    assert_eq!(applied.requests, ["reload", "start etcd.service", "start fleet.service"], "etcd-member.service was enabled");
    assert!(applied.read("/home/core/.ssh/authorized_keys").contains("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDfakekeyfortheclusteradmin ops@bastion\n"));
}

/// The talk's own user data (etcd 0.4 keys, etcd.service started) is taken
/// as written: etcd is configured, only fleet is warned about.
#[test]
fn the_seed_user_data_configures_etcd_member() {
    assert_eq!(warnings_of("seed-coreos-user-data.yml"), ["18:3: warning: coreos.fleet: fleet is not part of basalt; declare units under coreos.units or containers under `containers`; ignored"]);
    let applied = apply_twice(&corpus("seed-coreos-user-data.yml"), &cloud_metadata());
    assert_eq!(
        applied.read("/etc/basalt/etcd-member.env"),
        format!(
            "{ETCD_HEADER}ETCD_DISCOVERY=https://discovery.etcd.io/<token>\nETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.0.0.7:7001\nETCD_ADVERTISE_CLIENT_URLS=http://10.0.0.7:4001\nETCD_LISTEN_CLIENT_URLS=http://10.0.0.7:4001\nETCD_LISTEN_PEER_URLS=http://10.0.0.7:7001\n"
        )
    );
    assert_eq!(applied.mode_owner("/etc/basalt/etcd-member.env"), (0o600, 0, 0));
    assert_eq!(applied.link("/etc/systemd/system/multi-user.target.wants/etcd-member.service"), "/usr/lib/systemd/system/etcd-member.service");
    assert_eq!(applied.requests, ["reload", "start etcd.service", "start fleet.service"]);
}

/// Without a datasource address, `$private_ipv4` is the static address the
/// user data gives the private interface (QEMU's fw_cfg has no metadata).
#[test]
fn a_static_etcd2_member_takes_its_address_from_the_network_settings() {
    assert_eq!(warnings_of("etcd2-static-cluster.yml"), Vec::<String>::new());
    let applied = apply_twice(&corpus("etcd2-static-cluster.yml"), &basalt_cloud_config::metadata::Metadata::default());
    let env = applied.read("/etc/basalt/etcd-member.env");
    assert_eq!(
        env,
        format!(
            "{ETCD_HEADER}ETCD_NAME=node2\nETCD_INITIAL_CLUSTER=node1=http://10.10.1.1:2380,node2=http://10.10.1.2:2380,node3=http://10.10.1.3:2380\nETCD_INITIAL_CLUSTER_STATE=new\nETCD_INITIAL_CLUSTER_TOKEN=basalt-corpus\nETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.10.1.2:2380\nETCD_ADVERTISE_CLIENT_URLS=http://10.10.1.2:2379\nETCD_LISTEN_CLIENT_URLS=http://10.10.1.2:2379,http://127.0.0.1:4001\nETCD_LISTEN_PEER_URLS=http://10.10.1.2:2380\nETCD_HEARTBEAT_INTERVAL=500\nETCD_ELECTION_TIMEOUT=5000\n"
        )
    );
    assert!(applied.read("/etc/environment").contains("COREOS_PRIVATE_IPV4=10.10.1.2\n"));
    assert_eq!(applied.requests, ["reload", "start etcd2.service", "start registrar.service"]);

    // New settings for a member that is already enabled: a restart, no reload.
    let changed = String::from_utf8(corpus("etcd2-static-cluster.yml")).unwrap().replace("election-timeout: 5000", "election-timeout: 6000");
    let user_data = basalt_cloud_config::parse_user_data(changed.as_bytes());
    let mut supervisor = common::RecordingSupervisor::default();
    let mut runner = common::RecordingRunner::default();
    let mut applier = basalt_cloud_config::apply::Applier { root: applied.root.clone(), supervisor: &mut supervisor, runner: &mut runner, live: false };
    let log = applier.apply(&user_data, &basalt_cloud_config::metadata::Metadata::default());
    assert!(log.changes.contains(&"wrote /etc/basalt/etcd-member.env".to_string()), "{log:?}");
    assert_eq!(supervisor.requests, ["restart etcd-member.service"]);
    assert!(applied.read("/etc/basalt/etcd-member.env").contains("ETCD_ELECTION_TIMEOUT=6000\n"));
}

#[test]
fn keys_hostname_and_hosts() {
    let applied = apply_twice(&corpus("ssh-and-hostname.yml"), &cloud_metadata());
    assert_eq!(applied.read("/etc/hostname"), "edge-01.example.net\n", "user data wins over the metadata's name");
    assert_eq!(applied.read("/etc/hosts"), "# Written by basalt-cloud-config (manage_etc_hosts: localhost).\n127.0.0.1 edge-01.example.net localhost\n::1 edge-01.example.net localhost\n");
    let keys = applied.read("/home/core/.ssh/authorized_keys");
    assert_eq!(keys.lines().filter(|line| line.starts_with("ssh-")).count(), 2, "{keys}");
    assert_eq!(applied.mode_owner("/home/core/.ssh/authorized_keys"), (0o600, 500, 500));
    assert_eq!(applied.mode_owner("/home/core/.ssh"), (0o700, 500, 500));
}

#[test]
fn users_groups_passwords_and_homes() {
    let applied = apply_twice(&corpus("users-and-groups.yml"), &cloud_metadata());
    let passwd = applied.read("/etc/passwd");
    assert!(passwd.contains("\nelroy:x:1000:1000:Elroy Jetson:/home/elroy:/bin/sh\n"), "{passwd}");
    assert!(passwd.contains("\nbackup:x:999:999:Nightly backups:/:/sbin/nologin\n"), "{passwd}");
    assert!(passwd.contains("\ndeploy:x:1001:1001::/var/lib/deploy:/bin/sh\n"), "{passwd}");
    let group = applied.read("/etc/group");
    assert!(group.contains("\nsudo:x:27:elroy\n"), "{group}");
    assert!(group.contains("\ndocker:x:233:elroy,deploy\n"), "{group}");
    assert!(group.contains("\ndeployers:x:1001:\n"), "{group}");
    let shadow = applied.read("/etc/shadow");
    assert!(shadow.contains("\nelroy:$6$5s2u6/jR$un0AvWnqilcgaNB3Mkxd5yYv6mTlWfOoCYHZmfi3LDKVltj.E8XNKEcwWm/XnGLYCMbl.eO.ERP5N3iQPzuol0:"), "{shadow}");
    assert!(shadow.contains("\ndeploy:*:"), "no passwd given: no password can log in, keys still can: {shadow}");
    assert_eq!(applied.mode_owner("/etc/shadow"), (0o640, 0, 42));
    assert_eq!(applied.mode_owner("/home/elroy"), (0o755, 1000, 1000));
    assert_eq!(applied.mode_owner("/home/elroy/.ssh/authorized_keys"), (0o600, 1000, 1000));
    assert_eq!(applied.mode_owner("/var/lib/deploy/.ssh/authorized_keys"), (0o600, 1001, 1001));
    assert!(!applied.root.exists("/home/backup"), "no_create_home");
}

#[test]
fn files_with_encodings_owners_and_modes() {
    let applied = apply_twice(&corpus("write-files.yml"), &cloud_metadata());
    assert_eq!(applied.read("/etc/motd.d/welcome.txt"), "Welcome to node-7.\nThis node is managed by cloud-config; local changes may be replaced.\n");
    assert_eq!(applied.read("/etc/resolv.conf.cluster"), "# Managed by cloud-config\nsearch cluster.local\nnameserver 10.0.0.2\n");
    assert_eq!(applied.mode_owner("/etc/resolv.conf.cluster"), (0o644, 0, 0));
    assert_eq!(applied.read("/opt/bin/node-role"), "#!/bin/sh\n# prints the node's role\necho worker\n");
    assert_eq!(applied.mode_owner("/opt/bin/node-role"), (0o755, 0, 0));
    assert_eq!(applied.read("/home/core/.config/app/settings.env"), "API_ENDPOINT=http://10.0.0.7:8080\nLOG_LEVEL=info\n");
    assert_eq!(applied.mode_owner("/home/core/.config/app/settings.env"), (0o600, 500, 500));
}

#[test]
fn units_drop_ins_masks_and_enablement() {
    let applied = apply_twice(&corpus("units-and-drop-ins.yml"), &cloud_metadata());
    assert_eq!(applied.requests, ["reload", "start docker-tcp.socket", "restart docker.service", "start hello.service", "start nginx@8080.service"]);
    assert!(applied.read("/etc/systemd/system/docker-tcp.socket").contains("ListenStream=2375\n"));
    assert_eq!(applied.link("/etc/systemd/system/sockets.target.wants/docker-tcp.socket"), "/etc/systemd/system/docker-tcp.socket");
    assert_eq!(applied.read("/etc/systemd/system/docker.service.d/50-insecure-registry.conf"), "[Service]\nEnvironment=DOCKER_OPTS='--insecure-registry=\"10.0.1.0/24\"'\n");
    assert_eq!(applied.link("/etc/systemd/system/multi-user.target.wants/nginx@8080.service"), "/etc/systemd/system/nginx@.service");
    assert_eq!(applied.link("/etc/systemd/system/update-engine.service"), "/dev/null");
    assert!(applied.root.exists("/run/systemd/system/scratch.service"));
    assert!(!applied.root.exists("/etc/systemd/system/scratch.service"));
    assert_eq!(applied.mode_owner("/etc/systemd/system/hello.service"), (0o644, 0, 0));
}

#[test]
fn update_settings_and_the_reboot_window() {
    let applied = apply_twice(&corpus("update-and-reboot-window.yml"), &cloud_metadata());
    assert_eq!(
        applied.read("/etc/basalt/update.conf"),
        "# Written by basalt-cloud-config from user data; replaced when the user data changes.\n\
         SERVER=http://updates.internal.example.com/v1/update/\nCHANNEL=beta\nREBOOT_STRATEGY=etcd-lock\n\
         REBOOT_WINDOW_START=Sun 03:30\nREBOOT_WINDOW_LENGTH=2h\n"
    );
}

#[test]
fn static_networks_both_ways() {
    let applied = apply_twice(&corpus("static-network.yml"), &cloud_metadata());
    assert!(applied.read("/run/systemd/network/00-eth0.network").contains("Address=10.0.0.101/24\n"));
    assert_eq!(
        applied.read("/etc/systemd/network/50-cloud-config-00-eth1.network"),
        "# Written by basalt-cloud-config from user data; replaced when the user data changes.\n\
         [Match]\nName=eth1\n\n[Network]\nDHCP=no\nAddress=192.168.50.10/24\nAddress=fd00:50::10/64\nGateway=192.168.50.1\n\
         DNS=192.168.50.2\nDNS=1.1.1.1\nDomains=lab.example.net\n\n[Route]\nDestination=10.20.0.0/16\nGateway=192.168.50.254\n"
    );
    assert_eq!(
        applied.read("/etc/systemd/network/50-cloud-config-01-52_54_00_ab_cd_ef.network"),
        "# Written by basalt-cloud-config from user data; replaced when the user data changes.\n\
         [Match]\nMACAddress=52:54:00:ab:cd:ef\n\n[Network]\nDHCP=ipv4\n"
    );
    assert!(applied.requests.is_empty(), "networkd files need no supervisor: {:?}", applied.requests);
}

#[test]
fn containers_store_seeds_updates_and_commands() {
    let applied = apply_twice(&corpus("containers-and-store.yml"), &cloud_metadata());
    let etcd: serde_json::Value = serde_json::from_str(&applied.read("/etc/basalt/containers/etcd.json")).unwrap();
    assert_eq!(
        etcd,
        serde_json::json!({
            "version": 1, "source": "cloud-config", "name": "etcd", "image": "quay.io/coreos/etcd:v2.0.0",
            "args": ["--name", "node-7", "--advertise-client-urls", "http://10.0.0.7:2379"], "env": {},
            "cpu_millis": 750, "memory_bytes": 134217728, "network": "host", "restart": "always", "volumes": [], "ports": []
        })
    );
    let web: serde_json::Value = serde_json::from_str(&applied.read("/etc/basalt/containers/web.json")).unwrap();
    assert_eq!(web["env"], serde_json::json!({"NGINX_HOST": "203.0.113.7", "WORKERS": "4"}));
    assert_eq!(web["ports"][1], serde_json::json!({"host_ip": "127.0.0.1", "host_port": 8443, "container_port": 443, "protocol": "tcp"}));
    assert_eq!(web["volumes"][0], serde_json::json!({"source": "/srv/www", "target": "/usr/share/nginx/html", "read_only": true}));
    assert_eq!(applied.mode_owner("/etc/basalt/containers/web.json"), (0o600, 0, 0));
    let seed: serde_json::Value = serde_json::from_str(&applied.read("/etc/basalt/store-seed.json")).unwrap();
    assert_eq!(
        seed,
        serde_json::json!({"version": 1, "source": "cloud-config", "keys": [
            {"key": "/services/web/port", "value": "80"},
            {"key": "/coreos.com/network/config", "value": "{\"Network\": \"10.1.0.0/16\"}"}
        ]})
    );
    assert!(applied.read("/etc/basalt/update.conf").ends_with(
        "SERVER=http://updates.example.com/basalt\nCHANNEL=stable\nREBOOT_STRATEGY=fleetlock\nREBOOT_WINDOW_START=04:00\nREBOOT_WINDOW_LENGTH=1h30m\nFLEETLOCK_URL=http://fleetlock.example.com\n"
    ));
    assert_eq!(
        applied.runs,
        [
            vec!["/bin/sh".to_string(), "-c".into(), "sysctl -w net.ipv4.ip_forward=1".into()],
            vec!["/bin/sh".to_string(), "-c".into(), "echo \"first boot of node-7\" > /var/log/first-boot.log".into()],
            vec!["mkdir".to_string(), "-p".into(), "/srv/www".into()],
        ]
    );
}

#[test]
fn multipart_gives_a_config_and_a_script() {
    let applied = apply_twice(&corpus("multipart.txt"), &cloud_metadata());
    assert_eq!(applied.read("/etc/hostname"), "mixed-node\n");
    assert_eq!(applied.runs.len(), 1);
    let script = &applied.runs[0][0];
    assert!(script.ends_with("/var/lib/basalt/cloud-config/instances/i-0corpus/scripts/00"), "{script}");
    assert_eq!(std::fs::read_to_string(script).unwrap(), "#!/bin/sh\necho \"preparing 10.0.0.7\"\n");
    assert_eq!(applied.mode_owner("/var/lib/basalt/cloud-config/instances/i-0corpus/scripts/00"), (0o700, 0, 0));
}

#[test]
fn a_script_as_the_whole_user_data_runs_once() {
    let applied: Applied = apply_twice(&corpus("script.sh"), &cloud_metadata());
    assert_eq!(applied.runs.len(), 1);
    assert!(std::fs::read_to_string(&applied.runs[0][0]).unwrap().contains("echo \"node 203.0.113.7 is up\""));
}

#[test]
fn gzip_user_data_is_the_same_as_plain() {
    let plain = corpus("users-and-groups.yml");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&plain).unwrap();
    let zipped = encoder.finish().unwrap();
    assert_eq!(parse_user_data(&zipped), parse_user_data(&plain));
}
