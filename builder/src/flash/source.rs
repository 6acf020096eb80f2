//! Where an image comes from: a local file or an http(s) URL, plain or
//! zstd-compressed, and the sha256 it must have.

use super::pipeline::Input;
use anyhow::{bail, Context, Result};
use std::path::Path;

pub struct Source {
    pub name: String,
    pub input: Input,
    /// Length of the (possibly compressed) stream, when known.
    pub len: Option<u64>,
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

pub fn open(source: &str) -> Result<Source> {
    if is_url(source) {
        let resp = ureq::get(source).call().with_context(|| format!("downloading {source}"))?;
        let len = resp.body().content_length();
        Ok(Source { name: source.to_string(), input: Input::Stream(Box::new(resp.into_body().into_reader())), len })
    } else {
        let f = std::fs::File::open(source).with_context(|| format!("opening image {source}"))?;
        let meta = f.metadata()?;
        if meta.is_file() {
            Ok(Source { name: source.to_string(), input: Input::File(f, meta.len()), len: Some(meta.len()) })
        } else {
            // A pipe or a device: read in order, of unknown length.
            Ok(Source { name: source.to_string(), input: Input::Stream(Box::new(f)), len: None })
        }
    }
}

/// The expected sha256: `--sha256`, or the `IMAGE.sha256` file (sha256sum
/// format) next to the image, local or at the URL plus `.sha256`.
pub fn expected_sha256(source: &str, given: Option<&str>) -> Result<String> {
    if let Some(h) = given {
        return parse_hex(h).with_context(|| format!("--sha256 {h}"));
    }
    let sums_name = format!("{source}.sha256");
    let text = if is_url(source) {
        ureq::get(&sums_name).call().and_then(|r| r.into_body().read_to_string()).with_context(|| format!("fetching {sums_name} (or pass --sha256 HEX)"))?
    } else {
        std::fs::read_to_string(&sums_name).with_context(|| format!("reading {sums_name}: the image's sha256 is needed to verify it (or pass --sha256 HEX)"))?
    };
    parse_sums_file(&sums_name, &text, file_name(source))
}

fn file_name(source: &str) -> &str {
    source.rsplit('/').next().unwrap_or(source)
}

/// `HEX  NAME` (or just `HEX`); a name that is not the image's means the
/// wrong checksum file.
fn parse_sums_file(path: &str, text: &str, image_name: &str) -> Result<String> {
    let line = text.lines().find(|l| !l.trim().is_empty()).with_context(|| format!("{path} is empty"))?;
    let mut words = line.split_whitespace();
    let hex = parse_hex(words.next().unwrap_or("")).with_context(|| path.to_string())?;
    if let Some(name) = words.next() {
        let name = name.trim_start_matches('*');
        if Path::new(name).file_name().and_then(|n| n.to_str()) != Some(image_name) {
            bail!("{path} is the checksum of {name}, not of {image_name}");
        }
    }
    Ok(hex)
}

fn parse_hex(s: &str) -> Result<String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("a sha256 is 64 hex digits, found {s:?}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sums_files_in_sha256sum_format_are_read() {
        assert_eq!(parse_sums_file("x.sha256", &format!("{ABC}  basalt.img\n"), "basalt.img").unwrap(), ABC);
        assert_eq!(parse_sums_file("x.sha256", &format!("{ABC} *basalt.img\n"), "basalt.img").unwrap(), ABC);
        assert_eq!(parse_sums_file("x.sha256", &format!("{}\n", ABC.to_uppercase()), "basalt.img").unwrap(), ABC);
    }

    #[test]
    fn a_checksum_of_another_file_or_garbage_is_refused() {
        let err = parse_sums_file("x.sha256", &format!("{ABC}  other.img\n"), "basalt.img").unwrap_err();
        assert!(err.to_string().contains("checksum of other.img, not of basalt.img"), "{err}");
        let err = parse_sums_file("x.sha256", "abc  basalt.img\n", "basalt.img").unwrap_err();
        assert!(format!("{err:#}").contains("64 hex digits"), "{err:#}");
    }

    #[test]
    fn a_missing_sums_file_says_how_to_pass_the_hash() {
        let err = expected_sha256("/nonexistent/basalt.img", None).unwrap_err();
        assert!(format!("{err:#}").contains("--sha256"), "{err:#}");
    }
}
