//! The exec protocol: query parameters, the one-byte stream prefix of non-TTY binary
//! frames, the JSON text frames both ways, and session listings.

use serde::{Deserialize, Serialize};

/// Largest payload of one WebSocket frame the server accepts from a client.
pub const MAX_CLIENT_FRAME: usize = 1024 * 1024;
/// Largest query string the exec routes accept.
pub const MAX_QUERY_LEN: usize = 64 * 1024;
/// Most argv entries, and most environment entries.
pub const MAX_ARGS: usize = 4096;
/// Default time a non-TTY process keeps running after its last client left.
pub const DEFAULT_RUN_AFTER_DISCONNECT_SECS: u64 = 10;

/// Stream ids of non-TTY binary frames: first byte of each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamId {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Exit = 3,
    StdinEof = 4,
}

impl StreamId {
    pub fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => StreamId::Stdin,
            1 => StreamId::Stdout,
            2 => StreamId::Stderr,
            3 => StreamId::Exit,
            4 => StreamId::StdinEof,
            _ => return None,
        })
    }
}

/// A decoded non-TTY binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(u8),
    StdinEof,
}

/// Why a binary frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty binary frame")]
    Empty,
    #[error("unknown stream id {0}")]
    UnknownStream(u8),
    #[error("exit frame without a code")]
    ExitWithoutCode,
}

impl Frame {
    pub fn encode(&self) -> Vec<u8> {
        let (id, payload): (StreamId, &[u8]) = match self {
            Frame::Stdin(data) => (StreamId::Stdin, data),
            Frame::Stdout(data) => (StreamId::Stdout, data),
            Frame::Stderr(data) => (StreamId::Stderr, data),
            Frame::Exit(code) => return vec![StreamId::Exit as u8, *code],
            Frame::StdinEof => (StreamId::StdinEof, &[]),
        };
        let mut out = Vec::with_capacity(payload.len() + 1);
        out.push(id as u8);
        out.extend_from_slice(payload);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
        let (&first, payload) = bytes.split_first().ok_or(FrameError::Empty)?;
        let id = StreamId::from_byte(first).ok_or(FrameError::UnknownStream(first))?;
        Ok(match id {
            StreamId::Stdin => Frame::Stdin(payload.to_vec()),
            StreamId::Stdout => Frame::Stdout(payload.to_vec()),
            StreamId::Stderr => Frame::Stderr(payload.to_vec()),
            StreamId::Exit => Frame::Exit(*payload.first().ok_or(FrameError::ExitWithoutCode)?),
            StreamId::StdinEof => Frame::StdinEof,
        })
    }
}

/// Signals a client may deliver to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Int,
    Quit,
    Kill,
    Usr1,
    Usr2,
    Term,
}

impl Signal {
    /// Parses `TERM`, `SIGTERM`, `term` or a number of one of the allowed signals.
    pub fn parse(text: &str) -> Option<Signal> {
        let upper = text.trim().to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Some(match name {
            "HUP" | "1" => Signal::Hup,
            "INT" | "2" => Signal::Int,
            "QUIT" | "3" => Signal::Quit,
            "KILL" | "9" => Signal::Kill,
            "USR1" | "10" => Signal::Usr1,
            "USR2" | "12" => Signal::Usr2,
            "TERM" | "15" => Signal::Term,
            _ => return None,
        })
    }

    /// Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Quit => 3,
            Signal::Kill => 9,
            Signal::Usr1 => 10,
            Signal::Usr2 => 12,
            Signal::Term => 15,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Kill => "KILL",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Term => "TERM",
        }
    }
}

/// Text frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Resize { cols: u16, rows: u16 },
    Signal { signal: String },
}

