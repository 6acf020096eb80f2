//! Image references as users write them: `[REGISTRY/]PATH[:TAG][@DIGEST]`,
//! read the way docker reads them (a first component with a `.` or `:`, or
//! `localhost`, is a registry; otherwise the image is on Docker Hub, where a
//! one-component path lives under `library/`).

use std::fmt;

use crate::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API answers.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    /// `host[:port]` as written (docker.io for Docker Hub).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not an image reference: {why}")]
pub struct BadReference {
    pub text: String,
    pub why: String,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, BadReference> {
        let bad = |why: &str| BadReference { text: text.chars().take(200).collect(), why: why.to_string() };
        if text.is_empty() || text.len() > 512 {
            return Err(bad("it must have 1 to 512 characters"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(Digest::parse(digest).map_err(|e| bad(&e.to_string()))?)),
            None => (text, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let valid =
                !tag.is_empty() && tag.len() <= 128 && tag.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(bad(&format!("{tag:?} is not a tag (letters, digits, '_', '.', '-'; at most 128)")));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("the registry is not a host name"));
        }
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_string() } else { registry };
        let repository = if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path };
        for component in repository.split('/') {
            let valid = !component.is_empty()
                && component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && component.starts_with(|c: char| c.is_ascii_alphanumeric())
                && component.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !valid {
                return Err(bad(&format!("{component:?} is not a repository path component (lowercase letters, digits, '.', '_', '-')")));
            }
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry's manifest endpoint for: the digest if given, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_read_as_docker_reads_them() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("quay.io/coreos/etcd:v2.0.0").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("quay.io", "coreos/etcd", Some("v2.0.0")));
        let r = Reference::parse("10.0.2.2:5000/app/web").unwrap();
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("10.0.2.2:5000", "app/web", Some("latest")));
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{digest}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), digest);
        assert_eq!(Reference::parse("user/app:1").unwrap().repository, "user/app");
    }

    #[test]
    fn bad_references_say_why() {
        assert!(Reference::parse("").is_err());
        assert!(Reference::parse("Busybox").unwrap_err().why.contains("\"Busybox\" is not a repository path component"));
        assert!(Reference::parse("busybox:").unwrap_err().why.contains("is not a tag"));
        assert!(Reference::parse("busybox@sha256:12").unwrap_err().why.contains("64 lowercase hex"));
        assert!(Reference::parse("a//b").is_err());
    }
}
