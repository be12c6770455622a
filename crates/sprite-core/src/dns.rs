//! The DNS forwarder the daemon runs for each sprite, where its network policy is enforced.
//!
//! A sprite's resolver points at [`serve`], and each question is decided with the sprite's
//! current [`NetworkPolicy`]:
//! - denied: NXDOMAIN at once; the upstreams never see the name, so a denied name cannot
//!   carry data out through DNS either;
//! - allowed: the query goes to the upstreams as it came and their answer comes back as
//!   they sent it. When the sprite is restricted, every IPv4 address in the answer is first
//!   handed to an [`AllowSink`] (the egress firewall) and the answer is sent only after the
//!   sink returns, so the connection the sprite opens next finds its address admitted.
//!
//! A restricted sprite has IPv4 egress only, to addresses learnt here, so its AAAA, SVCB and
//! HTTPS questions get an empty NOERROR: a v6 address or an address hint could not be
//! admitted, and clients fall back to A.
//!
//! The forwarder listens on UDP only. An upstream answer with TC set is fetched again over
//! TCP from the same upstream; if the whole answer is larger than the sprite's resolver
//! takes over UDP (512 bytes, or its EDNS size), it is cut to the answers that fit and sent
//! without TC, since TC would send the resolver to a TCP port nobody listens on. Every
//! address of the whole answer was admitted all the same.
//!
//! [`Admitted`] remembers which names each admitted address came from, so that when the
//! rules change the daemon can cut connections to addresses no name allows any more.
//! [`serve_static`] is a tiny authoritative server for tests.

use async_trait::async_trait;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use parking_lot::Mutex;
use sprite_api::error_chain;
use sprite_api::policy::{Decision, NetworkPolicy};
use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Most queries [`serve`] answers at once; past that it reads no more until one finishes.
pub const MAX_QUERIES_IN_FLIGHT: usize = 256;

/// Shortest time an admitted address stays admitted, whatever its TTL: a TTL of 0 would
/// let the address expire before the sprite connects.
pub const MIN_ADMIT_TTL: Duration = Duration::from_secs(5);

/// Longest time an admitted address stays admitted without being looked up again.
pub const MAX_ADMIT_TTL: Duration = Duration::from_secs(3600);

/// Largest DNS message a sprite's resolver may send. Queries are far smaller; anything
/// longer is cut by the read and answered FORMERR.
const MAX_QUERY: usize = 4096;

/// Largest DNS message (the TCP length prefix is 16 bits).
const MAX_MESSAGE: usize = 65535;

/// TTL of the answers of [`serve_static`].
const STATIC_TTL: u32 = 60;

/// Where the addresses of allowed names go before the sprite learns them.
#[async_trait]
pub trait AllowSink: Send + Sync + 'static {
    /// Called with the IPv4 addresses (and TTLs) an allowed name resolved to, BEFORE the
    /// answer is sent to the sprite, so a firewall set can admit them first. Only called
    /// when the sprite is restricted and the answer has at least one address. TTLs are
    /// clamped to [`MIN_ADMIT_TTL`]..=[`MAX_ADMIT_TTL`]; `name` is lowercase, without the
    /// trailing dot. Answers whether the addresses were admitted: `false` (the sprite
    /// looked up too much, too fast) makes the answer SERVFAIL.
    async fn allow(&self, name: &str, addrs: Vec<(Ipv4Addr, Duration)>) -> bool;
}

/// Largest answer sent to a sprite over UDP, whatever EDNS size its resolver offers
/// (the size DNS flag day 2020 settled on: no fragmentation, and the resolver is no
/// amplifier).
pub const MAX_UDP_ANSWER: usize = 1232;

/// Where [`serve`] sends allowed questions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Tried in order; the next one when one fails, times out, or answers SERVFAIL or
    /// REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream attempt (and again for the TCP retry of a truncated answer).
    pub timeout: Duration,
    /// The sprites' own subnet: never admitted, like the special ranges, unless the
    /// policy names it.
    pub sprite_network: Option<(Ipv4Addr, u8)>,
}

/// What went wrong in the forwarder. Only [`DnsError::Receive`] ends [`serve`]; the others
/// concern one upstream attempt, are logged, and end in the next upstream or SERVFAIL.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("receiving a dns query")]
    Receive(#[source] io::Error),
    #[error("opening a socket to upstream {upstream}")]
    Connect {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("sending the query to upstream {upstream}")]
    Send {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the answer of upstream {upstream}")]
    Read {
        upstream: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        upstream: SocketAddr,
        timeout: Duration,
    },
    #[error("upstream {upstream} answered with another query's id or question")]
    Mismatch { upstream: SocketAddr },
    #[error("the answer of upstream {upstream} is not a dns message")]
    Decode {
        upstream: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("a query of {length} bytes does not fit a dns-over-tcp frame")]
    QueryTooLong { length: usize },
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
}

/// Answers the sprite's DNS queries on `socket` under the policy `policy` holds at the time
/// of each query (see the module docs). Each query is handled in a task of its own, at most
/// [`MAX_QUERIES_IN_FLIGHT`] at once; they end when this future is dropped or aborted.
/// Returns only when the socket fails for good.
pub async fn serve(
    socket: UdpSocket,
    config: ResolverConfig,
    policy: watch::Receiver<Arc<NetworkPolicy>>,
    sink: Arc<dyn AllowSink>,
) -> Result<Infallible, DnsError> {
    let forwarder = Arc::new(Forwarder {
        socket,
        config,
        sink,
    });
    let mut tasks = JoinSet::new();
    let mut buffer = vec![0u8; MAX_QUERY];
    loop {
        while tasks.try_join_next().is_some() {}
        while tasks.len() >= MAX_QUERIES_IN_FLIGHT {
            tasks.join_next().await;
        }
        let (length, peer) = match forwarder.socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => continue,
            Err(error) => return Err(DnsError::Receive(error)),
        };
        let packet = buffer[..length].to_vec();
        let policy = Arc::clone(&policy.borrow());
        let forwarder = Arc::clone(&forwarder);
        tasks.spawn(async move {
            let Some(answer) = forwarder.answer(&packet, &policy, peer).await else {
                return;
            };
            if let Err(error) = forwarder.socket.send_to(&answer, peer).await {
                tracing::debug!(%peer, error = %error, "sending a dns answer");
            }
        });
    }
}

struct Forwarder {
    socket: UdpSocket,
    config: ResolverConfig,
    sink: Arc<dyn AllowSink>,
}

/// An upstream's answer, as sent and as parsed.
struct UpstreamAnswer {
    bytes: Vec<u8>,
    message: Message,
}

