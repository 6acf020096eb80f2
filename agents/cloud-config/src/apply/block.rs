//! A block of lines that cloud-config owns inside a file others may edit too
//! (authorized_keys, /etc/environment): replaced whole on each run, the
//! lines around it left alone.

const BEGIN: &str = "# BEGIN basalt-cloud-config (managed; edits inside this block are replaced)";
const END: &str = "# END basalt-cloud-config";

/// `existing` with the managed block replaced by `lines` (appended when absent).
pub fn replace(existing: &str, lines: &[String]) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut placed = false;
    let block = || {
        let mut block = format!("{BEGIN}\n");
        for line in lines {
            block.push_str(line);
            block.push('\n');
        }
        block.push_str(END);
        block.push('\n');
        block
    };
    for line in existing.lines() {
        if line == BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if line == END {
                inside = false;
                if !placed {
                    out.push_str(&block());
                    placed = true;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(&block());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_replaced_and_the_rest_kept() {
        let first = replace("ssh-rsa AAAAB3 mine\n", &["ssh-ed25519 AAAAC3 a".to_string()]);
        assert_eq!(first, format!("ssh-rsa AAAAB3 mine\n{BEGIN}\nssh-ed25519 AAAAC3 a\n{END}\n"));
        let second = replace(&(first.clone() + "ssh-rsa AAAAB3 later\n"), &["ssh-ed25519 AAAAC3 b".to_string()]);
        assert_eq!(second, format!("ssh-rsa AAAAB3 mine\n{BEGIN}\nssh-ed25519 AAAAC3 b\n{END}\nssh-rsa AAAAB3 later\n"));
        assert_eq!(replace(&first, &["ssh-ed25519 AAAAC3 a".to_string()]), first);
    }
}
