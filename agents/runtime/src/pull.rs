//! Pulling an image: manifest (an index resolves to linux/amd64), config and
//! layers into the store, each verified by digest, layers unpacked once and
//! shared; the reference is recorded last, so an image is listed only when
//! all of it is there.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::manifest::{self, Parsed};
use crate::reference::Reference;
use crate::registry::Client;
use crate::settings::Settings;
use crate::store::{Store, StoredImage};

#[derive(Debug, Default, Clone)]
pub struct PullReport {
    /// Bytes fetched over the network (manifests excluded).
    pub downloaded: u64,
    /// Bytes of interrupted downloads reused.
    pub resumed: u64,
    /// Blobs already in the store.
    pub blobs_present: usize,
    pub layers_unpacked: usize,
    pub layers_reused: usize,
    pub seconds: f64,
    /// Of `seconds`, the time spent unpacking layers.
    pub unpack_seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Reference(#[from] crate::reference::BadReference),
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{reference}: {source}")]
    Manifest { reference: String, source: manifest::BadManifest },
    #[error("{reference}: the registry sent a manifest with digest {actual}, expected {expected}; refused")]
    ManifestDigest { reference: String, expected: String, actual: Digest },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

pub fn pull(store: &Store, settings: &Settings, text: &str) -> Result<(StoredImage, PullReport), PullError> {
    let started = Instant::now();
    let reference = Reference::parse(text)?;
    let name = reference.to_string();
    let mut client = Client::new(&reference, &settings.registry(&reference.registry))?;
    let manifest_error = |source| PullError::Manifest { reference: name.clone(), source };

    let (mut bytes, mut content_type, header_digest) = client.manifest(&reference.manifest_reference())?;
    let mut digest = Digest::of(&bytes);
    let expected = reference.digest.as_ref().map(|d| d.to_string()).or(header_digest);
    if let Some(expected) = expected {
        if expected != digest.to_string() {
            return Err(PullError::ManifestDigest { reference: name, expected, actual: digest });
        }
    }
    let mut parsed = manifest::parse(&bytes, content_type.as_deref()).map_err(manifest_error)?;
    if let Parsed::Index(list) = &parsed {
        let chosen = manifest::pick_platform(list).map_err(manifest_error)?.clone();
        (bytes, content_type, _) = client.manifest(&chosen.digest.to_string())?;
        digest = Digest::of(&bytes);
        if digest != chosen.digest || bytes.len() as u64 != chosen.size {
            return Err(PullError::ManifestDigest { reference: name, expected: chosen.digest.to_string(), actual: digest });
        }
        parsed = manifest::parse(&bytes, content_type.as_deref()).map_err(manifest_error)?;
    }
    let Parsed::Manifest(image_manifest) = parsed else {
        return Err(manifest_error(manifest::BadManifest("an index pointing at another index".into())));
    };

    let mut report = PullReport::default();
    let mut fetch_blob = |digest: &Digest, size: u64, report: &mut PullReport| -> Result<(), PullError> {
        let ingested = store.ingest(digest, size, |offset| client.blob(digest, offset).map(|s| (s.offset, s.reader)).map_err(|e| e.to_string()))?;
        report.downloaded += ingested.downloaded;
        report.resumed += ingested.resumed;
        report.blobs_present += ingested.present as usize;
        Ok(())
    };
    fetch_blob(&image_manifest.config.digest, image_manifest.config.size, &mut report)?;
    let config = manifest::parse_config(&store.read_blob(&image_manifest.config.digest)?, &image_manifest).map_err(manifest_error)?;
    for (layer, diff_id) in image_manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        fetch_blob(&layer.digest, layer.size, &mut report)?;
        let compression = manifest::layer_compression(&layer.media_type).map_err(manifest_error)?;
        let unpack_started = Instant::now();
        let unpacked = store.unpack_layer(&layer.digest, compression, diff_id)?;
        report.unpack_seconds += unpack_started.elapsed().as_secs_f64();
        if unpacked {
            report.layers_unpacked += 1;
        } else {
            report.layers_reused += 1;
        }
    }
    store.put_bytes(&digest, &bytes)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    store.tag(&name, &digest, now)?;
    report.seconds = started.elapsed().as_secs_f64();
    let image = store.image_by_digest(&name, &digest, now)?;
    Ok((image, report))
}
