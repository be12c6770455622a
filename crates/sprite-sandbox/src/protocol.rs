//! The protocol between the daemon and sprite-init over `init.sock`.
//!
//! Every message is a frame: a 4-byte big-endian length (of what follows), one kind
//! byte, then the payload. Control messages are JSON; process I/O is raw bytes, so a
//! binary stream never pays for an encoding. One connection carries one operation:
//! a spawn or attach streams until the process exits, the rest answer once.

use serde::{Deserialize, Serialize};
use sprite_api::services::{ServiceInfo, ServiceSpec};
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Kind byte of a frame.
pub mod kind {
    pub const CONTROL: u8 = 1;
    pub const STDIN: u8 = 2;
    pub const STDIN_EOF: u8 = 3;
    pub const STDOUT: u8 = 16;
    pub const STDERR: u8 = 17;
}

/// What to start in the sprite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub argv: Vec<String>,
    pub path: String,
    /// Working directory; the user's home if absent.
    pub dir: Option<String>,
    /// The complete environment, when the caller replaces the default one.
    pub env: Option<Vec<(String, String)>>,
    /// Added to the default environment (the sprite's own `environment`).
    #[serde(default)]
    pub extra_env: BTreeMap<String, String>,
    /// Account to run as, looked up in the sprite's /etc/passwd.
    pub user: String,
    pub tty: bool,
    pub stdin: bool,
    pub cols: u16,
    pub rows: u16,
    /// Seconds a non-TTY process may run with no client attached; 0 = no limit.
    pub max_run_after_disconnect_secs: u64,
}

fn yes() -> bool {
    true
}

/// A request from the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Spawn(SpawnRequest),
    Attach {
        session_id: String,
        /// Whether recent output is replayed first (absent: yes).
        #[serde(default = "yes")]
        replay: bool,
    },
    Resize {
        cols: u16,
        rows: u16,
    },
    Signal {
        signal: i32,
    },
    List,
    Kill {
        session_id: String,
        signal: i32,
    },
    /// The sprite got a new name (a pooled sprite taken by a create): make it resolve.
    Rename {
        hostname: String,
    },
    /// Creates or replaces a service and starts it.
    ServicePut {
        name: String,
        spec: ServiceSpec,
    },
    ServiceList,
    ServiceGet {
        name: String,
    },
    ServiceStart {
        name: String,
    },
    /// Stops a service (sticky: it stays stopped across restarts until started).
    ServiceStop {
        name: String,
        /// Between SIGTERM and SIGKILL (absent: sprite-init's default, 5 s).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_ms: Option<u64>,
    },
    ServiceSignal {
        name: String,
        signal: i32,
    },
    ServiceDelete {
        name: String,
    },
    /// The last `lines` lines of the service's log.
    ServiceLogs {
        name: String,
        lines: usize,
    },
}

/// A session as sprite-init knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub id: String,
    pub command: String,
    pub workdir: String,
    pub tty: bool,
    pub pid: u32,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub last_activity_ms: u64,
    pub attached: usize,
    pub exit_code: Option<i32>,
    pub bytes_out: u64,
    /// Terminal size (0 without a TTY, or from an older sprite-init).
    #[serde(default)]
    pub cols: u16,
    #[serde(default)]
    pub rows: u16,
}

/// An answer or event from sprite-init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Pong {
        pid: u32,
        sessions: usize,
    },
    Started {
        session_id: String,
        pid: u32,
        tty: bool,
        /// The command line, when it started (Unix ms) and its terminal size (0 without
        /// a TTY); absent from an older sprite-init.
        #[serde(default)]
        command: String,
        #[serde(default)]
        created_ms: u64,
        #[serde(default)]
        cols: u16,
        #[serde(default)]
        rows: u16,
    },
    Exit {
        code: i32,
    },
    Sessions {
        sessions: Vec<SessionSummary>,
    },
    Ok,
    Error {
        kind: ErrorCode,
        message: String,
    },
    Service {
        service: Box<ServiceInfo>,
    },
    ServiceList {
        services: Vec<ServiceInfo>,
    },
    Logs {
        text: String,
    },
}

/// Error classes sprite-init reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    Gone,
    Invalid,
    SpawnFailed,
    Conflict,
}

/// One frame on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Control(Vec<u8>),
    Stdin(Vec<u8>),
    StdinEof,
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("init socket i/o")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("empty frame")]
    Empty,
    #[error("malformed control message")]
    Json(#[from] serde_json::Error),
}

impl Message {
    pub fn control<T: Serialize>(value: &T) -> Result<Message, ProtocolError> {
        Ok(Message::Control(serde_json::to_vec(value)?))
    }