impl Forwarder {
    /// The answer to one query, or None for a packet not worth answering.
    async fn answer(
        &self,
        packet: &[u8],
        policy: &NetworkPolicy,
        peer: SocketAddr,
    ) -> Option<Vec<u8>> {
        let (header, query, question) = match parse_query(packet)? {
            Ok(parsed) => parsed,
            Err(refusal) => return Some(refusal),
        };
        let name = question_name(&question);
        if policy.decide(&name) == Decision::Deny {
            tracing::debug!(%peer, name, "dns question denied by the network policy");
            return Some(response(&header, &query, ResponseCode::NXDomain));
        }
        let restricted = policy.restricted();
        if restricted
            && matches!(
                question.query_type(),
                RecordType::AAAA | RecordType::SVCB | RecordType::HTTPS
            )
        {
            return Some(response(&header, &query, ResponseCode::NoError));
        }
        match self.forward(packet, &question).await {
            Ok(answer) => {
                if restricted {
                    let addresses: Vec<(Ipv4Addr, Duration)> = admitted_addresses(&answer.message)
                        .into_iter()
                        .filter(|(address, _)| self.admissible(*address, policy))
                        .collect();
                    if !addresses.is_empty() && !self.sink.allow(&name, addresses).await {
                        tracing::debug!(%peer, name, "dns answer not admitted: too many lookups");
                        return Some(response(&header, &query, ResponseCode::ServFail));
                    }
                }
                let limit = usize::from(query.max_payload()).min(MAX_UDP_ANSWER);
                Some(fit(answer, limit))
            }
            Err(error) => {
                tracing::debug!(%peer, name, error = error_chain(&error), "no upstream answered");
                Some(response(&header, &query, ResponseCode::ServFail))
            }
        }
    }

    /// Whether an address of an answer may be admitted: not in a private or special
    /// range nor the sprites' own subnet, unless the policy names its network.
    fn admissible(&self, address: Ipv4Addr, policy: &NetworkPolicy) -> bool {
        let special = sprite_api::policy::is_special(address)
            || self.config.sprite_network.is_some_and(|(network, bits)| {
                sprite_api::policy::in_network(address, network, bits)
            });
        !special || policy.names_network(address)
    }

    /// Asks each upstream in turn; an answer of SERVFAIL or REFUSED is kept for when no
    /// other upstream does better.
    async fn forward(&self, packet: &[u8], question: &Query) -> Result<UpstreamAnswer, DnsError> {
        let mut fallback = None;
        let mut last_error = DnsError::NoUpstreams;
        for &upstream in &self.config.upstreams {
            match exchange(packet, question, upstream, self.config.timeout).await {
                Ok(answer)
                    if matches!(
                        answer.message.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    ) =>
                {
                    fallback = Some(answer);
                }
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    tracing::debug!(error = error_chain(&error), "dns upstream failed");
                    last_error = error;
                }
            }
        }
        fallback.ok_or(last_error)
    }
}

/// One attempt at one upstream: UDP, then TCP if the UDP answer was truncated.
///
/// The query goes out under a transaction id of its own (random, never the sprite's,
/// which the sprite knows), from a fresh socket on a random port, and an answer counts
/// only if it carries that id and asks the same question: forging one takes guessing
/// both the port and the id, and the sprite's own packets cannot even reach the host
/// with another source than its address. The answer goes back with the sprite's id.
async fn exchange(
    packet: &[u8],
    question: &Query,
    upstream: SocketAddr,
    timeout: Duration,
) -> Result<UpstreamAnswer, DnsError> {
    let timed_out = |_| DnsError::Timeout { upstream, timeout };
    let mut outgoing = packet.to_vec();
    if outgoing.len() < 12 {
        return Err(DnsError::Mismatch { upstream });
    }
    outgoing[..2].copy_from_slice(&random_id());
    let mut bytes = tokio::time::timeout(timeout, exchange_udp(&outgoing, upstream))
        .await
        .map_err(timed_out)??;
    if is_truncated(&bytes) {
        bytes = tokio::time::timeout(timeout, exchange_tcp(&outgoing, upstream))
            .await
            .map_err(timed_out)??;
    }
    let message = Message::from_vec(&bytes).map_err(|source| DnsError::Decode {
        upstream,
        source: Box::new(source),
    })?;
    if !same_question(&message, question) {
        return Err(DnsError::Mismatch { upstream });
    }
    bytes[..2].copy_from_slice(&packet[..2]);
    let mut message = message;
    message.metadata.id = u16::from_be_bytes([packet[0], packet[1]]);
    Ok(UpstreamAnswer { bytes, message })
}

/// A transaction id nobody can predict.
fn random_id() -> [u8; 2] {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    [bytes[0], bytes[1]]
}

/// Whether an answer's question section is exactly `question` (names compared without
/// regard to case, as DNS does).
fn same_question(answer: &Message, question: &Query) -> bool {
    match answer.queries.as_slice() {
        [asked] => {
            asked.query_type() == question.query_type()
                && asked.query_class() == question.query_class()
                && asked.name().to_lowercase() == question.name().to_lowercase()
        }
        _ => false,
    }
}

/// Sends `packet` from a fresh socket on a random port connected to `upstream` (so only
/// the upstream can answer it) and waits for the answer with the query's id.
async fn exchange_udp(packet: &[u8], upstream: SocketAddr) -> Result<Vec<u8>, DnsError> {
    let connect = |source| DnsError::Connect { upstream, source };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(connect)?;
    socket.connect(upstream).await.map_err(connect)?;
    socket
        .send(packet)
        .await
        .map_err(|source| DnsError::Send { upstream, source })?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let length = socket
            .recv(&mut buffer)
            .await
            .map_err(|source| DnsError::Read { upstream, source })?;
        if answers(packet, &buffer[..length]) {
            buffer.truncate(length);
            return Ok(buffer);
        }
    }
}

/// DNS over TCP (RFC 1035 4.2.2): one length-prefixed query, one length-prefixed answer.
async fn exchange_tcp(packet: &[u8], upstream: SocketAddr) -> Result<Vec<u8>, DnsError> {
    let length = u16::try_from(packet.len()).map_err(|_| DnsError::QueryTooLong {
        length: packet.len(),
    })?;
    let mut stream = TcpStream::connect(upstream)
        .await
        .map_err(|source| DnsError::Connect { upstream, source })?;
    let mut frame = Vec::with_capacity(packet.len() + 2);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(packet);
    stream
        .write_all(&frame)
        .await
        .map_err(|source| DnsError::Send { upstream, source })?;
    let read = |source| DnsError::Read { upstream, source };
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.map_err(read)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut answer).await.map_err(read)?;
    if !answers(packet, &answer) {
        return Err(DnsError::Mismatch { upstream });
    }
    Ok(answer)
}

/// Whether `answer` is a response carrying the id of `query`.
fn answers(query: &[u8], answer: &[u8]) -> bool {
    answer.len() >= 12 && query.len() >= 2 && answer[..2] == query[..2] && answer[2] & 0x80 != 0
}

fn is_truncated(answer: &[u8]) -> bool {
    answer.len() >= 12 && answer[2] & 0x02 != 0
}

/// Errors a UDP socket reports about an earlier datagram (an ICMP error, a signal), after
/// which it still works.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// The addresses of every A record in the answer section (however long the CNAME chain
/// before them), with TTLs clamped to [`MIN_ADMIT_TTL`]..=[`MAX_ADMIT_TTL`].
fn admitted_addresses(message: &Message) -> Vec<(Ipv4Addr, Duration)> {
    let mut addresses: Vec<(Ipv4Addr, Duration)> = Vec::new();
    for record in &message.answers {
        let RData::A(A(address)) = record.data else {
            continue;
        };
        let ttl = Duration::from_secs(u64::from(record.ttl)).clamp(MIN_ADMIT_TTL, MAX_ADMIT_TTL);
        match addresses.iter_mut().find(|(seen, _)| *seen == address) {
            Some((_, longest)) => *longest = (*longest).max(ttl),
            None => addresses.push((address, ttl)),
        }
    }
    addresses
}

