//! The one crate of sprites that talks to the kernel directly. Every `unsafe` block of the
//! project is here, each with a `// SAFETY:` comment; every other crate forbids `unsafe`.
//!
//! - [`syscall`]: clone into namespaces, the new mount API, pidfds, seccomp, ioctls;
//! - [`loopdev`]: loop devices by ioctl (no `losetup`);
//! - [`mount`]: mounting and unmounting by system call (no `mount`/`umount`);
//! - [`netlink`]: links, addresses and routes by rtnetlink (no `ip`/`nsenter`);
//! - [`nft`]: nftables scripts run in process by libnftables (no `nft`);
//! - [`sockdiag`]: a network namespace's listening TCP sockets by `NETLINK_SOCK_DIAG`;
//! - [`tools`]: where host programs are, even when `PATH` lacks the sbin directories.
//!
//! It depends on nothing else of the workspace, so both the sandbox and the storage engine
//! can use it without depending on each other.
#![allow(unsafe_code)]

pub mod loopdev;
pub mod mount;
pub mod netlink;
pub mod nft;
pub mod sockdiag;
pub mod syscall;
pub mod tools;