    fn parts(&self) -> (u8, &[u8]) {
        match self {
            Message::Control(p) => (kind::CONTROL, p),
            Message::Stdin(p) => (kind::STDIN, p),
            Message::StdinEof => (kind::STDIN_EOF, &[]),
            Message::Stdout(p) => (kind::STDOUT, p),
            Message::Stderr(p) => (kind::STDERR, p),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = self.parts();
        let mut out = Vec::with_capacity(payload.len() + 5);
        out.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(payload);
        out
    }

    pub fn decode(kind: u8, payload: Vec<u8>) -> Result<Message, ProtocolError> {
        Ok(match kind {
            kind::CONTROL => Message::Control(payload),
            kind::STDIN => Message::Stdin(payload),
            kind::STDIN_EOF => Message::StdinEof,
            kind::STDOUT => Message::Stdout(payload),
            kind::STDERR => Message::Stderr(payload),
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }
}

/// Writes one message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
) -> Result<(), ProtocolError> {
    writer.write_all(&message.encode()).await?;
    Ok(())
}

/// Reads one message; `None` on a clean end of stream between frames.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Message>, ProtocolError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(header) as usize;
    if length == 0 {
        return Err(ProtocolError::Empty);
    }
    if length > MAX_FRAME {
        return Err(ProtocolError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await?;
    let kind = body.remove(0);
    Message::decode(kind, body).map(Some)
}

/// Parses a control payload.
pub fn parse_control<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ProtocolError> {
    Ok(serde_json::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip() {
        let messages = vec![
            Message::control(&Request::Ping).expect("json"),
            Message::Stdin(b"abc".to_vec()),
            Message::StdinEof,
            Message::Stdout(vec![0, 1, 2, 255]),
            Message::Stderr(Vec::new()),
        ];
        let mut wire = Vec::new();
        for message in &messages {
            write_message(&mut wire, message).await.expect("write");
        }
        let mut reader = wire.as_slice();
        for message in &messages {
            assert_eq!(
                read_message(&mut reader).await.expect("read").as_ref(),
                Some(message)
            );
        }
        assert_eq!(read_message(&mut reader).await.expect("eof"), None);
    }

    #[tokio::test]
    async fn refuses_oversize_and_unknown_frames() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        wire.push(kind::STDIN);
        assert!(matches!(
            read_message(&mut wire.as_slice()).await,
            Err(ProtocolError::TooLarge(_))
        ));
        let wire = [0, 0, 0, 1, 99];
        assert!(matches!(
            read_message(&mut wire.as_slice()).await,
            Err(ProtocolError::UnknownKind(99))
        ));
    }

    #[test]
    fn requests_are_tagged_json() {
        let json = serde_json::to_string(&Request::Kill {
            session_id: "s1".into(),
            signal: 15,
        })
        .expect("json");
        assert_eq!(json, r#"{"op":"kill","session_id":"s1","signal":15}"#);
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use sprite_api::fuzz::{budget, fuzz};

    /// A stream of init-protocol frames, read by both ends (the daemon reads sprite-init's
    /// events, sprite-init reads the daemon's requests): reading never panics nor
    /// allocates past [`MAX_FRAME`], and what decodes encodes back the same.
    #[test]
    fn fuzz_init_frames() {
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for message in [
            Message::control(&Request::Ping).expect("json"),
            Message::control(&Request::Kill {
                session_id: "3".into(),
                signal: 9,
            })
            .expect("json"),
            Message::control(&Event::Exit { code: 1 }).expect("json"),
            Message::Stdin(b"abc".to_vec()),
            Message::StdinEof,
            Message::Stdout(vec![0, 1, 2, 255]),
        ] {
            seeds.push(message.encode());
        }
        seeds.push([seeds[0].clone(), seeds[3].clone(), seeds[5].clone()].concat());
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        fuzz(
            "init frames",
            budget(),
            &seeds,
            &[b"\x00\x00\x00", b"\xff\xff\xff\xff", b"{\"op\":"],
            |input| {
                runtime.block_on(async {
                    let mut reader = input;
                    for _ in 0..64 {
                        let Ok(Some(message)) = read_message(&mut reader).await else {
                            break;
                        };
                        let encoded = message.encode();
                        let mut again = encoded.as_slice();
                        let decoded = read_message(&mut again).await.expect("our own encoding");
                        assert_eq!(decoded.as_ref(), Some(&message));
                        if let Message::Control(payload) = &message {
                            let _ = parse_control::<Request>(payload);
                            let _ = parse_control::<Event>(payload);
                        }
                    }
                });
            },
        );
    }
}
