//! etcd v2 errors: the numeric codes, messages and HTTP statuses existing
//! clients switch on. Codes and texts are etcd's, so `errorCode` checks in
//! client libraries keep working.

use serde::{Deserialize, Serialize};

/// The etcd v2 error codes this store can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    KeyNotFound = 100,
    TestFailed = 101,
    NotFile = 102,
    NotDir = 104,
    NodeExist = 105,
    RootReadOnly = 107,
    DirNotEmpty = 108,
    PrevValueRequired = 201,
    TtlNaN = 202,
    IndexNaN = 203,
    InvalidField = 209,
    InvalidForm = 210,
    RefreshValue = 211,
    RefreshTtlRequired = 212,
    /// etcd's "Raft Internal Error": here, the storage engine failed.
    Internal = 300,
    EventIndexCleared = 401,
}

impl ErrorCode {
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::KeyNotFound => "Key not found",
            ErrorCode::TestFailed => "Compare failed",
            ErrorCode::NotFile => "Not a file",
            ErrorCode::NotDir => "Not a directory",
            ErrorCode::NodeExist => "Key already exists",
            ErrorCode::RootReadOnly => "Root is read only",
            ErrorCode::DirNotEmpty => "Directory not empty",
            ErrorCode::PrevValueRequired => "PrevValue is Required in POST form",
            ErrorCode::TtlNaN => "The given TTL in POST form is not a number",
            ErrorCode::IndexNaN => "The given index in POST form is not a number",
            ErrorCode::InvalidField => "Invalid field",
            ErrorCode::InvalidForm => "Invalid POST form",
            ErrorCode::RefreshValue => "Value provided on refresh",
            ErrorCode::RefreshTtlRequired => "A TTL must be provided on refresh",
            ErrorCode::Internal => "Raft Internal Error",
            ErrorCode::EventIndexCleared => "The event in requested index is outdated and cleared",
        }
    }

    /// The HTTP status etcd sends with this code (anything unlisted is 400).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::KeyNotFound => 404,
            ErrorCode::NotFile | ErrorCode::DirNotEmpty => 403,
            ErrorCode::TestFailed | ErrorCode::NodeExist => 412,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }

    pub fn from_number(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        [
            KeyNotFound,
            TestFailed,
            NotFile,
            NotDir,
            NodeExist,
            RootReadOnly,
            DirNotEmpty,
            PrevValueRequired,
            TtlNaN,
            IndexNaN,
            InvalidField,
            InvalidForm,
            RefreshValue,
            RefreshTtlRequired,
            Internal,
            EventIndexCleared,
        ]
        .into_iter()
        .find(|c| *c as u32 == code)
    }
}

/// One etcd error as the API reports it: code, cause (usually the key) and
/// the store index at the time of the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {cause} [index {index}]", code.message(), *code as u32)]
pub struct EtcdError {
    pub code: ErrorCode,
    pub cause: String,
    pub index: u64,
}

impl EtcdError {
    pub fn new(code: ErrorCode, cause: impl Into<String>, index: u64) -> EtcdError {
        EtcdError { code, cause: cause.into(), index }
    }

    /// The JSON body etcd sends: `{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}`.
    pub fn to_json(&self) -> String {
        let body = ErrorBody { error_code: self.code as u32, message: self.code.message().to_string(), cause: self.cause.clone(), index: self.index };
        serde_json::to_string(&body).expect("error body serialises")
    }
}

/// The wire form of an error, also what the client module parses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    #[serde(rename = "errorCode")]
    pub error_code: u32,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cause: String,
    #[serde(default)]
    pub index: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_etcd_shape() {
        let e = EtcdError::new(ErrorCode::KeyNotFound, "/foo", 7);
        assert_eq!(e.to_json(), r#"{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}"#);
        assert_eq!(e.code.http_status(), 404);
        assert_eq!(ErrorCode::from_number(401), Some(ErrorCode::EventIndexCleared));
        assert_eq!(ErrorCode::NotDir.http_status(), 400);
    }

    #[test]
    fn empty_cause_is_omitted() {
        let e = EtcdError::new(ErrorCode::InvalidForm, "", 3);
        assert_eq!(e.to_json(), r#"{"errorCode":210,"message":"Invalid POST form","index":3}"#);
    }
}
