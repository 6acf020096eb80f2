//! The EBS direct APIs (REST + JSON): write a snapshot block by block, as
//! coldsnap does, without a volume, an instance, S3 or VM Import.

use super::client::Client;
use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{json, Value};

/// The block size of EBS direct writes.
pub const BLOCK_SIZE: usize = 512 * 1024;

pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

pub struct StartedSnapshot {
    pub snapshot_id: String,
    pub block_size: u64,
}

pub fn start_snapshot(c: &Client, volume_gib: u64, description: &str, tags: &[(String, String)], client_token: &str) -> Result<StartedSnapshot> {
    let body = json!({
        "VolumeSize": volume_gib,
        "Description": description,
        "ClientToken": client_token,
        // Minutes an unfinished snapshot may wait for more blocks (and for a resumed upload).
        "Timeout": 4320,
        "Tags": tags.iter().map(|(k, v)| json!({"Key": k, "Value": v})).collect::<Vec<_>>(),
    });
    let r = c.call_ok("StartSnapshot", "POST", "/snapshots", &[], &[("content-type".into(), "application/json".into())], body.to_string().as_bytes())?;
    let v: Value = serde_json::from_slice(&r.body).context("StartSnapshot answer")?;
    Ok(StartedSnapshot { snapshot_id: v["SnapshotId"].as_str().context("StartSnapshot answer has no SnapshotId")?.to_string(), block_size: v["BlockSize"].as_u64().unwrap_or(BLOCK_SIZE as u64) })
}

/// Writes one block; `checksum` is the base64 sha256 of `data`.
pub fn put_block(c: &Client, snapshot_id: &str, index: u64, data: &[u8], checksum: &str, progress_percent: u32) -> Result<()> {
    let headers = [
        ("content-type".to_string(), "application/octet-stream".to_string()),
        ("x-amz-data-length".to_string(), data.len().to_string()),
        ("x-amz-checksum".to_string(), checksum.to_string()),
        ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
        ("x-amz-progress".to_string(), progress_percent.min(100).to_string()),
    ];
    c.call_ok(&format!("PutSnapshotBlock {index}"), "PUT", &format!("/snapshots/{snapshot_id}/blocks/{index}"), &[], &headers, data)?;
    Ok(())
}

/// Seals the snapshot. `aggregate` is the base64 sha256 of the blocks'
/// raw sha256 digests concatenated in block order (LINEAR aggregation).
pub fn complete_snapshot(c: &Client, snapshot_id: &str, changed_blocks: u64, aggregate: &str) -> Result<String> {
    let headers = [
        ("x-amz-changedblockscount".to_string(), changed_blocks.to_string()),
        ("x-amz-checksum".to_string(), aggregate.to_string()),
        ("x-amz-checksum-algorithm".to_string(), "SHA256".to_string()),
        ("x-amz-checksum-aggregation-method".to_string(), "LINEAR".to_string()),
    ];
    let r = c.call_ok("CompleteSnapshot", "POST", &format!("/snapshots/completion/{snapshot_id}"), &[], &headers, b"")?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Ok(v["Status"].as_str().unwrap_or("unknown").to_string())
}
