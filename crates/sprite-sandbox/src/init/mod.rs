//! sprite-init: PID 1 of every sprite.
//!
//! It reaps every process in the sprite, starts processes on the daemon's request (with
//! argv, environment, working directory, user and an optional PTY), streams their
//! output, delivers stdin, signals and resizes, and reports exit codes. Sessions live
//! here, not in the daemon, so a daemon restart loses nothing: the daemon reconnects to
//! `init.sock` and re-attaches. A session keeps its recent output for replay.

pub(crate) mod files;
pub mod services;
mod session;
pub mod users;

use crate::protocol::{self, ErrorCode, Event, Message, Request};
use services::Services;
use session::{Session, Sessions};
use std::sync::Arc;
use tokio::net::UnixStream;

/// Runs sprite-init until the process is killed. Returns an exit code on fatal error.
pub fn serve(listener: std::os::unix::net::UnixListener) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sprite-init: start runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(async move {
        if let Ok(hostname) = nix::unistd::gethostname() {
            let hostname = hostname.to_string_lossy().into_owned();
            tokio::task::spawn_blocking(move || crate::launch::name_in_hostname_file(&hostname));
        }
        let sessions = Arc::new(Sessions::default());
        if let Err(error) = listener.set_nonblocking(true) {
            eprintln!("sprite-init: listener: {error}");
            return 1;
        }
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("sprite-init: listener: {error}");
                return 1;
            }
        };
        tokio::spawn(session::reap_forever(sessions.clone()));
        let services = Services::load(sessions.clone(), std::path::Path::new("/"));
        services.boot();
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let sessions = sessions.clone();
                    let services = services.clone();
                    tokio::spawn(async move {
                        if let Err(error) = handle_connection(sessions, services, stream).await {
                            eprintln!(
                                "sprite-init: connection: {}",
                                sprite_api::error_chain(&error)
                            );
                        }
                    });
                }
                Err(error) => {
                    eprintln!("sprite-init: accept: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

async fn send_event(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    event: &Event,
) -> Result<(), protocol::ProtocolError> {
    protocol::write_message(stream, &Message::control(event)?).await
}

async fn handle_connection(
    sessions: Arc<Sessions>,
    services: Arc<Services>,
    mut stream: UnixStream,
) -> Result<(), protocol::ProtocolError> {
    let Some(first) = protocol::read_message(&mut stream).await? else {
        return Ok(());
    };
    let Message::Control(payload) = first else {
        return send_event(
            &mut stream,
            &error(ErrorCode::Invalid, "first frame must be a request"),
        )
        .await;
    };
    let request: Request = match protocol::parse_control(&payload) {
        Ok(request) => request,
        Err(e) => return send_event(&mut stream, &error(ErrorCode::Invalid, &e.to_string())).await,
    };
    match request {
        Request::Ping => {
            let event = Event::Pong {
                pid: std::process::id(),
                sessions: sessions.count(),
            };
            send_event(&mut stream, &event).await
        }
        Request::List => {
            send_event(
                &mut stream,
                &Event::Sessions {
                    sessions: sessions.summaries(),
                },
            )
            .await
        }
        Request::Kill { session_id, signal } => {
            let event = match sessions.get(&session_id) {
                None => error(
                    ErrorCode::NotFound,
                    &format!("session {session_id} not found"),
                ),
                Some(session) if session.exit_code().is_some() => error(
                    ErrorCode::Gone,
                    &format!("session {session_id} already exited"),
                ),
                Some(session) => match session.signal(signal) {
                    Ok(()) => Event::Ok,
                    Err(e) => error(ErrorCode::Invalid, &format!("signal {signal}: {e}")),
                },
            };
            send_event(&mut stream, &event).await
        }
        Request::ServicePut { name, spec } => {
            let answer = services.put(&name, spec).await;
            send_event(&mut stream, &service_event(answer)).await
        }
        Request::ServiceList => {
            let event = Event::ServiceList {
                services: services.list(),
            };
            send_event(&mut stream, &event).await
        }
        Request::ServiceGet { name } => {
            send_event(&mut stream, &service_event(services.get(&name))).await
        }
        Request::ServiceStart { name } => {
            send_event(&mut stream, &service_event(services.start(&name))).await
        }
        Request::ServiceStop { name, grace_ms } => {
            let grace = grace_ms.map(std::time::Duration::from_millis);
            send_event(&mut stream, &service_event(services.stop(&name, grace))).await
        }
        Request::ServiceSignal { name, signal } => {
            let event = match services.signal(&name, signal) {
                Ok(()) => Event::Ok,
                Err((kind, message)) => error(kind, &message),
            };
            send_event(&mut stream, &event).await
        }
        Request::ServiceDelete { name } => {
            let event = match services.delete(&name).await {
                Ok(()) => Event::Ok,
                Err((kind, message)) => error(kind, &message),
            };
            send_event(&mut stream, &event).await
        }
        Request::ServiceLogs { name, lines } => {
            let event = match services.logs(&name, lines) {
                Ok(text) => Event::Logs { text },
                Err((kind, message)) => error(kind, &message),
            };
            send_event(&mut stream, &event).await
        }
        Request::Rename { hostname } => {
            crate::launch::name_in_hosts(&hostname);
            crate::launch::name_in_hostname_file(&hostname);
            send_event(&mut stream, &Event::Ok).await
        }
        Request::Spawn(spawn) => match Session::spawn(&sessions, spawn) {
            Ok(session) => attach(session, stream, false).await,
            Err(message) => send_event(&mut stream, &error(ErrorCode::SpawnFailed, &message)).await,
        },
        Request::Attach { session_id, replay } => match sessions.get(&session_id) {
            Some(session) => attach(session, stream, replay).await,
            None => {
                send_event(
                    &mut stream,
                    &error(
                        ErrorCode::NotFound,
                        &format!("session {session_id} not found"),
                    ),
                )
                .await
            }
        },
        Request::Resize { .. } | Request::Signal { .. } => {
            send_event(
                &mut stream,
                &error(
                    ErrorCode::Invalid,
                    "resize and signal belong to an attached session",
                ),
            )
            .await
        }
    }
}

fn service_event(answer: Result<sprite_api::services::ServiceInfo, (ErrorCode, String)>) -> Event {
    match answer {
        Ok(service) => Event::Service {
            service: Box::new(service),
        },
        Err((kind, message)) => error(kind, &message),
    }
}

fn error(kind: ErrorCode, message: &str) -> Event {
    Event::Error {
        kind,
        message: message.to_string(),
    }
}

/// Streams a session to one daemon connection until the process exits (then the exit
/// event is the last frame) or the daemon goes away (the session keeps running).
async fn attach(
    session: Arc<Session>,
    stream: UnixStream,
    replay: bool,
) -> Result<(), protocol::ProtocolError> {
    let (mut reader, mut writer) = stream.into_split();
    let (subscriber_id, backlog, mut receiver) = session.subscribe(replay);
    let (command, created_ms, (cols, rows)) = session.details();
    let started = Event::Started {
        session_id: session.id.clone(),
        pid: session.pid,
        tty: session.tty,
        command,
        created_ms,
        cols,
        rows,
    };
    send_event(&mut writer, &started).await?;
    let session_in = session.clone();
    let inbound = async move {
        loop {
            match protocol::read_message(&mut reader).await {
                Ok(Some(Message::Stdin(data))) => session_in.write_stdin(&data).await,
                Ok(Some(Message::StdinEof)) => session_in.close_stdin().await,
                Ok(Some(Message::Control(payload))) => {
                    match protocol::parse_control::<Request>(&payload) {
                        Ok(Request::Resize { cols, rows }) => session_in.resize(cols, rows),
                        Ok(Request::Signal { signal }) => {
                            let _ = session_in.signal(signal);
                        }
                        _ => {}
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    };
    let outbound = async move {
        for output in backlog {
            protocol::write_message(&mut writer, &output.into_message()?).await?;
        }
        // The exit is the last frame of an attachment.
        while let Some(output) = receiver.recv().await {
            let last = matches!(output, session::Output::Exit(_));
            protocol::write_message(&mut writer, &output.into_message()?).await?;
            if last {
                return Ok(());
            }
        }
        Ok(())
    };
    let result = tokio::select! {
        result = outbound => result,
        // The daemon hung up: detach, leave the process running.
        () = inbound => Ok(()),
    };
    session.unsubscribe(subscriber_id);
    result
}