/// The upstream's answer as sent if it fits the sprite's UDP limit, else cut to fit: no
/// authority or additional records, then as many answer records as fit, TC clear.
fn fit(answer: UpstreamAnswer, limit: usize) -> Vec<u8> {
    if answer.bytes.len() <= limit {
        return answer.bytes;
    }
    let mut message = answer.message;
    message.authorities.clear();
    message.additionals.clear();
    message.metadata.truncation = false;
    loop {
        let Ok(bytes) = message.to_vec() else {
            return answer.bytes;
        };
        if bytes.len() <= limit {
            return bytes;
        }
        if message.answers.is_empty() {
            return answer.bytes;
        }
        // Records are about the same size: drop the excess share, at least one.
        let keep = message.answers.len() * limit / bytes.len();
        message
            .answers
            .truncate(keep.min(message.answers.len() - 1));
    }
}

/// The header fields a response to an unparsable query can still echo.
#[derive(Debug, Clone, Copy)]
struct RawHeader {
    id: [u8; 2],
    /// The third header byte: QR, opcode, AA, TC, RD.
    flags: u8,
}

impl RawHeader {
    /// None for a packet too short to answer or that is itself a response (answering
    /// responses could loop).
    fn read(packet: &[u8]) -> Option<RawHeader> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return None;
        }
        Some(RawHeader {
            id: [packet[0], packet[1]],
            flags: packet[2],
        })
    }

    fn opcode(self) -> u8 {
        (self.flags >> 3) & 0x0f
    }

    /// A header-only response: same id, opcode and RD, RA set, the given code.
    fn refusal(self, code: ResponseCode) -> Vec<u8> {
        let mut bytes = vec![0u8; 12];
        bytes[..2].copy_from_slice(&self.id);
        bytes[2] = 0x80 | (self.flags & 0x79);
        bytes[3] = 0x80 | code.low();
        bytes
    }
}

/// Parses a query: None to ignore the packet, Err with the answer that refuses it (NOTIMP
/// for opcodes other than QUERY, FORMERR for what does not parse or does not ask exactly
/// one question), else the query and its question.
fn parse_query(packet: &[u8]) -> Option<Result<(RawHeader, Message, Query), Vec<u8>>> {
    let header = RawHeader::read(packet)?;
    if header.opcode() != 0 {
        return Some(Err(header.refusal(ResponseCode::NotImp)));
    }
    match Message::from_vec(packet) {
        Ok(query) => match query.queries.as_slice() {
            [question] => {
                let question = question.clone();
                Some(Ok((header, query, question)))
            }
            _ => Some(Err(header.refusal(ResponseCode::FormErr))),
        },
        Err(error) => {
            tracing::debug!(error = %error, "dns query does not parse");
            Some(Err(header.refusal(ResponseCode::FormErr)))
        }
    }
}

/// A response to `query` with its question echoed, no records, RA set and `code`.
fn response_message(query: &Message, code: ResponseCode) -> Message {
    let mut message = Message::response(query.metadata.id, query.metadata.op_code);
    message.metadata.recursion_desired = query.metadata.recursion_desired;
    message.metadata.checking_disabled = query.metadata.checking_disabled;
    message.metadata.recursion_available = true;
    message.metadata.response_code = code;
    message.add_queries(query.queries.iter().cloned());
    message
}

/// [`response_message`] encoded, or the header alone if the question does not encode.
fn response(header: &RawHeader, query: &Message, code: ResponseCode) -> Vec<u8> {
    response_message(query, code)
        .to_vec()
        .unwrap_or_else(|_| header.refusal(code))
}

/// The question's name as policies and sinks see it: lowercase, no trailing dot.
fn question_name(question: &Query) -> String {
    normalize_name(&question.name().to_lowercase().to_ascii())
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The `nameserver` lines of a resolv.conf, as port-53 addresses in order, without
/// repeats. With `skip_loopback`, loopback addresses (127.0.0.0/8 stub resolvers such as
/// systemd-resolved's 127.0.0.53, and ::1) are left out: they are unreachable from a
/// sprite's network. A link-local IPv6 address keeps a numeric `%scope`; one with an
/// interface name is left out.
pub fn upstreams_from_resolv_conf(text: &str, skip_loopback: bool) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(upstream) = words.next().and_then(parse_nameserver) else {
            continue;
        };
        if skip_loopback && upstream.ip().is_loopback() {
            continue;
        }
        if !upstreams.contains(&upstream) {
            upstreams.push(upstream);
        }
    }
    upstreams
}

fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let (address, scope) = match text.split_once('%') {
        Some((address, scope)) => (address, Some(scope)),
        None => (text, None),
    };
    match (address.parse::<IpAddr>().ok()?, scope) {
        (IpAddr::V4(address), None) => Some(SocketAddr::from((address, 53))),
        (IpAddr::V4(_), Some(_)) => None,
        (IpAddr::V6(address), scope) => {
            let scope = match scope {
                Some(scope) => scope.parse().ok()?,
                None => 0,
            };
            Some(SocketAddrV6::new(address, 53, 0, scope).into())
        }
    }
}

/// The addresses admitted for a sprite and the names each came from, until when. When the
/// rules change, [`Admitted::revoke_for`] says which addresses to drop from the firewall
/// (and whose connections to cut).
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    addresses: HashMap<Ipv4Addr, HashMap<String, Instant>>,
}

impl Admitted {
    pub fn new() -> Self {
        Admitted::default()
    }

    /// Records that `name` resolved to `addresses`, each admitted for its TTL from `now`
    /// (the later expiry wins when a name and address are noted again).
    pub fn note(&mut self, name: &str, addresses: &[(Ipv4Addr, Duration)], now: Instant) {
        let name = normalize_name(name);
        for &(address, ttl) in addresses {
            let until = now.checked_add(ttl).unwrap_or_else(|| now + MAX_ADMIT_TTL);
            let expiry = self
                .addresses
                .entry(address)
                .or_default()
                .entry(name.clone())
                .or_insert(until);
            *expiry = (*expiry).max(until);
        }
    }

    /// Removes and returns (sorted) the addresses none of whose unexpired names `policy`
    /// allows any more; an address whose names all expired goes too.
    pub fn revoke_for(&mut self, policy: &NetworkPolicy, now: Instant) -> Vec<Ipv4Addr> {
        self.remove_where(now, |names| {
            !names
                .keys()
                .any(|name| policy.decide(name) == Decision::Allow)
        })
    }

    /// Forgets names whose TTL has run out at `now`; removes and returns (sorted) the
    /// addresses left with no name.
    pub fn expire(&mut self, now: Instant) -> Vec<Ipv4Addr> {
        self.remove_where(now, HashMap::is_empty)
    }

