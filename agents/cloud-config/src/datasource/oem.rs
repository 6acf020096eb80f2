//! The OEM partition (GPT partition 6, named `OEM`) holds a vfat
//! filesystem labelled `OEM`; `cloud-config.yml` at its root carries the
//! platform's defaults, applied before the user's own user data.

use super::{find_filesystem, Datasource, DatasourceError, Environment, Filesystem, Found};

pub const LABEL: &str = "OEM";
pub const FILE: &str = "cloud-config.yml";

pub struct Oem;

impl Datasource for Oem {
    fn name(&self) -> &'static str {
        "oem"
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        // The filesystem label or the GPT partition name: either marks it.
        let found = find_filesystem(environment, LABEL, |device| device.partition_name.as_deref() == Some(LABEL));
        let Some((device, filesystem)) = found.filter(|(_, filesystem)| *filesystem == Filesystem::Vfat) else { return Ok(None) };
        let Some(user_data) = device.read(filesystem, FILE)? else { return Ok(None) };
        Ok(Some(Found { source: format!("oem {}", device.path.display()), user_data: Some(user_data), metadata: Default::default() }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn the_partition_name_is_enough() {
        let scratch = Scratch::new();
        let image = scratch.vfat("VENDOR", &[(FILE, b"#cloud-config\nhostname: oem\n")]);
        scratch.add_device("vda6", &image, "PARTN=6\nPARTNAME=OEM\n");
        let found = Oem.fetch(&scratch.environment()).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: oem\n");
    }

    #[test]
    fn an_oem_filesystem_without_the_file_is_no_source() {
        let scratch = Scratch::new();
        let image = scratch.vfat("OEM", &[("other.txt", b"x")]);
        scratch.add_device("vda6", &image, "");
        assert_eq!(Oem.fetch(&scratch.environment()).unwrap(), None);
    }
}
