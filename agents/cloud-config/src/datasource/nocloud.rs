//! NoCloud: a vfat or iso9660 filesystem labelled `cidata` holding
//! `user-data` and `meta-data` at its root.

use super::{find_filesystem, Datasource, DatasourceError, Environment, Found};
use crate::metadata::parse_meta_data;

pub const LABEL: &str = "cidata";

pub struct NoCloud;

impl Datasource for NoCloud {
    fn name(&self) -> &'static str {
        "nocloud"
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        let Some((device, filesystem)) = find_filesystem(environment, LABEL, |_| false) else { return Ok(None) };
        let user_data = device.read(filesystem, "user-data")?;
        let metadata = device.read(filesystem, "meta-data")?.map(|bytes| parse_meta_data(&String::from_utf8_lossy(&bytes))).unwrap_or_default();
        Ok(Some(Found { source: format!("nocloud {}", device.path.display()), user_data, metadata }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn a_vfat_seed_gives_user_data_and_meta_data() {
        let scratch = Scratch::new();
        let environment = scratch.environment();
        assert_eq!(NoCloud.fetch(&environment).unwrap(), None);
        let image = scratch.vfat("cidata", &[("user-data", b"#cloud-config\nhostname: seeded\n"), ("meta-data", b"instance-id: iid-local01\nlocal-hostname: seed\n")]);
        scratch.add_device("vdb", &image, "");
        let found = NoCloud.fetch(&environment).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: seeded\n");
        assert_eq!(found.metadata.instance_id.as_deref(), Some("iid-local01"));
        assert!(found.source.ends_with("/dev/vdb"), "{}", found.source);
    }

    #[test]
    fn an_iso_seed_works_too() {
        let scratch = Scratch::new();
        let image = scratch.iso("cidata", &[("user-data", b"#!/bin/sh\necho hi\n"), ("meta-data", b"instance-id: iid-cd\n")], &["-r", "-J"]);
        scratch.add_device("sr0", &image, "");
        let found = NoCloud.fetch(&scratch.environment()).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(found.metadata.instance_id.as_deref(), Some("iid-cd"));
    }
}
