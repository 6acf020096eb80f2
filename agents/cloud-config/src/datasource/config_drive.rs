//! OpenStack config drive: a filesystem labelled `config-2` with
//! `openstack/latest/user_data` and `openstack/latest/meta_data.json`.

use super::{find_filesystem, Datasource, DatasourceError, Environment, Found};
use crate::metadata::parse_meta_data;

pub const LABEL: &str = "config-2";

pub struct ConfigDrive;

impl Datasource for ConfigDrive {
    fn name(&self) -> &'static str {
        "config-drive"
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        let Some((device, filesystem)) = find_filesystem(environment, LABEL, |_| false) else { return Ok(None) };
        let user_data = device.read(filesystem, "openstack/latest/user_data")?;
        let metadata = device.read(filesystem, "openstack/latest/meta_data.json")?.map(|bytes| parse_meta_data(&String::from_utf8_lossy(&bytes))).unwrap_or_default();
        Ok(Some(Found { source: format!("config-drive {}", device.path.display()), user_data, metadata }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn user_data_and_meta_data_json_are_read() {
        let scratch = Scratch::new();
        let image = scratch.iso(
            "config-2",
            &[
                ("openstack/latest/user_data", b"#cloud-config\nhostname: stack\n"),
                ("openstack/latest/meta_data.json", br#"{"uuid": "0a1b", "hostname": "stack-node", "public_keys": {"k": "ssh-rsa AAAAB3 me"}}"#),
            ],
            &["-r", "-J"],
        );
        scratch.add_device("sr0", &image, "");
        let found = ConfigDrive.fetch(&scratch.environment()).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: stack\n");
        assert_eq!(found.metadata.instance_id.as_deref(), Some("0a1b"));
        assert_eq!(found.metadata.public_keys, ["ssh-rsa AAAAB3 me"]);
    }
}
