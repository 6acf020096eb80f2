//! Image manifests, indexes and configs: OCI image spec v1 and Docker's
//! schema 2, which share one JSON shape. Only what basalt needs is read;
//! anything it cannot use safely (schema 1, foreign layers, unknown media
//! types) is refused with a message naming it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_SCHEMA1: &[&str] = &["application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws"];
const CONFIGS: &[&str] = &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// What a registry is told we accept, best first.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and configs larger than this are refused (the distribution
/// spec's registries cap manifests at 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The platform basalt runs.
pub const ARCHITECTURE: &str = "amd64";
pub const OS: &str = "linux";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Vec<Descriptor>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad manifest: {0}")]
pub struct BadManifest(pub String);

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// Parses a manifest or index. `content_type` is the registry's
/// Content-Type header, used when the document does not name its media type.
pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, BadManifest> {
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| BadManifest(format!("not a JSON manifest: {e}")))?;
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim()).filter(|c| !c.is_empty() && *c != "application/json");
    let media_type = match (&raw.media_type, content_type) {
        (Some(declared), _) => declared.clone(),
        (None, Some(header)) => header.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) || raw.schema_version == Some(1) {
        return Err(BadManifest("Docker schema 1 manifests are not supported (push the image again with a current client)".into()));
    }
    if raw.schema_version != Some(2) {
        return Err(BadManifest(format!("schemaVersion is {:?}, expected 2", raw.schema_version)));
    }
    match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => {
            let manifests = raw.manifests.ok_or_else(|| BadManifest(format!("an index ({media_type}) without \"manifests\"")))?;
            Ok(Parsed::Index(manifests))
        }
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let config = raw.config.ok_or_else(|| BadManifest("no \"config\" descriptor".into()))?;
            if !config.media_type.is_empty() && !CONFIGS.contains(&config.media_type.as_str()) {
                return Err(BadManifest(format!("config media type {:?} is not an image config", config.media_type)));
            }
            if config.size > MAX_CONFIG_BYTES {
                return Err(BadManifest(format!("config of {} bytes is over the {MAX_CONFIG_BYTES}-byte limit", config.size)));
            }
            let layers = raw.layers.ok_or_else(|| BadManifest("no \"layers\"".into()))?;
            for layer in &layers {
                layer_compression(&layer.media_type)?;
                if !layer.urls.is_empty() {
                    return Err(BadManifest(format!("layer {} is only available from foreign URLs", layer.digest)));
                }
            }
            Ok(Parsed::Manifest(Manifest { media_type, config, layers }))
        }
        other => Err(BadManifest(format!("unknown media type {other:?}"))),
    }
}

pub fn layer_compression(media_type: &str) -> Result<Compression, BadManifest> {
    Ok(match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            return Err(BadManifest(format!("foreign (non-distributable) layers are not supported: {media_type}")))
        }
        other => return Err(BadManifest(format!("unknown layer media type {other:?}"))),
    })
}

/// The linux/amd64 entry of an index.
pub fn pick_platform(manifests: &[Descriptor]) -> Result<&Descriptor, BadManifest> {
    manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.os == OS && p.architecture == ARCHITECTURE)).ok_or_else(|| {
        let offered: Vec<String> = manifests.iter().filter_map(|m| m.platform.as_ref()).map(|p| format!("{}/{}", p.os, p.architecture)).collect();
        BadManifest(format!("the index has no {OS}/{ARCHITECTURE} image (it offers: {})", if offered.is_empty() { "none".into() } else { offered.join(", ") }))
    })
}

/// The parts of an image config that running it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunDefaults,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDefaults {
    #[serde(rename = "Env", default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_as_default")]
    pub working_dir: String,
    #[serde(rename = "User", default, deserialize_with = "null_as_default")]
    pub user: String,
    #[serde(rename = "Labels", default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

pub fn parse_config(bytes: &[u8], manifest: &Manifest) -> Result<ImageConfig, BadManifest> {
    let config: ImageConfig = serde_json::from_slice(bytes).map_err(|e| BadManifest(format!("image config {}: {e}", manifest.config.digest)))?;
    if config.rootfs.kind != "layers" {
        return Err(BadManifest(format!("image config rootfs.type is {:?}, expected \"layers\"", config.rootfs.kind)));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(BadManifest(format!("the manifest has {} layers but the config lists {} diff_ids", manifest.layers.len(), config.rootfs.diff_ids.len())));
    }
    if (!config.os.is_empty() && config.os != OS) || (!config.architecture.is_empty() && config.architecture != ARCHITECTURE) {
        return Err(BadManifest(format!("the image is for {}/{}, this machine runs {OS}/{ARCHITECTURE}", config.os, config.architecture)));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    #[test]
    fn oci_and_docker_manifests_parse() {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":7}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":9}}]}}"#,
            d('a'),
            d('b')
        );
        let Parsed::Manifest(m) = parse(text.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(m.layers[0].size, 9);
        // OCI without mediaType in the body: from the header.
        let text = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{}","size":9}}]}}"#,
            d('a'),
            d('b')
        );
        assert!(matches!(parse(text.as_bytes(), Some(OCI_MANIFEST)).unwrap(), Parsed::Manifest(_)));
    }

    #[test]
    fn an_index_yields_linux_amd64() {
        let text = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let Parsed::Index(list) = parse(text.as_bytes(), None).unwrap() else { panic!() };
        assert_eq!(pick_platform(&list).unwrap().size, 2);
        assert!(pick_platform(&list[..1]).unwrap_err().0.contains("offers: linux/arm64"));
    }

    #[test]
    fn bad_manifests_are_refused_by_name() {
        assert!(parse(b"{not json", None).unwrap_err().0.starts_with("not a JSON manifest"));
        assert!(parse(br#"{"schemaVersion":1,"name":"x"}"#, None).unwrap_err().0.contains("schema 1"));
        let foreign = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{}","size":7}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":9}}]}}"#,
            d('a'),
            d('b')
        );
        assert!(parse(foreign.as_bytes(), None).unwrap_err().0.contains("foreign"));
        let bad_digest = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"sha256:1","size":7}},"layers":[]}}"#);
        assert!(parse(bad_digest.as_bytes(), None).unwrap_err().0.contains("64 lowercase hex"));
        assert!(parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None).unwrap_err().0.contains("unknown media type"));
    }
}
