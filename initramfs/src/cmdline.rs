//! The kernel command line: what the UKI says about its slot.

use basalt_disk::layout::Slot;
use basalt_disk::Guid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    pub slot: Slot,
    pub usr_partuuid: Guid,
    pub usr_hash: [u8; 32],
    pub usr_salt: Vec<u8>,
    pub usr_blocks: u64,
}

pub fn param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().filter_map(|w| w.split_once('=')).filter(|(k, _)| *k == key).map(|(_, v)| v).next_back()
}

impl BootParams {
    pub fn parse(cmdline: &str) -> Result<BootParams, String> {
        let need = |k: &str| param(cmdline, k).ok_or_else(|| format!("kernel command line lacks {k}="));
        let slot = Slot::parse(need("basalt.slot")?).ok_or("basalt.slot must be A or B")?;
        let usr = need("basalt.usr")?;
        let uuid = usr.strip_prefix("PARTUUID=").ok_or_else(|| format!("basalt.usr={usr}: expected PARTUUID=<uuid>"))?;
        let usr_partuuid = uuid.parse::<Guid>().map_err(|e| format!("basalt.usr: {e}"))?;
        let hash = basalt_verity::parse_hex(need("basalt.usr_hash")?).filter(|h| h.len() == 32).ok_or("basalt.usr_hash must be 64 hex digits")?;
        let salt_text = need("basalt.usr_salt")?;
        let usr_salt = if salt_text == "-" { Vec::new() } else { basalt_verity::parse_hex(salt_text).ok_or("basalt.usr_salt must be hex")? };
        let usr_blocks = need("basalt.usr_blocks")?.parse().map_err(|_| "basalt.usr_blocks must be a number".to_string())?;
        Ok(BootParams { slot, usr_partuuid, usr_hash: hash.try_into().unwrap(), usr_salt, usr_blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_slot_cmdline() {
        let hash = "ab".repeat(32);
        let c = format!("console=ttyS0 basalt.slot=A basalt.usr=PARTUUID=c12a7328-f81f-11d2-ba4b-00a0c93ec93b basalt.usr_hash={hash} basalt.usr_salt=0102 basalt.usr_blocks=77 quiet");
        let p = BootParams::parse(&c).unwrap();
        assert_eq!((p.slot, p.usr_blocks, p.usr_salt.clone()), (Slot::A, 77, vec![1, 2]));
        assert_eq!(p.usr_partuuid.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        assert_eq!(BootParams::parse("quiet").unwrap_err(), "kernel command line lacks basalt.slot=");
        assert!(BootParams::parse("basalt.slot=C").unwrap_err().contains("A or B"));
        let e = BootParams::parse("basalt.slot=A basalt.usr=/dev/vda3").unwrap_err();
        assert!(e.contains("PARTUUID"), "{e}");
    }
}
