//! The daemon's side of the init protocol.

use crate::error::SandboxError;
use crate::protocol::{self, Event, Message, Request, SessionSummary, SpawnRequest};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Longest wait for sprite-init's answer to a request (a service stop waits up to its
/// grace period before it answers).
pub const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to the sprite-init of one sprite.
#[derive(Debug, Clone)]
pub struct InitClient {
    socket: PathBuf,
}

/// What an attached session sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

/// Receiving half of an attached session.
#[derive(Debug)]
pub struct SessionReader {
    reader: OwnedReadHalf,
}

/// Sending half of an attached session.
#[derive(Debug)]
pub struct SessionWriter {
    writer: OwnedWriteHalf,
}

/// A session the daemon is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub session_id: String,
    pub pid: u32,
    pub tty: bool,
    /// The command line, when it started (Unix ms), its terminal size (0 without one).
    pub command: String,
    pub created_ms: u64,
    pub size: (u16, u16),
    pub reader: SessionReader,
    pub writer: SessionWriter,
}

fn answer_error(event: Event) -> SandboxError {
    match event {
        Event::Error { kind, message } => SandboxError::Init { kind, message },
        other => SandboxError::Unexpected(format!("{other:?}")),
    }
}

impl InitClient {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        InitClient {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    async fn connect(&self) -> Result<UnixStream, SandboxError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|e| SandboxError::Connect(self.socket.clone(), e))
    }

    /// One request and its first answer, within [`INIT_TIMEOUT`]: a sprite whose PID 1
    /// does not answer (stuck, or frozen under the caller) never holds a daemon task.
    async fn request(&self, request: &Request) -> Result<(UnixStream, Event), SandboxError> {
        let exchange = async {
            let mut stream = self.connect().await?;
            protocol::write_message(&mut stream, &Message::control(request)?).await?;
            let event = read_event(&mut stream).await?;
            Ok((stream, event))
        };
        tokio::time::timeout(INIT_TIMEOUT, exchange)
            .await
            .map_err(|_| SandboxError::InitTimeout(self.socket.clone(), INIT_TIMEOUT))?
    }

    /// Checks that sprite-init answers; returns its pid as seen inside the sprite.
    pub async fn ping(&self, timeout: Duration) -> Result<u32, SandboxError> {
        let answer = tokio::time::timeout(timeout, self.request(&Request::Ping))
            .await
            .map_err(|_| SandboxError::Unexpected("no answer to ping".into()))??;
        match answer.1 {
            Event::Pong { pid, .. } => Ok(pid),
            other => Err(answer_error(other)),
        }
    }

    pub async fn list(&self) -> Result<Vec<SessionSummary>, SandboxError> {
        match self.request(&Request::List).await?.1 {
            Event::Sessions { sessions } => Ok(sessions),
            other => Err(answer_error(other)),
        }
    }

    pub async fn kill(&self, session_id: &str, signal: i32) -> Result<(), SandboxError> {
        let request = Request::Kill {
            session_id: session_id.to_string(),
            signal,
        };
        match self.request(&request).await?.1 {
            Event::Ok => Ok(()),
            other => Err(answer_error(other)),
        }
    }

    /// A service request; the answer event, or sprite-init's error.
    pub async fn service(&self, request: Request) -> Result<Event, SandboxError> {
        match self.request(&request).await?.1 {
            error @ Event::Error { .. } => Err(answer_error(error)),
            other => Ok(other),
        }
    }

    /// Tells sprite-init the sprite's new name (it makes the name resolve).
    pub async fn rename(&self, hostname: &str) -> Result<(), SandboxError> {
        let request = Request::Rename {
            hostname: hostname.to_string(),
        };
        match self.request(&request).await?.1 {
            Event::Ok => Ok(()),
            other => Err(answer_error(other)),
        }
    }

    pub async fn spawn(&self, spawn: SpawnRequest) -> Result<Attachment, SandboxError> {
        self.open(Request::Spawn(spawn)).await
    }

    pub async fn attach(&self, session_id: &str) -> Result<Attachment, SandboxError> {
        self.attach_from(session_id, true).await
    }

    /// Attaches to a session; `replay` sends its recent output first.
    pub async fn attach_from(
        &self,
        session_id: &str,
        replay: bool,
    ) -> Result<Attachment, SandboxError> {
        self.open(Request::Attach {
            session_id: session_id.to_string(),
            replay,
        })
        .await
    }

    async fn open(&self, request: Request) -> Result<Attachment, SandboxError> {
        let (stream, event) = self.request(&request).await?;
        match event {
            Event::Started {
                session_id,
                pid,
                tty,
                command,
                created_ms,
                cols,
                rows,
            } => {
                let (reader, writer) = stream.into_split();
                Ok(Attachment {
                    session_id,
                    pid,
                    tty,
                    command,
                    created_ms,
                    size: (cols, rows),
                    reader: SessionReader { reader },
                    writer: SessionWriter { writer },
                })
            }
            other => Err(answer_error(other)),
        }
    }
}

async fn read_event(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<Event, SandboxError> {
    match protocol::read_message(stream).await? {
        Some(Message::Control(payload)) => Ok(protocol::parse_control(&payload)?),
        Some(other) => Err(SandboxError::Unexpected(format!("{other:?}"))),
        None => Err(SandboxError::Unexpected("connection closed".into())),
    }
}

impl SessionReader {
    /// The next output or the exit; `None` if sprite-init went away without an exit.
    pub async fn next(&mut self) -> Result<Option<SessionEvent>, SandboxError> {
        loop {
            return match protocol::read_message(&mut self.reader).await? {
                Some(Message::Stdout(data)) => Ok(Some(SessionEvent::Stdout(data))),
                Some(Message::Stderr(data)) => Ok(Some(SessionEvent::Stderr(data))),
                Some(Message::Control(payload)) => {
                    match protocol::parse_control::<Event>(&payload)? {
                        Event::Exit { code } => Ok(Some(SessionEvent::Exit(code))),
                        _ => continue,
                    }
                }
                Some(_) => continue,
                None => Ok(None),
            };
        }
    }
}

impl SessionWriter {
    pub async fn stdin(&mut self, data: Vec<u8>) -> Result<(), SandboxError> {
        Ok(protocol::write_message(&mut self.writer, &Message::Stdin(data)).await?)
    }

    pub async fn stdin_eof(&mut self) -> Result<(), SandboxError> {
        Ok(protocol::write_message(&mut self.writer, &Message::StdinEof).await?)
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), SandboxError> {
        Ok(protocol::write_message(
            &mut self.writer,
            &Message::control(&Request::Resize { cols, rows })?,
        )
        .await?)
    }

    pub async fn signal(&mut self, signal: i32) -> Result<(), SandboxError> {
        Ok(protocol::write_message(
            &mut self.writer,
            &Message::control(&Request::Signal { signal })?,
        )
        .await?)
    }
}
