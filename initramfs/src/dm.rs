//! Device-mapper through its ioctls on /dev/mapper/control (include/uapi/
//! linux/dm-ioctl.h): create a device, load a table, resume it. Enough for
//! dm-verity without dmsetup or libdevmapper in the initramfs.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

const DM_IOCTL_SIZE: usize = 312;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_READONLY_FLAG: u32 = 1 << 0;
const TARGET_SPEC_SIZE: usize = 40;

const fn iowr(nr: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u64 = iowr(3);
const DM_DEV_SUSPEND: u64 = iowr(6);
const DM_TABLE_LOAD: u64 = iowr(9);

/// One dm_ioctl header followed by payload, 8-byte aligned.
fn request(name: &str, uuid: &str, flags: u32, payload: &[u8], target_count: u32) -> Vec<u8> {
    let mut buf = vec![0u8; DM_IOCTL_SIZE + payload.len()];
    let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_ne_bytes());
    put(&mut buf, 0, 4); // interface version 4.0.0
    let total = buf.len() as u32;
    put(&mut buf, 12, total); // data_size
    put(&mut buf, 16, DM_IOCTL_SIZE as u32); // data_start
    put(&mut buf, 20, target_count);
    put(&mut buf, 28, flags);
    buf[48..48 + name.len().min(DM_NAME_LEN - 1)].copy_from_slice(&name.as_bytes()[..name.len().min(DM_NAME_LEN - 1)]);
    let u = 48 + DM_NAME_LEN;
    buf[u..u + uuid.len().min(DM_UUID_LEN - 1)].copy_from_slice(&uuid.as_bytes()[..uuid.len().min(DM_UUID_LEN - 1)]);
    buf[DM_IOCTL_SIZE..].copy_from_slice(payload);
    buf
}

fn ioctl(ctl: &File, nr: u64, buf: &mut [u8], what: &str) -> io::Result<()> {
    // SAFETY: `buf` starts with a struct dm_ioctl whose data_size is
    // buf.len() (dm_buf sets it), so the kernel reads and writes only inside it.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), nr as _, buf.as_mut_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("device-mapper {what}: {e}")));
    }
    Ok(())
}

/// Creates a read-only device `name` with one target and activates it.
/// Returns the device's minor number (the node is /dev/dm-<minor>).
pub fn create_readonly(name: &str, uuid: &str, start: u64, sectors: u64, target: &str, params: &str) -> io::Result<u32> {
    let ctl = File::options().read(true).write(true).open("/dev/mapper/control")?;
    let mut create = request(name, uuid, 0, &[], 0);
    ioctl(&ctl, DM_DEV_CREATE, &mut create, "create")?;
    let dev = u64::from_ne_bytes(create[40..48].try_into().unwrap());

    let mut spec = vec![0u8; TARGET_SPEC_SIZE];
    spec[0..8].copy_from_slice(&start.to_ne_bytes());
    spec[8..16].copy_from_slice(&sectors.to_ne_bytes());
    spec[24..24 + target.len()].copy_from_slice(target.as_bytes());
    spec.extend_from_slice(params.as_bytes());
    spec.push(0);
    while !spec.len().is_multiple_of(8) {
        spec.push(0);
    }
    let next = spec.len() as u32;
    spec[20..24].copy_from_slice(&next.to_ne_bytes());
    let mut load = request(name, "", DM_READONLY_FLAG, &spec, 1);
    ioctl(&ctl, DM_TABLE_LOAD, &mut load, "table load")?;
    // DM_DEV_SUSPEND without the suspend flag resumes: the loaded table goes live.
    let mut resume = request(name, "", 0, &[], 0);
    ioctl(&ctl, DM_DEV_SUSPEND, &mut resume, "resume")?;
    // Linux's huge_encode_dev: minor's low byte, major, then the rest of minor.
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Ok(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // From strace of `dmsetup create`: DM_DEV_CREATE = 0xc138fd03, DM_TABLE_LOAD = 0xc138fd09.
        assert_eq!(DM_DEV_CREATE, 0xc138fd03);
        assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
        assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
    }

    #[test]
    fn request_layout() {
        let r = request("usr", "BASALT-USR-A", DM_READONLY_FLAG, &[1, 2, 3, 4, 5, 6, 7, 8], 1);
        assert_eq!(r.len(), 320);
        assert_eq!(u32::from_ne_bytes(r[12..16].try_into().unwrap()), 320);
        assert_eq!(&r[48..51], b"usr");
        assert_eq!(&r[176..188], b"BASALT-USR-A");
        assert_eq!(&r[312..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }
}
