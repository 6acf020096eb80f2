//! QEMU's fw_cfg: `-fw_cfg name=opt/org.basalt/user-data,file=user-data`
//! shows up (with the `qemu_fw_cfg` kernel module) as
//! /sys/firmware/qemu_fw_cfg/by_name/opt/org.basalt/user-data/raw.

use std::io::Read;

use super::{Datasource, DatasourceError, Environment, Found, READ_LIMIT};
use crate::metadata::{parse_meta_data, Metadata};

pub const USER_DATA_NAME: &str = "opt/org.basalt/user-data";
pub const META_DATA_NAME: &str = "opt/org.basalt/meta-data";
/// Not user data: the EC2-style metadata service to ask (see `ec2`).
pub const IMDS_URL_NAME: &str = "opt/org.basalt/imds-url";

/// A short text setting from fw_cfg, trimmed; `None` when absent or empty.
pub fn setting(environment: &Environment, name: &str) -> Option<String> {
    let bytes = read_entry(environment, name).ok()??;
    let text = String::from_utf8(bytes).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

pub struct FwCfg;

fn read_entry(environment: &Environment, name: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
    let path = environment.sys.join("firmware/qemu_fw_cfg/by_name").join(name).join("raw");
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(DatasourceError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(READ_LIMIT as u64 + 1).read_to_end(&mut bytes).map_err(|source| DatasourceError::Io { path: path.clone(), source })?;
    if bytes.len() > READ_LIMIT {
        return Err(DatasourceError::TooLarge { what: format!("fw_cfg {name}") });
    }
    Ok(Some(bytes))
}

impl Datasource for FwCfg {
    fn name(&self) -> &'static str {
        "fw_cfg"
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        let user_data = read_entry(environment, USER_DATA_NAME)?;
        let meta_data = read_entry(environment, META_DATA_NAME)?;
        if user_data.is_none() && meta_data.is_none() {
            return Ok(None);
        }
        let metadata = meta_data.map(|bytes| parse_meta_data(&String::from_utf8_lossy(&bytes))).unwrap_or_else(Metadata::default);
        Ok(Some(Found { source: format!("fw_cfg {USER_DATA_NAME}"), user_data, metadata }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn entries_are_read_from_sysfs() {
        let scratch = Scratch::new();
        let environment = scratch.environment();
        assert_eq!(FwCfg.fetch(&environment).unwrap(), None);
        let entry = scratch.sys().join("firmware/qemu_fw_cfg/by_name/opt/org.basalt/user-data");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), b"#cloud-config\nhostname: qemu\n").unwrap();
        let found = FwCfg.fetch(&environment).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: qemu\n");
        assert_eq!(found.metadata, Metadata::default());
    }
}
