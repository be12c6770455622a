//! Listening TCP sockets by `NETLINK_SOCK_DIAG`, as `ss -ltn` asks for them.
//!
//! Reading `/proc/<pid>/net/tcp` walks the host's whole TCP hash table, established
//! connections of every namespace included, to print the few sockets of one namespace.
//! A dump that asks for the `LISTEN` state alone makes the kernel walk only its listening
//! hash (`inet_diag_dump_icsk` skips the established one), so reading a sprite's ports
//! costs the same on an empty host as on one with a thousand busy sprites.
//!
//! A socket answers for the network namespace it was made in;
//! [`listeners_in_namespace_of`] makes one inside a process's namespace from a
//! short-lived thread, as [`crate::netlink::Rtnl::in_namespace_of`] does. Its reads give
//! up after the netlink module's answer timeout (5 s).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    Emitable, NetlinkBuffer, NetlinkHeader, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// At most this many listeners are read (a sprite opening sixty thousand listening
/// sockets gets the first ones reported, not a daemon holding all of them).
pub const MAX_LISTENERS: usize = 4096;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u8 = 10;
/// `struct nlmsghdr`.
const HEADER_LEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the 48-byte id.
const REQUEST_LEN: usize = 56;
/// `struct inet_diag_msg`: family, state, timer, retrans, the 48-byte id, expires,
/// rqueue, wqueue, uid, inode.
const MESSAGE_LEN: usize = 72;

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    /// The socket's inode (what `/proc/<pid>/fd/<n>` links to as `socket:[inode]`).
    pub inode: u64,
    pub port: u16,
    /// The local address; an IPv4-mapped IPv6 address is given as the IPv4 one.
    pub address: IpAddr,
}

/// The listening TCP sockets (IPv4, then IPv6) of the calling thread's network namespace.
pub fn listeners() -> io::Result<Vec<Listener>> {
    let socket = crate::netlink::kernel_socket(NETLINK_SOCK_DIAG)?;
    let mut found = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    for (sequence, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        socket.send(&request(family, sequence), 0)?;
        loop {
            let read = match socket.recv(&mut &mut buffer[..], 0) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if parse(&buffer[..read], sequence, &mut found)? {
                break;
            }
            // Enough: closing the socket ends the kernel's dump, so a sprite with
            // sixty thousand listeners costs no more than one with 4,096.
            if found.len() >= MAX_LISTENERS {
                return Ok(found);
            }
        }
    }
    Ok(found)
}

/// The listening TCP sockets of the network namespace of process `pid` (asked from a
/// thread that enters it: the caller's namespace never changes).
pub fn listeners_in_namespace_of(pid: u32) -> io::Result<Vec<Listener>> {
    crate::netlink::in_network_namespace_of(pid, listeners)
}

