//! Links, addresses and routes by rtnetlink, as `ip` does it but in process: a blocking
//! netlink socket, one request and its acknowledgement at a time.
//!
//! A socket acts on the network namespace it was made in; [`Rtnl::in_namespace_of`] makes
//! one inside a process's namespace (from a short-lived thread that enters it), so a
//! sprite's side is configured without `nsenter`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long one request may wait for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A netlink socket of `protocol` bound and connected to the kernel, whose reads give up
/// after [`ANSWER_TIMEOUT`].
pub(crate) fn kernel_socket(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let timeout = nix::sys::time::TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(socket)
}

/// Runs `work` in the network namespace of process `pid`, on a thread of its own that
/// enters it and ends at once, so the caller's namespace never changes (a netlink
/// socket made there answers for that namespace for its whole life).
pub(crate) fn in_network_namespace_of<T: Send + 'static>(
    pid: u32,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let namespace = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        work()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A route netlink socket.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl").finish_non_exhaustive()
    }
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        Ok(Rtnl {
            socket: kernel_socket(NETLINK_ROUTE)?,
            sequence: 0,
            buffer: vec![0; 64 * 1024],
        })
    }

    /// A socket in the network namespace of process `pid` (it keeps that namespace for
    /// its life), made as [`in_network_namespace_of`] says.
    pub fn in_namespace_of(pid: u32) -> io::Result<Rtnl> {
        in_network_namespace_of(pid, Rtnl::open)
    }

    /// Sends `message` and waits for its acknowledgement; the replies before it.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut request = NetlinkMessage::new(NetlinkHeader::default(), message.into());
        request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        request.header.sequence_number = sequence;
        request.finalize();
        let mut bytes = vec![0u8; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;
        let mut replies = Vec::new();
        loop {
            let read = match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            let mut offset = 0;
            // One datagram may hold several messages.
            while offset < read {
                let message =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buffer[offset..read])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if message.header.sequence_number != sequence {
                    continue;
                }
                match message.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// The index of the link named `name` (`ENODEV` if there is none).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        for reply in self.request(RouteNetlinkMessage::GetLink(message), 0)? {
            if let RouteNetlinkMessage::NewLink(link) = reply {
                return Ok(link.header.index);
            }
        }
        Err(io::Error::from_raw_os_error(libc::ENODEV))
    }

    /// Creates a veth pair: `host` here, `peer` directly in the network namespace of
    /// process `pid`.
    pub fn add_veth(&mut self, host: &str, peer: &str, pid: u32) -> io::Result<()> {
        let mut other = LinkMessage::default();
        other
            .attributes
            .push(LinkAttribute::IfName(peer.to_string()));
        other.attributes.push(LinkAttribute::NetNsPid(pid));
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(host.to_string()));
        message.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(other))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds `address/prefix_len` to link `index`.
    pub fn add_address(&mut self, index: u32, address: Ipv4Addr, prefix_len: u8) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix_len;
        message.header.index = index;
        message
            .attributes
            .push(AddressAttribute::Local(IpAddr::V4(address)));
        message
            .attributes
            .push(AddressAttribute::Address(IpAddr::V4(address)));
        if prefix_len < 31 {
            let broadcast = u32::from(address) | (u32::MAX >> prefix_len);
            message
                .attributes
                .push(AddressAttribute::Broadcast(Ipv4Addr::from(broadcast)));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets link `index` up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// Adds the default route via `gateway` on link `index`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr, index: u32) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 0;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        message.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes the link named `name`; fine if there is none.
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::DelLink(message), 0) {
            Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_link_is_enodev_and_deleting_it_is_fine() {
        let mut rtnl = Rtnl::open().expect("socket");
        let error = rtnl.link_index("nosuchlink0").expect_err("missing");
        assert_eq!(error.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(rtnl.link_index("lo").expect("lo"), 1);
        if nix::unistd::geteuid().is_root() {
            rtnl.delete_link("nosuchlink0").expect("nothing to delete");
        }
    }
}
