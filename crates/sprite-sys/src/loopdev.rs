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

/// The major number of loop devices.
const LOOP_MAJOR: u32 = 7;

/// How many released devices [`attach`] remembers.
const RELEASED_KEPT: usize = 64;

/// Devices this process let go of (see [`released`]), newest last: [`attach`] tries them
/// before asking the kernel, whose `LOOP_CTL_GET_FREE` walks every loop device from the
/// first until an unbound one (with 1,000 sprites' disks looped, about 0.4 ms a call).
static RELEASED: parking_lot::Mutex<Vec<u32>> = parking_lot::Mutex::new(Vec::new());

/// The loop device index of the filesystem mounted at `path`, if it is on one.
pub fn index_of_mount(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(device), libc::minor(device));
    if major != LOOP_MAJOR {
        return None;
    }
    // The minor number is the index only without partitions (`max_part`): the kernel's
    // name for the device says.
    let link = std::fs::read_link(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    link.file_name()?
        .to_str()?
        .strip_prefix("loop")?
        .parse()
        .ok()
}

/// Notes that loop device `index` was let go of (its mount is gone; auto-clearing, it
/// is free once nothing uses it), so the next [`attach`] tries it first.
pub fn released(index: u32) {
    let mut released = RELEASED.lock();
    released.retain(|&i| i != index);
    if released.len() >= RELEASED_KEPT {
        released.remove(0);
    }
    released.push(index);
}

/// Loops `file` on a free device: one this process released lately if it is still free,
/// else one the kernel names. Two processes taking the same free device is resolved by
/// trying the next one.
pub fn attach(file: &Path, options: LoopOptions) -> io::Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .open(file)?;
    while let Some(index) = RELEASED.lock().pop() {
        // Busy (not cleared yet, or taken by another process) or gone: the next one.
        if let Ok(device) = take(index, &backing, options) {
            return Ok(device);
        }
    }
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
        match take(index as u32, &backing, options) {
            // Taken by another process between the two calls: try the next free one.
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => continue,
            taken => return taken,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::ResourceBusy,
        "every free loop device was taken by another process first",
    ))
}

/// Configures device `index` over `backing`: EBUSY if it is bound already. Where the
/// file refuses direct I/O, the device falls back to buffered I/O.
fn take(index: u32, backing: &File, options: LoopOptions) -> io::Result<LoopDevice> {
    let path = PathBuf::from(format!("/dev/loop{index}"));
    let device = OpenOptions::new()
        .read(true)
        .write(!options.read_only)
        .open(&path)?;
    match configure(&device, backing, options, options.direct_io) {
        Ok(()) => {}
        Err(error) if options.direct_io && error.raw_os_error() == Some(libc::EINVAL) => {
            configure(&device, backing, options, false)?;
            // SAFETY: LOOP_SET_DIRECT_IO takes an unsigned long by value.
            let _ = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_SET_DIRECT_IO as _, 1) };
        }
        Err(error) => return Err(error),
    }
    Ok(LoopDevice {
        path,
        _device: device,
    })
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
        assert!(cleared(&path), "{} still attached", path.display());
    }

    /// Waits until the device at `path` has no backing file (cleared).
    fn cleared(path: &Path) -> bool {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        for _ in 0..200 {
            if !backing.exists() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_released_device_is_taken_before_the_kernels_first_free_one() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/dev/loop-control").exists() {
            eprintln!("skipped: needs root and loop devices");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("disk");
        std::fs::write(&file, vec![7u8; 1 << 20]).expect("write");
        let first = attach(&file, LoopOptions::default()).expect("attach");
        let second = attach(&file, LoopOptions::default()).expect("attach");
        let index = |device: &LoopDevice| -> u32 {
            device.path().to_string_lossy()["/dev/loop".len()..]
                .parse()
                .expect("an index")
        };
        let (low, high) = (
            index(&first).min(index(&second)),
            index(&first).max(index(&second)),
        );
        let (first_path, second_path) = (first.path().to_path_buf(), second.path().to_path_buf());
        drop((first, second));
        assert!(cleared(&first_path) && cleared(&second_path));
        // Both are free; the kernel would name the lower one. Released, the higher is
        // taken first, then the kernel's again.
        released(high);
        let again = attach(&file, LoopOptions::default()).expect("attach");
        assert_eq!(index(&again), high, "the released device");
        let next = attach(&file, LoopOptions::default()).expect("attach");
        assert!(
            index(&next) <= low,
            "the kernel's first free one: {}",
            index(&next)
        );
        // Still in use: a released device that is busy is passed over.
        released(high);
        let third = attach(&file, LoopOptions::default()).expect("attach");
        assert_ne!(index(&third), high);
        assert_ne!(index(&third), index(&next));
    }
}
