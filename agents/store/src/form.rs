//! Form and query parsing as strict as Go's `ParseForm`: a bad percent
//! escape is an error (etcd answers 210), and so is text that is not UTF-8,
//! because nothing the store keeps may be silently altered.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("invalid URL escape {0:?}")]
    BadEscape(String),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
}

/// Percent-decode (`+` is a space only in forms).
pub fn decode(text: &str, plus_is_space: bool, what: &'static str) -> Result<String, FormError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) if hex.is_some_and(|h| h.bytes().all(|c| c.is_ascii_hexdigit())) => out.push(b),
                    _ => {
                        let end = (i + 3).min(bytes.len());
                        return Err(FormError::BadEscape(String::from_utf8_lossy(&bytes[i..end]).into_owned()));
                    }
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8(what))
}

/// The pairs of an `a=1&b=2` string, in order.
pub fn parse_pairs(text: &str) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for part in text.split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k, true, "a form field name")?, decode(v, true, "a form value")?));
    }
    Ok(out)
}

/// A field whose value does not parse as the type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadValue;

/// All form values: body fields first, then the query's, as Go orders them.
#[derive(Debug, Default, Clone)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn new(body: Vec<(String, String)>, query: Vec<(String, String)>) -> Form {
        let mut pairs = body;
        pairs.extend(query);
        Form { pairs }
    }

    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The first value given for `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Go's `strconv.ParseBool` on the first value; absent is false.
    pub fn bool(&self, key: &str) -> Result<bool, BadValue> {
        match self.value(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(_) => Err(BadValue),
        }
    }

    /// Go's `strconv.ParseUint(v, 10, 64)` on the first value; absent is 0.
    pub fn uint(&self, key: &str) -> Result<u64, BadValue> {
        match self.value(key) {
            None => Ok(0),
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v.parse().map_err(|_| BadValue),
            Some(_) => Err(BadValue),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        assert_eq!(decode("a%20b+c", true, "x").unwrap(), "a b c");
        assert_eq!(decode("a+b", false, "x").unwrap(), "a+b");
        assert_eq!(decode("%zz", true, "x").unwrap_err(), FormError::BadEscape("%zz".into()));
        assert_eq!(decode("%4", true, "x").unwrap_err(), FormError::BadEscape("%4".into()));
        assert_eq!(decode("%ff", true, "x").unwrap_err(), FormError::NotUtf8("x"));
        assert_eq!(decode("%C3%A9", true, "x").unwrap(), "é");
    }

    #[test]
    fn body_wins_over_query_and_go_bools() {
        let f = Form::new(parse_pairs("value=body&ttl=").unwrap(), parse_pairs("value=query&dir=T&n=+1").unwrap());
        assert_eq!(f.value("value"), Some("body"));
        assert_eq!(f.value("ttl"), Some(""));
        assert_eq!(f.bool("dir"), Ok(true));
        assert_eq!(f.bool("nope"), Ok(false));
        assert!(f.uint("n").is_err());
        assert!(f.uint("ttl").is_err());
    }
}