/// A dump request for the TCP sockets of `family` in the `LISTEN` state.
fn request(family: u8, sequence: u32) -> [u8; HEADER_LEN + REQUEST_LEN] {
    let mut bytes = [0u8; HEADER_LEN + REQUEST_LEN];
    // Port id 0 (the default): the kernel fills in ours.
    let mut header = NetlinkHeader::default();
    header.length = (HEADER_LEN + REQUEST_LEN) as u32;
    header.message_type = SOCK_DIAG_BY_FAMILY;
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    header.emit(&mut bytes[..HEADER_LEN]);
    bytes[16] = family;
    bytes[17] = libc::IPPROTO_TCP as u8;
    // No extensions; the states wanted; the socket id left zero (every socket).
    bytes[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    bytes
}

/// Reads one datagram of a dump's answer into `found` (at most [`MAX_LISTENERS`]);
/// whether the dump is over.
fn parse(datagram: &[u8], sequence: u32, found: &mut Vec<Listener>) -> io::Result<bool> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut offset = 0;
    while offset < datagram.len() {
        let message = NetlinkBuffer::new_checked(&datagram[offset..])
            .map_err(|_| invalid("a sock_diag message runs past its datagram"))?;
        let length = message.length() as usize;
        offset += (length + 3) & !3;
        if message.sequence_number() != sequence {
            continue;
        }
        let payload = message.payload();
        match message.message_type() {
            // Both end the dump with an int: 0, or a negative errno.
            NLMSG_DONE | NLMSG_ERROR => {
                let code = payload
                    .get(0..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| invalid("a sock_diag answer without its code"))?;
                return if code >= 0 {
                    Ok(true)
                } else {
                    Err(io::Error::from_raw_os_error(-code))
                };
            }
            SOCK_DIAG_BY_FAMILY => {
                if payload.len() < MESSAGE_LEN {
                    return Err(invalid("a sock_diag answer shorter than inet_diag_msg"));
                }
                if payload[1] != TCP_LISTEN || found.len() >= MAX_LISTENERS {
                    continue;
                }
                let port = u16::from_be_bytes([payload[4], payload[5]]);
                let source = &payload[8..24];
                let address = match i32::from(payload[0]) {
                    libc::AF_INET => {
                        IpAddr::V4(Ipv4Addr::new(source[0], source[1], source[2], source[3]))
                    }
                    libc::AF_INET6 => {
                        let mut bytes = [0u8; 16];
                        bytes.copy_from_slice(source);
                        let v6 = Ipv6Addr::from(bytes);
                        match v6.to_ipv4_mapped() {
                            Some(v4) => IpAddr::V4(v4),
                            None => IpAddr::V6(v6),
                        }
                    }
                    _ => continue,
                };
                let inode =
                    u32::from_ne_bytes([payload[68], payload[69], payload[70], payload[71]]);
                found.push(Listener {
                    inode: u64::from(inode),
                    port,
                    address,
                });
            }
            _ => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One `inet_diag_msg` as the kernel sends it, after its netlink header.
    fn answer(
        sequence: u32,
        family: u8,
        state: u8,
        port: u16,
        source: [u8; 16],
        inode: u32,
    ) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_LEN + MESSAGE_LEN];
        bytes[0..4].copy_from_slice(&((HEADER_LEN + MESSAGE_LEN) as u32).to_ne_bytes());
        bytes[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
        let body = &mut bytes[HEADER_LEN..];
        body[0] = family;
        body[1] = state;
        body[4..6].copy_from_slice(&port.to_be_bytes());
        body[8..24].copy_from_slice(&source);
        body[68..72].copy_from_slice(&inode.to_ne_bytes());
        bytes
    }

    fn done(sequence: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_LEN + 4];
        bytes[0..4].copy_from_slice(&((HEADER_LEN + 4) as u32).to_ne_bytes());
        bytes[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        bytes[8..12].copy_from_slice(&sequence.to_ne_bytes());
        bytes
    }

    #[test]
    fn answers_are_read_until_done() {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[10, 0, 0, 2]);
        let mut datagram = answer(7, libc::AF_INET as u8, TCP_LISTEN, 8080, v4, 12345);
        datagram.extend(answer(7, libc::AF_INET6 as u8, TCP_LISTEN, 22, mapped, 9));
        datagram.extend(answer(
            7,
            libc::AF_INET6 as u8,
            TCP_LISTEN,
            3000,
            Ipv6Addr::LOCALHOST.octets(),
            10,
        ));
        // Another request's answer and a socket not listening are skipped.
        datagram.extend(answer(6, libc::AF_INET as u8, TCP_LISTEN, 1, v4, 1));
        datagram.extend(answer(7, libc::AF_INET as u8, 1, 2, v4, 2));
        let mut found = Vec::new();
        assert!(!parse(&datagram, 7, &mut found).unwrap());
        assert!(parse(&done(7), 7, &mut found).unwrap());
        let seen: Vec<(u64, u16, String)> = found
            .iter()
            .map(|l| (l.inode, l.port, l.address.to_string()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (12345, 8080, "127.0.0.1".to_string()),
                (9, 22, "10.0.0.2".to_string()),
                (10, 3000, "::1".to_string()),
            ]
        );
    }

    #[test]
    fn a_short_or_overlong_answer_is_an_error_not_a_panic() {
        let mut found = Vec::new();
        let mut short = answer(1, libc::AF_INET as u8, TCP_LISTEN, 80, [0; 16], 1);
        short.truncate(HEADER_LEN + 10);
        short[0..4].copy_from_slice(&((HEADER_LEN + 10) as u32).to_ne_bytes());
        assert!(parse(&short, 1, &mut found).is_err());
        let mut overlong = answer(1, libc::AF_INET as u8, TCP_LISTEN, 80, [0; 16], 1);
        overlong[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert!(parse(&overlong, 1, &mut found).is_err());
        let mut error = done(1);
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        let failed = parse(&error, 1, &mut found).unwrap_err();
        assert_eq!(failed.raw_os_error(), Some(libc::ENOENT));
        let mut interrupted = done(1);
        interrupted[16..20].copy_from_slice(&(-libc::EINTR).to_ne_bytes());
        let failed = parse(&interrupted, 1, &mut found).unwrap_err();
        assert_eq!(failed.raw_os_error(), Some(libc::EINTR));
        assert!(found.is_empty());
    }

    #[test]
    fn no_more_than_max_listeners_are_kept() {
        let mut datagram = Vec::new();
        for n in 0..MAX_LISTENERS + 5 {
            datagram.extend(answer(
                3,
                libc::AF_INET as u8,
                TCP_LISTEN,
                n as u16,
                [0; 16],
                n as u32,
            ));
        }
        let mut found = Vec::new();
        assert!(!parse(&datagram, 3, &mut found).unwrap());
        assert_eq!(found.len(), MAX_LISTENERS);
        assert_eq!(
            found.last().map(|l| l.inode),
            Some(MAX_LISTENERS as u64 - 1)
        );
    }

    /// Needs no root: a listener of this process shows up in its own namespace, one
    /// that is not listening does not.
    #[test]
    fn a_listener_of_this_process_is_found_by_its_inode() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let inode: u64 = link
            .to_string_lossy()
            .trim_start_matches("socket:[")
            .trim_end_matches(']')
            .parse()
            .unwrap();
        let found = listeners().unwrap();
        assert!(
            found.contains(&Listener {
                inode,
                port,
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            }),
            "{found:?}"
        );
        drop(listener);
        assert!(!listeners().unwrap().iter().any(|l| l.inode == inode));
    }
}