    /// Drops expired names, then the addresses `remove` picks.
    fn remove_where(
        &mut self,
        now: Instant,
        remove: impl Fn(&HashMap<String, Instant>) -> bool,
    ) -> Vec<Ipv4Addr> {
        let mut removed = Vec::new();
        self.addresses.retain(|address, names| {
            names.retain(|_, until| *until > now);
            let gone = names.is_empty() || remove(names);
            if gone {
                removed.push(*address);
            }
            !gone
        });
        removed.sort_unstable();
        removed
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.addresses.contains_key(&address)
    }

    /// The names `address` was admitted for, sorted.
    pub fn names(&self, address: Ipv4Addr) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .addresses
            .get(&address)
            .map(|names| names.keys().map(String::as_str).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names
    }

    /// When the last of `address`'s names expires.
    pub fn until(&self, address: Ipv4Addr) -> Option<Instant> {
        self.addresses.get(&address)?.values().max().copied()
    }

    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

/// A tiny authoritative DNS server for tests: the end-to-end tests run it on loopback as
/// the upstream of [`serve`], so that no test needs the internet. A questions for a name
/// in `records` (any case, with or without the trailing dot) get its addresses (TTL 60 s);
/// other questions for such a name get an empty NOERROR, and any other name NXDOMAIN. An
/// answer larger than the query allows over UDP is sent empty with TC set. Queries are
/// answered one at a time. Returns only when the socket fails for good.
pub async fn serve_static(
    socket: UdpSocket,
    records: HashMap<String, Vec<Ipv4Addr>>,
) -> Result<Infallible, DnsError> {
    serve_static_observed(socket, records, None).await
}

/// [`serve_static`], also recording each question's name in `seen`.
async fn serve_static_observed(
    socket: UdpSocket,
    records: HashMap<String, Vec<Ipv4Addr>>,
    seen: Option<Arc<Mutex<Vec<String>>>>,
) -> Result<Infallible, DnsError> {
    let records: HashMap<String, Vec<Ipv4Addr>> = records
        .into_iter()
        .map(|(name, addresses)| (normalize_name(&name), addresses))
        .collect();
    let mut buffer = vec![0u8; MAX_QUERY];
    loop {
        let (length, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) if is_transient(&error) => continue,
            Err(error) => return Err(DnsError::Receive(error)),
        };
        let packet = &buffer[..length];
        if let Some(seen) = &seen {
            if let Ok(query) = Message::from_vec(packet) {
                seen.lock().extend(query.queries.iter().map(question_name));
            }
        }
        if let Some(answer) = static_answer(packet, &records, true) {
            if let Err(error) = socket.send_to(&answer, peer).await {
                tracing::debug!(%peer, error = %error, "sending a static dns answer");
            }
        }
    }
}

