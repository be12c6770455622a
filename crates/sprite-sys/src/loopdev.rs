//! Loop devices by ioctl, as `losetup` does it but without running it: a free device from
//! `/dev/loop-control`, configured over a file in one `LOOP_CONFIGURE`.
//!
//! Devices are made auto-clearing: the kernel detaches one when its last user goes (the
//! mount over it, or the [`LoopDevice`] handle if nothing mounted it), so an unmount needs
//! no detach and a crash between the two leaks nothing.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_DIRECT_IO: libc::c_ulong = 0x4C08;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How a file is looped.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// The device refuses writes.
    pub read_only: bool,
    /// Reads and writes bypass the page cache of the backing file (no second cache
    /// under the filesystem's own). Falls back to buffered I/O where the file refuses it,
    /// as `losetup --direct-io=on` does.
    pub direct_io: bool,
}

/// A configured loop device, open. Dropping it closes the handle; the device itself
/// goes when its last user does (it auto-clears).
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    /// Held open until the device is in use (a mount): an auto-clearing device with no
    /// user at all would go at once.
    _device: File,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Loops `file` on a free device. Two processes taking the same free device is resolved
/// by trying the next one.
pub fn attach(file: &Path, options: LoopOptions) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .open(file)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let index = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if index < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{index}"));
        let device = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(&path)?;
        match configure(&device, &backing, options, options.direct_io) {
            Ok(()) => {
                return Ok(LoopDevice {
                    path,
                    _device: device,
                })
            }
            // Taken by another process between the two calls: try the next free one.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(error) if options.direct_io && error.raw_os_error() == Some(libc::EINVAL) => {
                configure(&device, &backing, options, false)?;
                // SAFETY: LOOP_SET_DIRECT_IO takes an unsigned long by value.
                let _ = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_DIRECT_IO as _, 1) };
                return Ok(LoopDevice {
                    path,
                    _device: device,
                });
            }
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "every free loop device was taken by another process first",
    ))
}

fn configure(
    device: &File,
    backing: &File,
    options: LoopOptions,
    direct_io: bool,
) -> io::Result<()> {
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if options.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            sizelimit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags,
            file_name: [0; 64],
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `LoopConfig` lays out
    // exactly (repr(C), the uapi field types); the kernel copies it before returning.
    let result = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn clear(device: &File) -> io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD as _, 0) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the loop device at `path` (it goes once its last user closes it); fine if it
/// is not attached.
pub fn detach(path: &Path) -> io::Result<()> {
    let device = OpenOptions::new().read(true).open(path)?;
    match clear(&device) {
        Err(error) if error.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        other => other,
    }
}

/// Every attached loop device with its backing file as the kernel shows it (read from
/// sysfs, not by running `losetup`). For cleaning up after a crash; nothing on a hot path
/// should scan every device.
pub fn list() -> Vec<(PathBuf, String)> {
    let mut devices = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return devices;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(back) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            devices.push((
                PathBuf::from(format!("/dev/{name}")),
                back.trim_end_matches('\n').to_string(),
            ));
        }
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_the_kernels_layout() {
        // `struct loop_info64` is 232 bytes and `struct loop_config` 304 on every
        // architecture (all fields are fixed-size and naturally aligned).
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn a_file_loops_and_the_device_clears_itself() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: needs root and loop devices");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("disk");
        std::fs::write(&file, vec![7u8; 1 << 20]).expect("write");
        let device = attach(&file, LoopOptions::default()).expect("attach");
        let path = device.path().to_path_buf();
        let back = list()
            .into_iter()
            .find(|(p, _)| *p == path)
            .map(|(_, back)| back);
        assert_eq!(back.as_deref(), Some(&*file.to_string_lossy()));
        let mut bytes = [0u8; 4];
        std::io::Read::read_exact(&mut File::open(&path).expect("open"), &mut bytes).expect("read");
        assert_eq!(bytes, [7; 4]);
        drop(device);
        // Auto-clear runs when the last handle closes.
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        for _ in 0..100 {
            if !backing.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!backing.exists(), "{} still attached", path.display());
    }
}