/// Text frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    SessionInfo {
        session_id: String,
        tty: bool,
        /// The command line, when it started (RFC 3339), its terminal size (TTY only),
        /// and whether this connection started it (false on an attach).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        created: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cols: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_owner: Option<bool>,
    },
    Exit {
        exit_code: i32,
        /// Same as `exit_code`, for clients that read `code`.
        #[serde(default)]
        code: i32,
    },
    PortOpened {
        port: u16,
        address: String,
        pid: u32,
    },
    PortClosed {
        port: u16,
        address: String,
        pid: u32,
    },
}

impl ServerMessage {
    /// `session_info` for a session (`created` in RFC 3339): `owner` when this
    /// connection started it.
    pub fn session_info(
        session_id: String,
        tty: bool,
        command: String,
        created: Option<String>,
        size: (u16, u16),
        owner: bool,
    ) -> ServerMessage {
        ServerMessage::SessionInfo {
            session_id,
            tty,
            command: (!command.is_empty()).then_some(command),
            created,
            cols: (size.0 > 0).then_some(size.0),
            rows: (size.1 > 0).then_some(size.1),
            is_owner: Some(owner),
        }
    }

    pub fn exit(code: i32) -> Self {
        ServerMessage::Exit {
            exit_code: code,
            code,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What to run, parsed from the exec query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecParams {
    pub argv: Vec<String>,
    /// Program to run; `argv[0]` if not given.
    pub path: String,
    pub dir: Option<String>,
    /// `Some` replaces the sprite's default environment.
    pub env: Option<Vec<(String, String)>>,
    pub tty: bool,
    pub stdin: bool,
    pub cols: u16,
    pub rows: u16,
    pub max_run_after_disconnect_secs: Option<u64>,
}

/// Why an exec query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecParamsError {
    #[error("query string is {0} bytes; at most {MAX_QUERY_LEN} are allowed")]
    QueryTooLong(usize),
    #[error("too many {0} parameters; at most {MAX_ARGS} are allowed")]
    TooMany(&'static str),
    #[error("parameter {name}={value:?} is not {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("env entry {0:?} is not of the form KEY=VALUE")]
    BadEnv(String),
    #[error("{0} must not contain a NUL byte")]
    Nul(&'static str),
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ExecParamsError> {
    match value {
        "true" | "1" | "yes" | "" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ExecParamsError::BadValue {
            name,
            value: value.to_string(),
            expected: "true or false",
        }),
    }
}

fn parse_number<T: std::str::FromStr>(
    name: &'static str,
    value: &str,
    expected: &'static str,
) -> Result<T, ExecParamsError> {
    value.parse().map_err(|_| ExecParamsError::BadValue {
        name,
        value: value.to_string(),
        expected,
    })
}

/// The `PATH` of a command in a sprite when the request sets no environment (and
/// what the CLI keeps when it adds variables): the usual directories, then
/// `/.sprite/bin` (`sprite-env`).
pub const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.sprite/bin";

/// Parses a duration: a bare number of seconds (`10`, `1.5`) or a Go duration, a
/// sequence of numbers with units `ns`, `us` (`µs`), `ms`, `s`, `m`, `h` such as
/// `500ms`, `1m30s` or `2h0m0s` (what the Go SDK sends). Exact, no float rounding;
/// `None` for anything else, a negative or a value too large to hold.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    const NANOS: u128 = 1_000_000_000;
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    // A number and its unit's length in nanoseconds, added up exactly.
    let amount = |number: &str, unit_nanos: u128| -> Option<u128> {
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !digits(fraction) || fraction.len() > 18 {
            return None;
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut total = whole.checked_mul(unit_nanos)?;
        if !fraction.is_empty() {
            let scale = 10u128.pow(fraction.len() as u32);
            let fraction: u128 = fraction.parse().ok()?;
            total = total.checked_add(fraction.checked_mul(unit_nanos)? / scale)?;
        }
        Some(total)
    };
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let total = if text.chars().all(is_number) {
        amount(text, NANOS)?
    } else {
        let mut rest = text;
        let mut total: u128 = 0;
        while !rest.is_empty() {
            let split = rest.find(|c: char| !is_number(c))?;
            let (number, tail) = rest.split_at(split);
            let unit_len = tail.find(is_number).unwrap_or(tail.len());
            let (unit, tail) = tail.split_at(unit_len);
            let unit_nanos = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => NANOS,
                "m" => 60 * NANOS,
                "h" => 3600 * NANOS,
                _ => return None,
            };
            total = total.checked_add(amount(number, unit_nanos)?)?;
            rest = tail;
        }
        total
    };
    let secs = u64::try_from(total / NANOS).ok()?;
    Some(std::time::Duration::new(secs, (total % NANOS) as u32))
}

/// [`parse_duration`] in whole seconds, rounded up.
pub fn parse_duration_secs(text: &str) -> Option<u64> {
    let duration = parse_duration(text)?;
    let extra = u64::from(duration.subsec_nanos() > 0);
    duration.as_secs().checked_add(extra)
}

impl ExecParams {
    /// Parses decoded query pairs. `raw_len` is the length of the raw query string.
    pub fn from_query(pairs: &[(String, String)], raw_len: usize) -> Result<Self, ExecParamsError> {
        if raw_len > MAX_QUERY_LEN {
            return Err(ExecParamsError::QueryTooLong(raw_len));
        }
        let mut argv = Vec::new();
        let mut path = None;
        let mut dir = None;
        let mut env: Option<Vec<(String, String)>> = None;
        let mut tty = false;
        let mut stdin = None;
        let mut cols = 80;
        let mut rows = 24;
        let mut max_run = None;
        for (key, value) in pairs {
            if value.contains('\0') {
                return Err(ExecParamsError::Nul("a query parameter"));
            }
            match key.as_str() {
                "cmd" => {
                    if argv.len() >= MAX_ARGS {
                        return Err(ExecParamsError::TooMany("cmd"));
                    }
                    argv.push(value.clone());
                }
                "path" => path = Some(value.clone()).filter(|p: &String| !p.is_empty()),
                "dir" => dir = Some(value.clone()).filter(|d: &String| !d.is_empty()),
                "env" => {
                    let entries = env.get_or_insert_with(Vec::new);
                    if entries.len() >= MAX_ARGS {
                        return Err(ExecParamsError::TooMany("env"));
                    }
                    let (k, v) = value
                        .split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or_else(|| ExecParamsError::BadEnv(value.clone()))?;
                    entries.push((k.to_string(), v.to_string()));
                }
                "tty" => tty = parse_bool("tty", value)?,
                "stdin" => stdin = Some(parse_bool("stdin", value)?),
                "cols" => cols = parse_number("cols", value, "a number from 1 to 65535")?,
                "rows" => rows = parse_number("rows", value, "a number from 1 to 65535")?,
                "max_run_after_disconnect" => {
                    max_run = Some(parse_duration_secs(value).ok_or_else(|| {
                        ExecParamsError::BadValue {
                            name: "max_run_after_disconnect",
                            value: value.clone(),
                            expected: "a duration such as 30s, 5m or 0",
                        }
                    })?)
                }
                _ => {}
            }
        }
        if cols == 0 || rows == 0 {
            return Err(ExecParamsError::BadValue {
                name: "cols/rows",
                value: format!("{cols}x{rows}"),
                expected: "at least 1",
            });
        }
        let path = path
            .or_else(|| argv.first().cloned())
            .unwrap_or_else(|| "bash".to_string());
        if argv.is_empty() {
            argv.push(path.clone());
        }
        Ok(ExecParams {
            argv,
            path,
            dir,
            env,
            stdin: stdin.unwrap_or(tty),
            tty,
            cols,
            rows,
            max_run_after_disconnect_secs: max_run,
        })
    }

    /// Encodes back to query pairs (used by clients).
    pub fn to_query(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = self
            .argv
            .iter()
            .map(|a| ("cmd".to_string(), a.clone()))
            .collect();
        pairs.push(("path".into(), self.path.clone()));
        if let Some(dir) = &self.dir {
            pairs.push(("dir".into(), dir.clone()));
        }
        for (k, v) in self.env.iter().flatten() {
            pairs.push(("env".into(), format!("{k}={v}")));
        }
        if self.tty {
            pairs.push(("tty".into(), "true".into()));
            pairs.push(("cols".into(), self.cols.to_string()));
            pairs.push(("rows".into(), self.rows.to_string()));
        }
        pairs.push(("stdin".into(), self.stdin.to_string()));
        if let Some(secs) = self.max_run_after_disconnect_secs {
            pairs.push(("max_run_after_disconnect".into(), format!("{secs}s")));
        }
        pairs
    }
}

/// One session in `GET /v1/sprites/{name}/exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionInfo {
    pub id: String,
    pub command: String,
    pub workdir: String,
    pub created: String,
    pub is_active: bool,
    pub last_activity: String,
    pub tty: bool,
    #[serde(default)]
    pub bytes_per_second: f64,
    /// Exit code once the process has exited (ours; absent while it runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Terminal size (TTY sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Whether the caller owns it: tokens here belong to one organization, which owns
    /// all its sprites' sessions.
    #[serde(default)]
    pub is_owner: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_sdk_query() {
        let params = ExecParams::from_query(
            &pairs(&[
                ("cmd", "echo"),
                ("cmd", "hi"),
                ("path", "echo"),
                ("env", "A=b=c"),
                ("stdin", "true"),
            ]),
            10,
        )
        .expect("parse");
        assert_eq!(params.argv, vec!["echo", "hi"]);
        assert_eq!(params.env, Some(vec![("A".into(), "b=c".into())]));
        assert!(params.stdin);
        assert!(!params.tty);
    }

    #[test]
    fn defaults_to_bash_and_stdin_follows_tty() {
        let params = ExecParams::from_query(&pairs(&[("tty", "true")]), 0).expect("parse");
        assert_eq!(params.path, "bash");
        assert_eq!(params.argv, vec!["bash"]);
        assert!(params.stdin);
        let params = ExecParams::from_query(&pairs(&[("cmd", "ls")]), 0).expect("parse");
        assert!(!params.stdin);
    }

    #[test]
    fn refuses_bad_values() {
        assert!(ExecParams::from_query(&pairs(&[("tty", "maybe")]), 0).is_err());
        assert!(ExecParams::from_query(&pairs(&[("cols", "-1")]), 0).is_err());
        assert!(ExecParams::from_query(&pairs(&[("env", "=x")]), 0).is_err());
        assert!(ExecParams::from_query(&pairs(&[("cmd", "a\0b")]), 0).is_err());
        assert!(ExecParams::from_query(&[], MAX_QUERY_LEN + 1).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("10"), Some(10));
        assert_eq!(parse_duration_secs("10s"), Some(10));
        assert_eq!(parse_duration_secs("1500ms"), Some(2));
        assert_eq!(parse_duration_secs("2m"), Some(120));
        assert_eq!(parse_duration_secs("x"), None);
        assert_eq!(parse_duration_secs("5d"), None);
        assert_eq!(parse_duration_secs("1.5"), Some(2));
        assert_eq!(parse_duration_secs("18446744073709551616"), None);
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        // What Go's time.Duration.String() gives, as the Go SDK sends it.
        assert_eq!(parse_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h0m0s"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1µs"), Some(Duration::from_micros(1)));
        assert_eq!(parse_duration("2us"), Some(Duration::from_micros(2)));
        assert_eq!(parse_duration("3ns"), Some(Duration::from_nanos(3)));
        assert_eq!(
            parse_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        assert_eq!(parse_duration_secs("1m0.001s"), Some(61));
        for bad in ["", "1m30", "s", "-1s", "1x", "1..5s", "1 s", "5d", ".s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn signals() {
        assert_eq!(Signal::parse("SIGTERM"), Some(Signal::Term));
        assert_eq!(Signal::parse("int"), Some(Signal::Int));
        assert_eq!(Signal::parse("9"), Some(Signal::Kill));
        assert_eq!(Signal::parse("STOP"), None);
    }

    #[test]
    fn exit_message_carries_both_spellings() {
        let json = ServerMessage::exit(42).to_json();
        assert!(
            json.contains("\"exit_code\":42") && json.contains("\"code\":42"),
            "{json}"
        );
    }

    #[test]
    fn lone_eof_frame() {
        assert_eq!(Frame::decode(&[4]), Ok(Frame::StdinEof));
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(&[9]), Err(FrameError::UnknownStream(9)));
        assert_eq!(Frame::decode(&[3]), Err(FrameError::ExitWithoutCode));
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Stdin),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Stdout),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Frame::Stderr),
            any::<u8>().prop_map(Frame::Exit),
            Just(Frame::StdinEof),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in frame_strategy()) {
            prop_assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = Frame::decode(&bytes);
        }

        #[test]
        fn query_round_trips(argv in proptest::collection::vec("[a-z0-9 =&]{1,8}", 1..5), tty: bool) {
            let params = ExecParams { argv: argv.clone(), path: argv[0].clone(), dir: Some("/tmp".into()),
                env: Some(vec![("K".into(), "v=1".into())]), tty, stdin: true, cols: 100, rows: 30,
                max_run_after_disconnect_secs: Some(5) };
            let query = params.to_query();
            let parsed = ExecParams::from_query(&query, 0).expect("parse");
            let expected = ExecParams { cols: if tty { 100 } else { 80 }, rows: if tty { 30 } else { 24 }, ..params };
            prop_assert_eq!(parsed, expected);
        }
    }
}

