//! Pulls from a real registry (Debian's docker-registry on loopback) into the
//! content store: images made here from the pinned static busybox, pushed
//! with skopeo; anonymous, basic and token authentication; an index resolved
//! to linux/amd64; gzip and zstd layers; shared and reused layers; prune; and
//! damaged content (digest mismatch, truncated blob, bad manifest) refused
//! with nothing half-written left visible.

use std::path::Path;

use basalt_qemu_tests::registry::{busybox, busybox_layer, tar_layer, Auth, Compression, LayerFile, Layout, Registry, RunConfig};
use basalt_runtime::digest::Digest;
use basalt_runtime::pull::{pull, PullError};
use basalt_runtime::settings::{RegistrySettings, Settings};
use basalt_runtime::store::Store;

fn insecure(registry: &Registry, credentials: Option<(&str, &str)>) -> Settings {
    let mut settings = Settings::default();
    settings.registries.insert(registry.address(), RegistrySettings { insecure: true, ca: None, username: credentials.map(|c| c.0.to_string()), password: credentials.map(|c| c.1.to_string()) });
    settings
}

fn run(cmd: &[&str]) -> RunConfig {
    RunConfig { cmd: cmd.iter().map(|s| s.to_string()).collect(), env: vec!["PATH=/bin".into()], ..RunConfig::default() }
}

