//! Rebooting into the new slot: when the strategy and the window allow,
//! and with a FleetLock slot when the strategy takes one.

use crate::fetch::Client;

/// FleetLock's `client_params` body.
fn body(node: &str) -> String {
    serde_json::json!({"client_params": {"node": node, "id": node, "group": "default"}}).to_string()
}

/// Asks the lock server for a reboot slot. Ok(true): granted.
pub fn pre_reboot(client: &Client, url: &str, node: &str) -> Result<bool, String> {
    let (status, text) = client.post_json(&format!("{url}/v1/pre-reboot"), &[("fleet-lock-protocol", "true")], &body(node))?;
    match status {
        200 => Ok(true),
        409 | 423 | 429 => Ok(false),
        s => Err(format!("{url}/v1/pre-reboot: HTTP {s}: {}", text.trim())),
    }
}

/// Gives the slot back once the machine is up again.
pub fn steady_state(client: &Client, url: &str, node: &str) -> Result<(), String> {
    let (status, text) = client.post_json(&format!("{url}/v1/steady-state"), &[("fleet-lock-protocol", "true")], &body(node))?;
    if status == 200 {
        Ok(())
    } else {
        Err(format!("{url}/v1/steady-state: HTTP {status}: {}", text.trim()))
    }
}