#[cfg(test)]
mod fuzz_targets {
    use super::*;
    use crate::fuzz::{budget, fuzz};

    /// Binary and text frames a client sends over the exec WebSocket: decoding never
    /// panics, and what decodes encodes back to the same bytes.
    #[test]
    fn fuzz_exec_frames() {
        let seeds: &[&[u8]] = &[
            b"\x00hello",
            b"\x01out",
            b"\x02err",
            b"\x03\x07",
            b"\x04",
            br#"{"type":"resize","cols":80,"rows":24}"#,
            br#"{"type":"signal","signal":"SIGINT"}"#,
        ];
        fuzz(
            "exec frames",
            budget(),
            seeds,
            &[b"\"type\"", b"resize", b"\xff\xff"],
            |input| {
                if let Ok(frame) = Frame::decode(input) {
                    assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
                }
                if let Ok(message) = serde_json::from_slice::<ClientMessage>(input) {
                    if let ClientMessage::Signal { signal } = &message {
                        let _ = Signal::parse(signal);
                    }
                    let again: ClientMessage =
                        serde_json::from_str(&serde_json::to_string(&message).expect("encode"))
                            .expect("decode what we encoded");
                    assert_eq!(again, message);
                }
            },
        );
    }

    /// Durations in exec queries and task bodies (`10m`, `1.5h`, `30`).
    #[test]
    fn fuzz_durations() {
        // The last one once came back as another number (parsed through a float).
        let seeds: &[&[u8]] = &[
            b"10",
            b"10s",
            b"1.5m",
            b"2h",
            b"250ms",
            b"1e300",
            b"",
            b"2250250250250250250",
        ];
        fuzz(
            "durations",
            budget(),
            seeds,
            &[b"e9", b"ms", b"."],
            |input| {
                let text = String::from_utf8_lossy(input);
                if let Some(seconds) = parse_duration_secs(&text) {
                    // Whole seconds the way they were written, never wrapped around.
                    if let Ok(n) = text.trim().parse::<u64>() {
                        assert_eq!(seconds, n);
                    }
                }
            },
        );
    }
}