/// Blob and layer names present in the store.
fn listing(store: &Store, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.root().join(dir)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn is_whiteout(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

#[test]
fn images_are_pulled_verified_shared_and_pruned() {
    let registry = Registry::start(Auth::Anonymous).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout")).unwrap();
    let base = busybox_layer(&busybox().unwrap()).unwrap();
    // A second layer deletes a file and makes a directory opaque.
    let top = tar_layer(&[
        LayerFile::File { path: "etc/motd".into(), mode: 0o644, data: b"hello from the top layer\n".to_vec() },
        LayerFile::File { path: "etc/.wh.group".into(), mode: 0o644, data: vec![] },
        LayerFile::Dir { path: "root".into() },
        LayerFile::File { path: "root/.wh..wh..opq".into(), mode: 0o644, data: vec![] },
    ])
    .unwrap();
    let gzip_image = layout.image(&[(base.clone(), Compression::Gzip), (top.clone(), Compression::Zstd)], &run(&["sh"]), "amd64").unwrap();
    layout.tag_manifest("two", &gzip_image);
    // The same base, differently compressed, in another image: shares the unpacked layer.
    let zstd_image = layout.image(&[(base.clone(), Compression::Zstd)], &run(&["true"]), "amd64").unwrap();
    let arm_image = layout.image(&[(base.clone(), Compression::Gzip)], &run(&["true"]), "arm64").unwrap();
    layout.tag_index("multi", &[("arm64", &arm_image), ("amd64", &zstd_image)]).unwrap();
    layout.finish().unwrap();
    registry.push(&layout.dir, "two", "test/busybox").unwrap();
    registry.push(&layout.dir, "multi", "test/busybox").unwrap();

    let store = Store::open(&work.path().join("store")).unwrap();
    let settings = insecure(&registry, None);
    let two = format!("{}/test/busybox:two", registry.address());
    let (image, report) = pull(&store, &settings, &two).unwrap();
    assert_eq!(image.manifest_digest.to_string(), gzip_image.manifest);
    assert_eq!(image.config.config.cmd, ["sh"]);
    assert_eq!((report.layers_unpacked, report.layers_reused), (2, 0));
    let base_dir = store.layer_path(&Digest::parse(&gzip_image.diff_ids[0]).unwrap());
    let top_dir = store.layer_path(&Digest::parse(&gzip_image.diff_ids[1]).unwrap());
    assert_eq!(std::fs::read(base_dir.join("bin/busybox")).unwrap().len(), busybox().unwrap().len());
    assert_eq!(std::fs::read_link(base_dir.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert!(is_whiteout(&top_dir.join("etc/group")), "a .wh. file becomes an overlay whiteout");
    let mut opaque = [0u8; 4];
    let attr = std::ffi::CString::new(top_dir.join("root").to_str().unwrap()).unwrap();
    let n = unsafe { libc::lgetxattr(attr.as_ptr(), c"trusted.overlay.opaque".as_ptr(), opaque.as_mut_ptr().cast(), 4) };
    assert_eq!(&opaque[..n.max(0) as usize], b"y", "an opaque marker becomes trusted.overlay.opaque");

    // Pulling again downloads nothing.
    let (_, again) = pull(&store, &settings, &two).unwrap();
    assert_eq!((again.downloaded, again.blobs_present, again.layers_reused), (0, 3, 2));

    // The index resolves to the amd64 image, whose zstd layer unpacks to the
    // same content as the gzip one: the unpacked layer is reused.
    let multi = format!("{}/test/busybox:multi", registry.address());
    let (image, report) = pull(&store, &settings, &multi).unwrap();
    assert_eq!(image.manifest_digest.to_string(), zstd_image.manifest);
    assert_eq!((report.layers_unpacked, report.layers_reused), (0, 1));
    assert_eq!(listing(&store, "layers/sha256").len(), 2);

    // By digest too.
    let by_digest = format!("{}/test/busybox@{}", registry.address(), gzip_image.manifest);
    assert_eq!(pull(&store, &settings, &by_digest).unwrap().0.manifest_digest.to_string(), gzip_image.manifest);
    assert!(store.untag(&by_digest).unwrap());

    // Prune keeps what tagged images need; untagging one frees only its own blobs.
    let pruned = store.prune(&[]).unwrap();
    assert!(pruned.blobs.is_empty() && pruned.layers.is_empty(), "{pruned:?}");
    assert!(store.untag(&format!("{}/test/busybox:two", registry.address())).unwrap());
    let kept_by_container = store.prune(&[Digest::parse(&gzip_image.manifest).unwrap()]).unwrap();
    assert!(kept_by_container.blobs.is_empty(), "a container's image stays: {kept_by_container:?}");
    let pruned = store.prune(&[]).unwrap();
    let mut gone: Vec<String> = pruned.blobs.iter().map(|d| d.to_string()).collect();
    gone.sort();
    let mut expected = vec![gzip_image.manifest.clone(), gzip_image.config.clone(), gzip_image.layers[0].clone(), gzip_image.layers[1].clone()];
    expected.sort();
    assert_eq!(gone, expected);
    assert_eq!(pruned.layers.iter().map(|d| d.to_string()).collect::<Vec<_>>(), [gzip_image.diff_ids[1].clone()]);
    assert!(base_dir.is_dir(), "the shared base layer stays for the other image");
    assert!(store.image(&multi).unwrap().is_some());

    // An unknown image and an unknown tag: named errors, nothing recorded.
    let err = pull(&store, &settings, &format!("{}/test/nothing:1", registry.address())).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let err = pull(&store, &settings, &format!("{}/test/busybox:nope", registry.address())).unwrap_err();
    assert!(err.to_string().contains("manifest nope not found"), "{err}");
    assert!(pull(&store, &settings, "Bad Reference").unwrap_err().to_string().contains("is not an image reference"));
}

#[test]
fn damaged_content_is_refused_and_nothing_half_written_is_visible() {
    let registry = Registry::start(Auth::Anonymous).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout")).unwrap();
    let base = busybox_layer(&busybox().unwrap()).unwrap();
    let image = layout.image(&[(base, Compression::Gzip)], &run(&["sh"]), "amd64").unwrap();
    layout.tag_manifest("1", &image);
    let small = layout.image(&[(tar_layer(&[LayerFile::File { path: "hello".into(), mode: 0o644, data: b"hi\n".to_vec() }]).unwrap(), Compression::Gzip)], &run(&["sh"]), "amd64").unwrap();
    layout.tag_manifest("small", &small);
    layout.finish().unwrap();
    registry.push(&layout.dir, "1", "test/damaged").unwrap();
    registry.push(&layout.dir, "small", "test/damaged").unwrap();
    let settings = insecure(&registry, None);
    let store = Store::open(&work.path().join("store")).unwrap();
    let reference = format!("{}/test/damaged:1", registry.address());
    let layer_hex = image.layers[0].strip_prefix("sha256:").unwrap();
    let layer_file = registry.blob_file(layer_hex);
    let original = std::fs::read(&layer_file).unwrap();

    // One flipped byte: the registry serves it, we refuse it.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x40;
    std::fs::write(&layer_file, &flipped).unwrap();
    let err = pull(&store, &settings, &reference).unwrap_err();
    assert!(matches!(&err, PullError::Store(basalt_runtime::store::StoreError::DigestMismatch { .. })), "{err}");
    assert!(err.to_string().contains(&format!("blob {}: downloaded content has digest", image.layers[0])), "{err}");
    assert!(listing(&store, "ingest").is_empty(), "bad bytes are not kept");

    // Truncated: refused; what arrived is kept to resume from, never shown as a blob.
    std::fs::write(&layer_file, &original[..original.len() / 3]).unwrap();
    let err = pull(&store, &settings, &reference).unwrap_err();
    assert_eq!(err.to_string(), format!("blob {}: truncated, got {} of {} bytes", image.layers[0], original.len() / 3, original.len()));
    assert!(!store.has_blob(&Digest::parse(&image.layers[0]).unwrap()));
    assert!(store.image(&reference).unwrap().is_none());
    assert_eq!(listing(&store, "layers/sha256"), Vec::<String>::new());

    // Repaired: the pull resumes from the bytes it had.
    std::fs::write(&layer_file, &original).unwrap();
    let (_, report) = pull(&store, &settings, &reference).unwrap();
    assert_eq!(report.resumed, (original.len() / 3) as u64);
    assert_eq!(report.downloaded, (original.len() - original.len() / 3) as u64, "only the rest of the layer is fetched");
    assert!(listing(&store, "ingest").is_empty());

    // A bad manifest (damaged in the registry's storage): refused by name.
    let manifest_file = registry.blob_file(small.manifest.strip_prefix("sha256:").unwrap());
    let text = std::fs::read_to_string(&manifest_file).unwrap();
    std::fs::write(&manifest_file, text.replace("\"layers\"", "\"lairs\"")).unwrap();
    let err = pull(&store, &settings, &format!("{}/test/damaged:small", registry.address())).unwrap_err();
    assert!(err.to_string().contains("digest"), "the registry's own digest header no longer matches: {err}");
    let err = pull(&store, &settings, &format!("{}/test/damaged@{}", registry.address(), small.manifest)).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
    assert!(store.image(&format!("{}/test/damaged:small", registry.address())).unwrap().is_none());
}

#[test]
fn basic_and_token_authentication() {
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout")).unwrap();
    let image = layout.image(&[(tar_layer(&[LayerFile::File { path: "hello".into(), mode: 0o644, data: b"hi\n".to_vec() }]).unwrap(), Compression::Gzip)], &run(&["sh"]), "amd64").unwrap();
    layout.tag_manifest("1", &image);
    layout.finish().unwrap();
    for (name, auth) in [("basic", Auth::Basic { user: "robot".into(), password: "s3cret".into() }), ("token", Auth::Token { user: "robot".into(), password: "s3cret".into() })] {
        let registry = Registry::start(auth).unwrap();
        registry.push(&layout.dir, "1", "private/app").unwrap();
        let store = Store::open(&work.path().join(format!("store-{name}"))).unwrap();
        let reference = format!("{}/private/app:1", registry.address());
        let err = pull(&store, &insecure(&registry, None), &reference).unwrap_err();
        assert!(err.to_string().contains("access denied to private/app"), "{name}: {err}");
        let err = pull(&store, &insecure(&registry, Some(("robot", "wrong"))), &reference).unwrap_err();
        assert!(err.to_string().contains("access denied"), "{name}: {err}");
        let (pulled, _) = pull(&store, &insecure(&registry, Some(("robot", "s3cret"))), &reference).unwrap();
        assert_eq!(pulled.manifest_digest.to_string(), image.manifest, "{name}");
    }
}