/// The answer of [`serve_static`] to one query; `udp` applies the query's size limit.
fn static_answer(
    packet: &[u8],
    records: &HashMap<String, Vec<Ipv4Addr>>,
    udp: bool,
) -> Option<Vec<u8>> {
    let (_, query, question) = match parse_query(packet)? {
        Ok(parsed) => parsed,
        Err(refusal) => return Some(refusal),
    };
    let (code, addresses) = match records.get(&question_name(&question)) {
        None => (ResponseCode::NXDomain, &[][..]),
        Some(addresses) if question.query_type() == RecordType::A => {
            (ResponseCode::NoError, addresses.as_slice())
        }
        Some(_) => (ResponseCode::NoError, &[][..]),
    };
    let mut message = response_message(&query, code);
    message.metadata.authoritative = true;
    for address in addresses {
        message.add_answer(Record::from_rdata(
            question.name().clone(),
            STATIC_TTL,
            RData::A(A(*address)),
        ));
    }
    let bytes = message.to_vec().ok()?;
    if udp && bytes.len() > usize::from(query.max_payload()) {
        message.answers.clear();
        message.metadata.truncation = true;
        return message.to_vec().ok();
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use hickory_proto::rr::rdata::CNAME;
    use hickory_proto::rr::Name;
    use sprite_api::policy::PolicyRule;
    use tokio::net::TcpListener;

    type Calls = Arc<Mutex<Vec<(String, Vec<(Ipv4Addr, Duration)>)>>>;

    /// Records what it is asked to admit, after a delay, so a test can tell whether the
    /// answer waited for it.
    struct RecordingSink {
        calls: Calls,
        delay: Duration,
    }

    #[async_trait]
    impl AllowSink for RecordingSink {
        async fn allow(&self, name: &str, addrs: Vec<(Ipv4Addr, Duration)>) -> bool {
            tokio::time::sleep(self.delay).await;
            self.calls.lock().push((name.to_string(), addrs));
            true
        }
    }

    fn calls(calls: &Calls) -> Vec<(String, Vec<(Ipv4Addr, Duration)>)> {
        calls.lock().clone()
    }

    fn records() -> HashMap<String, Vec<Ipv4Addr>> {
        HashMap::from([
            (
                "allowed.test".to_string(),
                vec![
                    Ipv4Addr::new(198, 51, 100, 1),
                    Ipv4Addr::new(198, 51, 100, 2),
                ],
            ),
            (
                "Denied.Test.".to_string(),
                vec![Ipv4Addr::new(198, 51, 100, 3)],
            ),
            (
                "lan.test".to_string(),
                vec![
                    Ipv4Addr::new(192, 168, 1, 5),
                    Ipv4Addr::new(198, 51, 100, 9),
                ],
            ),
            (
                "metadata.test".to_string(),
                vec![Ipv4Addr::new(169, 254, 169, 254)],
            ),
            (
                "neighbour.test".to_string(),
                vec![Ipv4Addr::new(10, 231, 0, 6)],
            ),
            (
                "many.test".to_string(),
                (1..=100).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect(),
            ),
        ])
    }

    fn allow_only(domains: &[&str]) -> Arc<NetworkPolicy> {
        Arc::new(NetworkPolicy::new(
            domains.iter().map(|d| PolicyRule::allow(*d)).collect(),
        ))
    }

    /// A static upstream and a forwarder in front of it, on loopback; the tasks end when
    /// the harness is dropped.
    struct Harness {
        forwarder: SocketAddr,
        policy: watch::Sender<Arc<NetworkPolicy>>,
        upstream_saw: Arc<Mutex<Vec<String>>>,
        sink_calls: Calls,
        _tasks: JoinSet<()>,
    }

    impl Harness {
        async fn start(policy: Arc<NetworkPolicy>) -> Harness {
            let mut tasks = JoinSet::new();
            let upstream_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let upstream = upstream_socket.local_addr().expect("addr");
            let upstream_saw = Arc::new(Mutex::new(Vec::new()));
            let saw = Arc::clone(&upstream_saw);
            tasks.spawn(async move {
                let _ = serve_static_observed(upstream_socket, records(), Some(saw)).await;
            });
            Harness::with_upstreams(tasks, vec![upstream], Duration::from_secs(2), policy)
                .await
                .with_saw(upstream_saw)
        }

        async fn with_upstreams(
            mut tasks: JoinSet<()>,
            upstreams: Vec<SocketAddr>,
            timeout: Duration,
            policy: Arc<NetworkPolicy>,
        ) -> Harness {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let forwarder = socket.local_addr().expect("addr");
            let (policy, receiver) = watch::channel(policy);
            let sink_calls: Calls = Arc::default();
            let sink = Arc::new(RecordingSink {
                calls: Arc::clone(&sink_calls),
                delay: Duration::from_millis(100),
            });
            let config = ResolverConfig {
                upstreams,
                timeout,
                sprite_network: Some((Ipv4Addr::new(10, 231, 0, 0), 16)),
            };
            tasks.spawn(async move {
                let _ = serve(socket, config, receiver, sink).await;
            });
            Harness {
                forwarder,
                policy,
                upstream_saw: Arc::default(),
                sink_calls,
                _tasks: tasks,
            }
        }

        fn with_saw(mut self, saw: Arc<Mutex<Vec<String>>>) -> Harness {
            self.upstream_saw = saw;
            self
        }

        fn upstream_saw(&self) -> Vec<String> {
            self.upstream_saw.lock().clone()
        }

        async fn ask(&self, name: &str, kind: RecordType) -> Message {
            let bytes = self
                .ask_raw(&query_bytes(name, kind))
                .await
                .expect("an answer");
            Message::from_vec(&bytes).expect("answer parses")
        }

        /// Sends `packet` and waits up to 5 s for the answer.
        async fn ask_raw(&self, packet: &[u8]) -> Option<Vec<u8>> {
            ask_raw(self.forwarder, packet, Duration::from_secs(5)).await
        }
    }

    async fn ask_raw(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        socket.send_to(packet, server).await.expect("send");
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let length = tokio::time::timeout(wait, socket.recv(&mut buffer))
            .await
            .ok()?
            .expect("recv");
        buffer.truncate(length);
        Some(buffer)
    }

    fn query_message(name: &str, kind: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        message
    }

    fn query_bytes(name: &str, kind: RecordType) -> Vec<u8> {
        query_message(name, kind).to_vec().expect("encode")
    }

    fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers
            .iter()
            .filter_map(|record| match record.data {
                RData::A(A(address)) => Some(address),
                _ => None,
            })
            .collect()
    }

    fn code(message: &Message) -> ResponseCode {
        message.metadata.response_code
    }

    #[tokio::test]
    async fn private_answers_are_admitted_only_where_the_policy_names_their_network() {
        let harness =
            Harness::start(allow_only(&["lan.test", "metadata.test", "neighbour.test"])).await;
        for name in ["lan.test", "metadata.test", "neighbour.test"] {
            let answer = harness.ask(name, RecordType::A).await;
            assert_eq!(code(&answer), ResponseCode::NoError, "{name}");
        }
        // Only the public address of lan.test; nothing of the link-local or sprite ones.
        let admitted: Vec<Ipv4Addr> = calls(&harness.sink_calls)
            .into_iter()
            .flat_map(|(_, addrs)| addrs.into_iter().map(|(a, _)| a))
            .collect();
        assert_eq!(admitted, [Ipv4Addr::new(198, 51, 100, 9)]);
        harness
            .policy
            .send_replace(Arc::new(NetworkPolicy::new(vec![
                PolicyRule::allow("lan.test"),
                PolicyRule::allow_network("192.168.1.0/24"),
            ])));
        harness.ask("lan.test", RecordType::A).await;
        let last = calls(&harness.sink_calls).pop().expect("a call");
        let addrs: Vec<Ipv4Addr> = last.1.iter().map(|(a, _)| *a).collect();
        assert_eq!(
            addrs,
            [
                Ipv4Addr::new(192, 168, 1, 5),
                Ipv4Addr::new(198, 51, 100, 9)
            ]
        );
    }

    /// An upstream that answers every query with `answer(query)`, and records the ids
    /// it saw.
    async fn scripted_upstream(
        answer: impl Fn(&Message) -> Message + Send + 'static,
    ) -> (SocketAddr, Arc<Mutex<Vec<u16>>>, JoinSet<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let address = socket.local_addr().expect("addr");
        let ids = Arc::new(Mutex::new(Vec::new()));
        let seen = ids.clone();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut buffer = vec![0u8; MAX_MESSAGE];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..length]) else {
                    continue;
                };
                seen.lock().push(query.metadata.id);
                let reply = answer(&query).to_vec().expect("encode");
                let _ = socket.send_to(&reply, peer).await;
            }
        });
        (address, ids, tasks)
    }

    #[tokio::test]
    async fn upstream_queries_carry_ids_of_their_own_and_other_questions_are_refused() {
        // An honest upstream: it sees another id than the sprite's, the sprite its own.
        let (upstream, ids, tasks) = scripted_upstream(|query| {
            let mut reply = response_message(query, ResponseCode::NoError);
            reply.add_answer(Record::from_rdata(
                query.queries[0].name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(198, 51, 100, 1))),
            ));
            reply
        })
        .await;
        let harness = Harness::with_upstreams(
            tasks,
            vec![upstream],
            Duration::from_secs(2),
            allow_only(&["a.test"]),
        )
        .await;
        let mut query = query_message("a.test", RecordType::A);
        query.metadata.id = 0x1234;
        let answer = Message::from_vec(
            &harness
                .ask_raw(&query.to_vec().expect("encode"))
                .await
                .expect("answer"),
        )
        .expect("parse");
        assert_eq!(answer.metadata.id, 0x1234);
        assert_eq!(addresses(&answer), [Ipv4Addr::new(198, 51, 100, 1)]);
        assert!(!ids.lock().contains(&0x1234), "the sprite's id went out");

        // One that answers another question (a forged answer for another name) is
        // refused: SERVFAIL, and nothing admitted.
        let (forger, _, tasks) = scripted_upstream(|query| {
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.add_query(Query::query(
                Name::from_ascii("evil.test.").expect("name"),
                RecordType::A,
            ));
            reply.add_answer(Record::from_rdata(
                Name::from_ascii("evil.test.").expect("name"),
                60,
                RData::A(A(Ipv4Addr::new(198, 51, 100, 66))),
            ));
            reply
        })
        .await;
        let harness = Harness::with_upstreams(
            tasks,
            vec![forger],
            Duration::from_secs(2),
            allow_only(&["a.test"]),
        )
        .await;
        let answer = harness.ask("a.test", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::ServFail);
        assert!(calls(&harness.sink_calls).is_empty());
    }

    #[tokio::test]
    async fn an_allowed_name_is_forwarded_and_admitted_before_the_answer() {
        let harness = Harness::start(allow_only(&["allowed.test"])).await;
        let answer = harness.ask("Allowed.Test.", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NoError);
        assert_eq!(
            addresses(&answer),
            [
                Ipv4Addr::new(198, 51, 100, 1),
                Ipv4Addr::new(198, 51, 100, 2)
            ]
        );
        assert!(answer.metadata.recursion_available || answer.metadata.authoritative);
        // The sink sleeps before recording: the answer arriving after the record shows
        // the forwarder waited for it.
        assert_eq!(
            calls(&harness.sink_calls),
            [(
                "allowed.test".to_string(),
                vec![
                    (Ipv4Addr::new(198, 51, 100, 1), Duration::from_secs(60)),
                    (Ipv4Addr::new(198, 51, 100, 2), Duration::from_secs(60)),
                ]
            )]
        );
        assert_eq!(harness.upstream_saw(), ["allowed.test"]);
    }

    #[tokio::test]
    async fn a_denied_name_gets_nxdomain_and_never_reaches_the_upstream() {
        let harness = Harness::start(allow_only(&["allowed.test"])).await;
        let query = query_message("denied.test.", RecordType::A);
        let answer = harness.ask("denied.test.", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NXDomain);
        assert_eq!(answer.metadata.message_type, MessageType::Response);
        assert!(answer.metadata.recursion_available);
        assert!(answer.metadata.recursion_desired);
        assert_eq!(answer.queries, query.queries);
        assert!(answer.answers.is_empty());
        assert!(harness.upstream_saw().is_empty());
        assert!(calls(&harness.sink_calls).is_empty());

        // The id is echoed.
        let bytes = query_bytes("other.test", RecordType::A);
        let answer = harness.ask_raw(&bytes).await.expect("answer");
        assert_eq!(answer[..2], bytes[..2]);
    }

    #[tokio::test]
    async fn a_policy_change_applies_to_the_next_query() {
        let harness = Harness::start(allow_only(&["allowed.test"])).await;
        let answer = harness.ask("denied.test", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NXDomain);

        harness
            .policy
            .send(allow_only(&["denied.test"]))
            .expect("send policy");
        let answer = harness.ask("denied.test", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NoError);
        assert_eq!(addresses(&answer), [Ipv4Addr::new(198, 51, 100, 3)]);
        let answer = harness.ask("allowed.test", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NXDomain);
        assert_eq!(harness.upstream_saw(), ["denied.test"]);
    }

    #[tokio::test]
    async fn an_unrestricted_sprite_resolves_everything_without_the_sink() {
        let harness = Harness::start(Arc::new(NetworkPolicy::default())).await;
        let answer = harness.ask("denied.test", RecordType::A).await;
        assert_eq!(addresses(&answer), [Ipv4Addr::new(198, 51, 100, 3)]);
        let answer = harness.ask("unknown.test", RecordType::A).await;
        assert_eq!(code(&answer), ResponseCode::NXDomain);
        // Not restricted: AAAA goes upstream too (which has none).
        let answer = harness.ask("allowed.test", RecordType::AAAA).await;
        assert_eq!(code(&answer), ResponseCode::NoError);
        assert!(calls(&harness.sink_calls).is_empty());
        assert_eq!(
            harness.upstream_saw(),
            ["denied.test", "unknown.test", "allowed.test"]
        );
    }

    #[tokio::test]
    async fn a_restricted_sprite_gets_empty_v6_and_https_answers() {
        let harness = Harness::start(allow_only(&["allowed.test"])).await;
        for kind in [RecordType::AAAA, RecordType::HTTPS, RecordType::SVCB] {
            let answer = harness.ask("allowed.test", kind).await;
            assert_eq!(code(&answer), ResponseCode::NoError, "{kind}");
            assert!(answer.answers.is_empty(), "{kind}");
            assert_eq!(answer.queries.len(), 1, "{kind}");
        }
        // Denied names stay NXDOMAIN whatever the type.
        let answer = harness.ask("denied.test", RecordType::AAAA).await;
        assert_eq!(code(&answer), ResponseCode::NXDomain);
        assert!(harness.upstream_saw().is_empty());
    }

    #[tokio::test]
    async fn dead_upstreams_give_servfail_within_the_timeout() {
        // One upstream port is closed (refused at once), the other never answers.
        let closed = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let closed_address = closed.local_addr().expect("addr");
        drop(closed);
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let timeout = Duration::from_millis(300);
        let harness = Harness::with_upstreams(
            JoinSet::new(),
            vec![closed_address, silent.local_addr().expect("addr")],
            timeout,
            allow_only(&["allowed.test"]),
        )
        .await;
        let started = Instant::now();
        let answer = harness.ask("allowed.test", RecordType::A).await;
        let elapsed = started.elapsed();
        assert_eq!(code(&answer), ResponseCode::ServFail);
        assert_eq!(answer.queries.len(), 1);
        assert!(elapsed >= timeout, "{elapsed:?}");
        assert!(
            elapsed < timeout * 2 + Duration::from_millis(1500),
            "{elapsed:?}"
        );
        assert!(calls(&harness.sink_calls).is_empty());
    }

    #[tokio::test]
    async fn the_next_upstream_answers_when_the_first_is_dead() {
        let closed = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let closed_address = closed.local_addr().expect("addr");
        drop(closed);
        let mut tasks = JoinSet::new();
        let upstream_socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let upstream = upstream_socket.local_addr().expect("addr");
        tasks.spawn(async move {
            let _ = serve_static(upstream_socket, records()).await;
        });
        let harness = Harness::with_upstreams(
            tasks,
            vec![closed_address, upstream],
            Duration::from_secs(2),
            allow_only(&["allowed.test"]),
        )
        .await;
        let answer = harness.ask("allowed.test", RecordType::A).await;
        assert_eq!(addresses(&answer).len(), 2);
    }

    #[tokio::test]
    async fn garbage_is_refused_or_ignored_and_the_server_goes_on() {
        let harness = Harness::start(allow_only(&["allowed.test"])).await;
        let short = Duration::from_millis(300);

        // Too short to answer, or a response: ignored.
        assert_eq!(ask_raw(harness.forwarder, &[0xde, 0xad], short).await, None);
        let mut response = query_bytes("allowed.test", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(ask_raw(harness.forwarder, &response, short).await, None);

        // A question count with no question: FORMERR, id and RD echoed.
        let header = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let answer = harness.ask_raw(&header).await.expect("formerr");
        assert_eq!(answer, [0x12, 0x34, 0x81, 0x81, 0, 0, 0, 0, 0, 0, 0, 0]);

        // Random bytes after a plausible header.
        let mut noise = vec![0x55, 0x66, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        noise.extend((0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        // Whatever they parse to (likely nothing), the answer is a response to them.
        let answer = harness.ask_raw(&noise).await.expect("an answer");
        assert_eq!(answer[..2], [0x55, 0x66]);
        assert_ne!(answer[2] & 0x80, 0);

        // Two questions: FORMERR.
        let mut two = query_message("allowed.test", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("denied.test").expect("name"),
            RecordType::A,
        ));
        let answer = harness
            .ask_raw(&two.to_vec().expect("encode"))
            .await
            .expect("formerr");
        assert_eq!(answer[3] & 0x0f, ResponseCode::FormErr.low());

        // Another opcode (STATUS): NOTIMP.
        let mut status = query_bytes("allowed.test", RecordType::A);
        status[2] = (status[2] & 0x87) | (2 << 3);
        let answer = harness.ask_raw(&status).await.expect("notimp");
        assert_eq!(answer[3] & 0x0f, ResponseCode::NotImp.low());
        assert_eq!((answer[2] >> 3) & 0x0f, 2);

        let answer = harness.ask("allowed.test", RecordType::A).await;
        assert_eq!(addresses(&answer).len(), 2);
        assert_eq!(harness.upstream_saw(), ["allowed.test"]);
    }

    /// Answers DNS over TCP from `records`, one query per connection.
    async fn serve_static_tcp(listener: TcpListener, records: HashMap<String, Vec<Ipv4Addr>>) {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut prefix = [0u8; 2];
            if stream.read_exact(&mut prefix).await.is_err() {
                continue;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            if stream.read_exact(&mut query).await.is_err() {
                continue;
            }
            let Some(answer) = static_answer(&query, &records, false) else {
                continue;
            };
            let length = u16::try_from(answer.len()).expect("answer fits");
            let _ = stream.write_all(&length.to_be_bytes()).await;
            let _ = stream.write_all(&answer).await;
        }
    }

    #[tokio::test]
    async fn a_truncated_answer_is_fetched_over_tcp_and_every_address_admitted() {
        let mut tasks = JoinSet::new();
        // A free UDP port whose TCP twin is free too (other tests hold TCP ports).
        let mut attempts = 0;
        let (udp, upstream, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let upstream = udp.local_addr().expect("addr");
            match TcpListener::bind(upstream).await {
                Ok(tcp) => break (udp, upstream, tcp),
                Err(_) if attempts < 50 => attempts += 1,
                Err(error) => panic!("no port free for both udp and tcp: {error}"),
            }
        };
        tasks.spawn(async move {
            let _ = serve_static(udp, records()).await;
        });
        tasks.spawn(serve_static_tcp(tcp, records()));
        let harness = Harness::with_upstreams(
            tasks,
            vec![upstream],
            Duration::from_secs(2),
            allow_only(&["many.test"]),
        )
        .await;

        let bytes = harness
            .ask_raw(&query_bytes("many.test", RecordType::A))
            .await
            .expect("answer");
        assert!(bytes.len() <= 512, "{} bytes", bytes.len());
        let answer = Message::from_vec(&bytes).expect("parse");
        assert!(!answer.metadata.truncation);
        let got = addresses(&answer);
        assert!(got.len() > 10, "{}", got.len());
        assert_eq!(got[0], Ipv4Addr::new(203, 0, 113, 1));

        let calls = calls(&harness.sink_calls);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "many.test");
        assert_eq!(calls[0].1.len(), 100);

        // A resolver that offers a big EDNS size gets more, but never more than
        // MAX_UDP_ANSWER bytes over UDP: the resolver is no amplifier.
        let mut big = query_message("many.test", RecordType::A);
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(4096);
        big.set_edns(edns);
        let bytes = harness
            .ask_raw(&big.to_vec().expect("encode"))
            .await
            .expect("answer");
        assert!(bytes.len() <= MAX_UDP_ANSWER, "{} bytes", bytes.len());
        let answer = Message::from_vec(&bytes).expect("parse");
        assert!(
            addresses(&answer).len() > got.len(),
            "more than 512 bytes hold"
        );
        assert!(addresses(&answer).len() < 100);
    }

    #[test]
    fn admitted_addresses_follow_cname_chains_and_clamp_ttls() {
        let name = Name::from_ascii("www.allowed.test.").expect("name");
        let target = Name::from_ascii("edge.cdn.example.").expect("name");
        let mut message = Message::response(7, hickory_proto::op::OpCode::Query);
        message.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::CNAME(CNAME(target.clone())),
        ));
        for (last, ttl) in [(1, 0), (2, 600), (3, 86_400), (1, 30)] {
            message.add_answer(Record::from_rdata(
                target.clone(),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
            ));
        }
        assert_eq!(
            admitted_addresses(&message),
            [
                (Ipv4Addr::new(192, 0, 2, 1), Duration::from_secs(30)),
                (Ipv4Addr::new(192, 0, 2, 2), Duration::from_secs(600)),
                (Ipv4Addr::new(192, 0, 2, 3), MAX_ADMIT_TTL),
            ]
        );
        let mut zero = Message::response(8, hickory_proto::op::OpCode::Query);
        zero.add_answer(Record::from_rdata(
            target,
            0,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 9))),
        ));
        assert_eq!(
            admitted_addresses(&zero),
            [(Ipv4Addr::new(192, 0, 2, 9), MIN_ADMIT_TTL)]
        );
    }

    #[test]
    fn fit_keeps_the_cname_and_as_many_addresses_as_fit() {
        let name = Name::from_ascii("www.allowed.test.").expect("name");
        let target = Name::from_ascii("edge.cdn.example.").expect("name");
        let mut message = Message::response(9, hickory_proto::op::OpCode::Query);
        message.add_query(Query::query(name.clone(), RecordType::A));
        message.metadata.truncation = true;
        message.add_answer(Record::from_rdata(
            name,
            300,
            RData::CNAME(CNAME(target.clone())),
        ));
        for last in 0..200u8 {
            message.add_answer(Record::from_rdata(
                target.clone(),
                60,
                RData::A(A(Ipv4Addr::new(198, 51, 100, last))),
            ));
        }
        let bytes = message.to_vec().expect("encode");
        assert!(bytes.len() > 512);
        let fitted = fit(
            UpstreamAnswer {
                bytes: bytes.clone(),
                message: message.clone(),
            },
            512,
        );
        assert!(fitted.len() <= 512);
        let cut = Message::from_vec(&fitted).expect("parse");
        assert!(!cut.metadata.truncation);
        assert_eq!(cut.metadata.id, 9);
        assert!(matches!(cut.answers[0].data, RData::CNAME(_)));
        assert!(addresses(&cut).len() > 20, "{}", addresses(&cut).len());
        // What fits is left alone, byte for byte.
        let whole = fit(
            UpstreamAnswer {
                bytes: bytes.clone(),
                message,
            },
            bytes.len(),
        );
        assert_eq!(whole, bytes);
    }

    #[test]
    fn static_answers_are_authoritative_with_nodata_and_nxdomain() {
        let records = records();
        let records: HashMap<String, Vec<Ipv4Addr>> = records
            .into_iter()
            .map(|(name, addresses)| (normalize_name(&name), addresses))
            .collect();
        let answer = |name: &str, kind| {
            let bytes = static_answer(&query_bytes(name, kind), &records, true).expect("answer");
            Message::from_vec(&bytes).expect("parse")
        };
        let found = answer("DENIED.test.", RecordType::A);
        assert!(found.metadata.authoritative);
        assert_eq!(addresses(&found), [Ipv4Addr::new(198, 51, 100, 3)]);
        assert_eq!(found.answers[0].ttl, STATIC_TTL);
        let nodata = answer("denied.test", RecordType::MX);
        assert_eq!(code(&nodata), ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        assert_eq!(
            code(&answer("nothing.test", RecordType::A)),
            ResponseCode::NXDomain
        );
        let too_big = answer("many.test", RecordType::A);
        assert!(too_big.metadata.truncation);
        assert!(too_big.answers.is_empty());
    }

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "\
# generated
; also a comment
search example.internal
nameserver 10.0.0.2
nameserver 127.0.0.53
nameserver   10.0.0.2
nameserver 2001:db8::53
nameserver fe80::1%2
nameserver fe80::1%eth0
nameserver ::1
nameserver not-an-address
nameserver
options edns0 trust-ad
#nameserver 10.9.9.9
";
        let v6 = |text: &str, scope| -> SocketAddr {
            SocketAddrV6::new(text.parse().expect("v6"), 53, 0, scope).into()
        };
        let all = upstreams_from_resolv_conf(text, false);
        assert_eq!(
            all,
            [
                SocketAddr::from(([10, 0, 0, 2], 53)),
                SocketAddr::from(([127, 0, 0, 53], 53)),
                v6("2001:db8::53", 0),
                v6("fe80::1", 2),
                v6("::1", 0),
            ]
        );
        let remote = upstreams_from_resolv_conf(text, true);
        assert_eq!(
            remote,
            [
                SocketAddr::from(([10, 0, 0, 2], 53)),
                v6("2001:db8::53", 0),
                v6("fe80::1", 2),
            ]
        );
        assert!(upstreams_from_resolv_conf("", true).is_empty());
    }

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn admitted_addresses_are_revoked_when_no_name_allows_them() {
        let start = Instant::now();
        let shared = Ipv4Addr::new(203, 0, 113, 1);
        let only_a = Ipv4Addr::new(203, 0, 113, 2);
        let only_b = Ipv4Addr::new(203, 0, 113, 3);
        let ttl = Duration::from_secs(60);
        let mut admitted = Admitted::new();
        admitted.note("A.example.", &[(shared, ttl), (only_a, ttl)], start);
        admitted.note("b.example", &[(shared, ttl), (only_b, ttl)], start);
        assert_eq!(admitted.len(), 3);
        assert_eq!(admitted.names(shared), ["a.example", "b.example"]);

        // Unrestricted or unchanged: nothing goes.
        assert!(admitted
            .revoke_for(&NetworkPolicy::default(), at(start, 1))
            .is_empty());
        let both = NetworkPolicy::new(vec![PolicyRule::allow("*.example")]);
        assert!(admitted.revoke_for(&both, at(start, 1)).is_empty());

        // b.example denied: its own address goes, the shared one stays for a.example.
        let only_a_allowed = NetworkPolicy::new(vec![
            PolicyRule::allow("*.example"),
            PolicyRule::deny("b.example"),
        ]);
        assert_eq!(admitted.revoke_for(&only_a_allowed, at(start, 2)), [only_b]);
        assert!(admitted.contains(shared) && admitted.contains(only_a));
        assert!(!admitted.contains(only_b));

        // Nothing allowed: everything goes.
        let none = NetworkPolicy::new(vec![PolicyRule::allow("other.example")]);
        assert_eq!(admitted.revoke_for(&none, at(start, 3)), [shared, only_a]);
        assert!(admitted.is_empty());
    }

    #[test]
    fn revoke_ignores_expired_names() {
        let start = Instant::now();
        let address = Ipv4Addr::new(203, 0, 113, 9);
        let mut admitted = Admitted::new();
        admitted.note("old.example", &[(address, Duration::from_secs(10))], start);
        admitted.note("new.example", &[(address, Duration::from_secs(100))], start);
        let old_only = NetworkPolicy::new(vec![PolicyRule::allow("old.example")]);
        // While old.example's entry lives, it keeps the address.
        assert!(admitted.revoke_for(&old_only, at(start, 5)).is_empty());
        // Once it expired, only new.example speaks for the address, and it is denied.
        assert_eq!(admitted.revoke_for(&old_only, at(start, 11)), [address]);
    }

    #[test]
    fn expire_forgets_names_then_addresses() {
        let start = Instant::now();
        let first = Ipv4Addr::new(198, 51, 100, 1);
        let second = Ipv4Addr::new(198, 51, 100, 2);
        let mut admitted = Admitted::new();
        admitted.note("a.example", &[(first, Duration::from_secs(10))], start);
        admitted.note("b.example", &[(first, Duration::from_secs(30))], start);
        admitted.note("a.example", &[(second, Duration::from_secs(20))], start);
        // Noting again with a shorter TTL does not shorten the expiry.
        admitted.note(
            "a.example",
            &[(second, Duration::from_secs(5))],
            at(start, 1),
        );
        assert_eq!(admitted.until(first), Some(at(start, 30)));
        assert_eq!(admitted.until(second), Some(at(start, 20)));

        assert!(admitted.expire(at(start, 10)).is_empty());
        assert_eq!(admitted.names(first), ["b.example"]);
        assert_eq!(admitted.expire(at(start, 20)), [second]);
        assert_eq!(admitted.expire(at(start, 30)), [first]);
        assert!(admitted.is_empty());
        assert_eq!(admitted.until(first), None);

        // A TTL too large to add to the clock is held for the longest admit time.
        admitted.note("c.example", &[(first, Duration::MAX)], start);
        assert_eq!(admitted.until(first), Some(start + MAX_ADMIT_TTL));
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use sprite_api::fuzz::{budget, fuzz};

    /// What the forwarder reads: a sprite's query (any bytes on its socket), and an
    /// upstream's answer to it. Nothing panics; an answer cut for UDP fits the limit (or
    /// is sent as the upstream sent it when it cannot be cut).
    #[test]
    fn fuzz_dns_messages() {
        let query = {
            let mut message = Message::query();
            message.add_query(Query::query(
                hickory_proto::rr::Name::from_ascii("allowed.test.").expect("name"),
                RecordType::A,
            ));
            message.to_vec().expect("encode")
        };
        let answer = {
            let mut message = Message::from_vec(&query).expect("parse");
            message.metadata.message_type = hickory_proto::op::MessageType::Response;
            for i in 0..40 {
                message.add_answer(Record::from_rdata(
                    hickory_proto::rr::Name::from_ascii("allowed.test.").expect("name"),
                    60,
                    RData::A(A(Ipv4Addr::new(198, 51, 100, i))),
                ));
            }
            message.to_vec().expect("encode")
        };
        let seeds: &[&[u8]] = &[
            &query,
            &answer,
            &[0u8; 12],
            b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
        ];
        let question = Query::query(
            hickory_proto::rr::Name::from_ascii("allowed.test.").expect("name"),
            RecordType::A,
        );
        let policy = NetworkPolicy::new(vec![
            sprite_api::policy::PolicyRule::allow("allowed.test"),
            sprite_api::policy::PolicyRule::allow_network("198.51.100.0/24"),
        ]);
        fuzz(
            "dns messages",
            budget(),
            seeds,
            &[b"\xc0\x0c", b"\x00\x29", b"\xff\xff"],
            |input| {
                // As a sprite's query.
                if let Some(Ok((header, query, question))) = parse_query(input) {
                    let _ = question_name(&question);
                    let _ = response(&header, &query, ResponseCode::NXDomain);
                    let _ = policy.decide(&question_name(&question));
                }
                // As an upstream's answer.
                if let Ok(message) = Message::from_vec(input) {
                    let _ = same_question(&message, &question);
                    let addresses = admitted_addresses(&message);
                    assert!(addresses
                        .iter()
                        .all(|(_, ttl)| (MIN_ADMIT_TTL..=MAX_ADMIT_TTL).contains(ttl)));
                    let bytes = input.to_vec();
                    let cut = fit(
                        UpstreamAnswer {
                            bytes: bytes.clone(),
                            message,
                        },
                        MAX_UDP_ANSWER,
                    );
                    assert!(
                        cut.len() <= MAX_UDP_ANSWER || cut == bytes,
                        "{} bytes",
                        cut.len()
                    );
                }
            },
        );
    }
}
