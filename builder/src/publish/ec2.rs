//! The EC2 query API (form-encoded POST, XML answers): the few actions
//! that turn a snapshot into an AMI.

use super::client::Client;
use anyhow::{bail, Result};

const VERSION: &str = "2016-11-15";

/// The text of the first `<tag>...</tag>` in an EC2 answer.
pub fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

pub fn action(c: &Client, action: &str, params: &[(String, String)]) -> Result<String> {
    let mut form = vec![("Action".to_string(), action.to_string()), ("Version".to_string(), VERSION.to_string())];
    form.extend(params.iter().cloned());
    let body = super::sigv4::canonical_query(&form);
    let r = c.call_ok(action, "POST", "/", &[], &[("content-type".into(), "application/x-www-form-urlencoded; charset=utf-8".into())], body.as_bytes())?;
    Ok(r.text())
}

fn p(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn tag_params(resource: &str, tags: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if tags.is_empty() {
        return out;
    }
    out.push(p("TagSpecification.1.ResourceType", resource));
    for (i, (k, v)) in tags.iter().enumerate() {
        out.push(p(&format!("TagSpecification.1.Tag.{}.Key", i + 1), k));
        out.push(p(&format!("TagSpecification.1.Tag.{}.Value", i + 1), v));
    }
    out
}

pub struct ImageSpec<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub snapshot_id: &'a str,
    pub volume_gib: u64,
    pub tags: &'a [(String, String)],
}

/// The parameters of RegisterImage: UEFI, ENA, IMDSv2 only, x86_64, the
/// snapshot as /dev/xvda (gp3, deleted with the instance).
pub fn register_image_params(spec: &ImageSpec) -> Vec<(String, String)> {
    let mut params = vec![
        p("Name", spec.name),
        p("Description", spec.description),
        p("Architecture", "x86_64"),
        p("VirtualizationType", "hvm"),
        p("BootMode", "uefi"),
        p("EnaSupport", "true"),
        p("ImdsSupport", "v2.0"),
        p("RootDeviceName", "/dev/xvda"),
        p("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        p("BlockDeviceMapping.1.Ebs.SnapshotId", spec.snapshot_id),
        p("BlockDeviceMapping.1.Ebs.VolumeSize", spec.volume_gib),
        p("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        p("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ];
    params.extend(tag_params("image", spec.tags));
    params
}

pub fn register_image(c: &Client, spec: &ImageSpec) -> Result<String> {
    let xml = action(c, "RegisterImage", &register_image_params(spec))?;
    match xml_text(&xml, "imageId") {
        Some(id) => Ok(id.to_string()),
        None => bail!("RegisterImage answer has no imageId: {xml}"),
    }
}

/// Waits until the snapshot is `completed` (RegisterImage needs that).
pub fn wait_snapshot_completed(c: &Client, snapshot_id: &str, timeout: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let xml = action(c, "DescribeSnapshots", &[p("SnapshotId.1", snapshot_id)])?;
        match xml_text(&xml, "status") {
            Some("completed") => return Ok(()),
            Some("error") => bail!("snapshot {snapshot_id} is in state error: {}", xml_text(&xml, "stateMessage").unwrap_or("")),
            _ => {}
        }
        if std::time::Instant::now() > deadline {
            bail!("snapshot {snapshot_id} did not complete within {timeout:?}");
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

/// Copies an AMI into the client's region; returns the new AMI id there.
pub fn copy_image(c: &Client, source_region: &str, source_image: &str, name: &str, description: &str, tags: &[(String, String)]) -> Result<String> {
    let mut params = vec![p("SourceRegion", source_region), p("SourceImageId", source_image), p("Name", name), p("Description", description)];
    params.extend(tag_params("image", tags));
    let xml = action(c, "CopyImage", &params)?;
    xml_text(&xml, "imageId").map(str::to_string).ok_or_else(|| anyhow::anyhow!("CopyImage answer has no imageId: {xml}"))
}

/// Grants launch permission to an account id, or to everyone for `all`.
pub fn add_launch_permission(c: &Client, image_id: &str, who: &str) -> Result<()> {
    let grant = if who == "all" { p("LaunchPermission.Add.1.Group", "all") } else { p("LaunchPermission.Add.1.UserId", who) };
    action(c, "ModifyImageAttribute", &[p("ImageId", image_id), grant])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_image_asks_for_uefi_ena_imdsv2_and_the_snapshot_as_root() {
        let tags = vec![("Name".to_string(), "basalt".to_string())];
        let params = register_image_params(&ImageSpec { name: "n", description: "d", snapshot_id: "snap-1", volume_gib: 4, tags: &tags });
        let get = |k: &str| params.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BootMode"), Some("uefi"));
        assert_eq!(get("EnaSupport"), Some("true"));
        assert_eq!(get("ImdsSupport"), Some("v2.0"));
        assert_eq!(get("Architecture"), Some("x86_64"));
        assert_eq!(get("RootDeviceName"), get("BlockDeviceMapping.1.DeviceName"));
        assert_eq!(get("BlockDeviceMapping.1.Ebs.SnapshotId"), Some("snap-1"));
        assert_eq!(get("TagSpecification.1.Tag.1.Key"), Some("Name"));
    }

    #[test]
    fn xml_text_finds_the_first_element() {
        let xml = "<RegisterImageResponse><requestId>r</requestId><imageId>ami-123</imageId></RegisterImageResponse>";
        assert_eq!(xml_text(xml, "imageId"), Some("ami-123"));
        assert_eq!(xml_text(xml, "snapshotId"), None);
    }
}
