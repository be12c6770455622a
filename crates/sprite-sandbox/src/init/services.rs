//! Services: processes sprite-init keeps running. Their definitions live in the sprite's
//! own filesystem (`/.sprite/services/<name>.json`), so checkpoints, restores, forks and
//! cold sleep carry them; sprite-init starts them at boot in `needs` order, restarts a
//! run that exits (backing off exponentially while it keeps failing), and writes their
//! output to `/.sprite/logs/services/<name>.log` (rotated at 1 MiB, one old file kept).
//! A stop is sticky: a stopped service stays stopped, across restarts too, until started.

use super::session::{Output, Session, Sessions};
use super::users;
use crate::protocol::{ErrorCode, SpawnRequest};
use parking_lot::Mutex;
use sprite_api::services::{
    validate_service_spec, ServiceInfo, ServiceSpec, ServiceState, ServiceStatus,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const LOG_ROTATE_BYTES: u64 = 1 << 20;
/// Most bytes of one log file a `logs` request reads (a sprite can grow its own
/// files past the rotation size).
const LOG_READ_MAX: u64 = 2 * LOG_ROTATE_BYTES;
/// Largest service definition PID 1 reads.
const DEFINITION_MAX: u64 = 256 << 10;
/// Most services of one sprite: each is a process PID 1 supervises and a log it
/// writes; definitions past this many in the sprite's files are not loaded.
pub const MAX_SERVICES: usize = 64;
/// Between SIGTERM and SIGKILL on a stop.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest grace a stop may ask for.
const MAX_STOP_GRACE: Duration = Duration::from_secs(300);
/// Longest wait between restarts of a failing service.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

type Failure = (ErrorCode, String);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn not_found(name: &str) -> Failure {
    (ErrorCode::NotFound, format!("service {name} not found"))
}

/// The wait before the next restart after `quick_failures` runs in a row that ended
/// before [`STABLE_AFTER`]: 1 s, 2 s, 4 s... up to [`BACKOFF_MAX`].
pub fn backoff(quick_failures: u32) -> Duration {
    Duration::from_secs(1u64 << quick_failures.min(6)).min(BACKOFF_MAX)
}

/// Start order: every service after the ones it needs. Services in a cycle (or needing
/// one) come back in the second list.
pub fn start_order(specs: &BTreeMap<String, Vec<String>>) -> (Vec<String>, Vec<String>) {
    let mut waiting: HashMap<&str, usize> = HashMap::new();
    let mut needed_by: HashMap<&str, Vec<&str>> = HashMap::new();
    for (name, needs) in specs {
        let known: BTreeSet<&str> = needs
            .iter()
            .map(String::as_str)
            .filter(|n| specs.contains_key(*n))
            .collect();
        waiting.insert(name, known.len());
        for need in known {
            needed_by.entry(need).or_default().push(name);
        }
    }
    let mut ready: VecDeque<&str> = specs
        .keys()
        .map(String::as_str)
        .filter(|n| waiting[n] == 0)
        .collect();
    let mut order = Vec::new();
    while let Some(name) = ready.pop_front() {
        order.push(name.to_string());
        for next in needed_by.get(name).into_iter().flatten() {
            if let Some(count) = waiting.get_mut(next) {
                *count -= 1;
                if *count == 0 {
                    ready.push_back(next);
                }
            }
        }
    }
    let stuck = specs
        .keys()
        .filter(|n| !order.contains(n))
        .cloned()
        .collect();
    (order, stuck)
}

/// The last `lines` lines of `text`.
pub fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Stored {
    #[serde(flatten)]
    spec: ServiceSpec,
    #[serde(default)]
    stopped: bool,
}

struct Entry {
    spec: ServiceSpec,
    stopped: bool,
    status: ServiceStatus,
    session: Option<Arc<Session>>,
    started_ms: Option<u64>,
    error: Option<String>,
    restart_count: u32,
    quick_failures: u32,
    next_restart_ms: Option<u64>,
    /// Bumped by every start, stop and replace: a late exit or timer of an older run
    /// sees a different number and does nothing.
    generation: u64,
}

impl Entry {
    fn new(spec: ServiceSpec, stopped: bool) -> Entry {
        Entry {
            spec,
            stopped,
            status: ServiceStatus::Stopped,
            session: None,
            started_ms: None,
            error: None,
            restart_count: 0,
            quick_failures: 0,
            next_restart_ms: None,
            generation: 0,
        }
    }

    fn info(&self, name: &str) -> ServiceInfo {
        ServiceInfo {
            name: name.to_string(),
            spec: self.spec.clone(),
            state: ServiceState {
                name: name.to_string(),
                status: self.status,
                pid: self.session.as_ref().map(|s| s.pid),
                started_at: self.started_ms.map(rfc3339),
                error: self.error.clone(),
                restart_count: self.restart_count,
                next_restart_at: self.next_restart_ms.map(rfc3339),
                session_id: self.session.as_ref().map(|s| s.id.clone()),
            },
        }
    }
}

/// Every service of the sprite.
pub struct Services {
    sessions: Arc<Sessions>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// The sprite's root: `/` inside a sprite.
    root: PathBuf,
}

impl Services {
    /// Loads the stored definitions under `root` (nothing runs yet: see [`Self::boot`]).
    pub fn load(sessions: Arc<Sessions>, root: &Path) -> Arc<Services> {
        let services = Services {
            sessions,
            entries: Mutex::new(BTreeMap::new()),
            root: root.to_path_buf(),
        };
        if let Ok(dir) = std::fs::read_dir(services.defs_dir()) {
            for entry in dir.flatten().take(4 * MAX_SERVICES) {
                if services.entries.lock().len() >= MAX_SERVICES {
                    eprintln!("sprite-init: more than {MAX_SERVICES} service definitions; the rest are not loaded");
                    break;
                }
                let path = entry.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                else {
                    continue;
                };
                match super::files::read_capped(&path, DEFINITION_MAX)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| {
                        serde_json::from_slice::<Stored>(&bytes).map_err(|e| e.to_string())
                    }) {
                    Ok(stored) => {
                        services
                            .entries
                            .lock()
                            .insert(name.to_string(), Entry::new(stored.spec, stored.stopped));
                    }
                    Err(error) => eprintln!("sprite-init: service {}: {error}", path.display()),
                }
            }
        }
        Arc::new(services)
    }

    fn defs_dir(&self) -> PathBuf {
        self.root.join(".sprite/services")
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.root
            .join(".sprite/logs/services")
            .join(format!("{name}.log"))
    }

    /// Starts every service not stopped, each after the ones it needs.
    pub fn boot(self: &Arc<Self>) {
        let specs: BTreeMap<String, Vec<String>> = self
            .entries
            .lock()
            .iter()
            .filter(|(_, e)| !e.stopped)
            .map(|(n, e)| (n.clone(), e.spec.needs.clone()))
            .collect();
        let (order, stuck) = start_order(&specs);
        for name in order {
            self.start_run(&name);
        }
        let mut entries = self.entries.lock();
        for name in stuck {
            if let Some(entry) = entries.get_mut(&name) {
                entry.status = ServiceStatus::Failed;
                entry.error = Some("its needs form a cycle; fix them with a new definition".into());
            }
        }
    }

    /// Whether a session is a service's run (those are not listed as exec sessions).
    pub fn owns_session(&self, session_id: &str) -> bool {
        self.entries
            .lock()
            .values()
            .any(|e| e.session.as_ref().is_some_and(|s| s.id == session_id))
    }

    pub fn list(&self) -> Vec<ServiceInfo> {
        self.entries
            .lock()
            .iter()
            .map(|(name, entry)| entry.info(name))
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<ServiceInfo, Failure> {
        self.entries
            .lock()
            .get(name)
            .map(|entry| entry.info(name))
            .ok_or_else(|| not_found(name))
    }

    /// Creates or replaces a service, then (re)starts it.
    pub async fn put(
        self: &Arc<Self>,
        name: &str,
        spec: ServiceSpec,
    ) -> Result<ServiceInfo, Failure> {
        validate_service_spec(name, &spec).map_err(|m| (ErrorCode::Invalid, m))?;
        let old_run = {
            let mut entries = self.entries.lock();
            if !entries.contains_key(name) && entries.len() >= MAX_SERVICES {
                return Err((
                    ErrorCode::Invalid,
                    format!("a sprite has at most {MAX_SERVICES} services; delete one first"),
                ));
            }
            if let Some(missing) = spec.needs.iter().find(|n| !entries.contains_key(*n)) {
                return Err((
                    ErrorCode::Invalid,
                    format!(
                        "service {name} needs {missing}, which does not exist; create it first"
                    ),
                ));
            }
            if let Some(port) = spec.http_port {
                if let Some((holder, _)) = entries
                    .iter()
                    .find(|(other, e)| other.as_str() != name && e.spec.http_port == Some(port))
                {
                    return Err((
                        ErrorCode::Conflict,
                        format!("service {holder} already has http_port {port}; one service per sprite may have it"),
                    ));
                }
            }
            self.store(name, &spec, false)?;
            let entry = entries
                .entry(name.to_string())
                .or_insert_with(|| Entry::new(spec.clone(), false));
            entry.spec = spec;
            entry.stopped = false;
            entry.generation += 1;
            entry.quick_failures = 0;
            entry.next_restart_ms = None;
            entry.session.take()
        };
        if let Some(run) = old_run {
            stop_run(&run, STOP_GRACE).await;
        }
        self.start_run(name);
        self.get(name)
    }

    /// Starts a service (and clears a sticky stop).
    pub fn start(self: &Arc<Self>, name: &str) -> Result<ServiceInfo, Failure> {
        let running = {
            let mut entries = self.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| not_found(name))?;
            if entry.stopped {
                entry.stopped = false;
                self.store(name, &entry.spec, false)?;
            }
            entry.quick_failures = 0;
            entry.session.is_some()
        };
        if !running {
            self.start_run(name);
        }
        self.get(name)
    }

    /// Stops a service and keeps it stopped: SIGTERM to its process group, SIGKILL after
    /// `grace` (default [`STOP_GRACE`]). Answers at once (status `stopping`).
    pub fn stop(
        self: &Arc<Self>,
        name: &str,
        grace: Option<Duration>,
    ) -> Result<ServiceInfo, Failure> {
        let grace = grace.unwrap_or(STOP_GRACE).min(MAX_STOP_GRACE);
        let run = {
            let mut entries = self.entries.lock();
            let entry = entries.get_mut(name).ok_or_else(|| not_found(name))?;
            entry.stopped = true;
            self.store(name, &entry.spec, true)?;
            entry.generation += 1;
            entry.next_restart_ms = None;
            entry.status = if entry.session.is_some() {
                ServiceStatus::Stopping
            } else {
                ServiceStatus::Stopped
            };
            entry.session.clone()
        };
        if let Some(run) = run {
            let services = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                stop_run(&run, grace).await;
                // Started again while it was stopping: the next run starts now.
                let restart = {
                    let mut entries = services.entries.lock();
                    match entries.get_mut(&name) {
                        Some(entry) if entry.session.as_ref().is_some_and(|s| s.id == run.id) => {
                            entry.session = None;
                            entry.status = ServiceStatus::Stopped;
                            !entry.stopped
                        }
                        _ => false,
                    }
                };
                if restart {
                    services.start_run(&name);
                }
            });
        }
        self.get(name)
    }

    pub fn signal(&self, name: &str, signal: i32) -> Result<(), Failure> {
        let entries = self.entries.lock();
        let entry = entries.get(name).ok_or_else(|| not_found(name))?;
        let run = entry
            .session
            .as_ref()
            .ok_or_else(|| (ErrorCode::Gone, format!("service {name} is not running")))?;
        run.signal(signal)
            .map_err(|e| (ErrorCode::Invalid, format!("signal {signal}: {e}")))
    }

    /// Stops and forgets a service (its log stays). Refused while another needs it.
    pub async fn delete(&self, name: &str) -> Result<(), Failure> {
        let run = {
            let mut entries = self.entries.lock();
            if !entries.contains_key(name) {
                return Err(not_found(name));
            }
            if let Some((other, _)) = entries
                .iter()
                .find(|(other, e)| other.as_str() != name && e.spec.needs.iter().any(|n| n == name))
            {
                return Err((
                    ErrorCode::Conflict,
                    format!("service {other} needs {name}; change or delete {other} first"),
                ));
            }
            let path = self.defs_dir().join(format!("{name}.json"));
            if let Err(error) = std::fs::remove_file(&path) {
                if error.kind() != std::io::ErrorKind::NotFound {
                    return Err((
                        ErrorCode::Invalid,
                        format!("remove {}: {error}", path.display()),
                    ));
                }
            }
            entries.remove(name).and_then(|e| e.session)
        };
        if let Some(run) = run {
            stop_run(&run, STOP_GRACE).await;
        }
        Ok(())
    }

    /// The last `lines` lines of the service's log (the rotated file too, if needed).
    pub fn logs(&self, name: &str, lines: usize) -> Result<String, Failure> {
        if !self.entries.lock().contains_key(name) {
            return Err(not_found(name));
        }
        let path = self.log_path(name);
        let old = super::files::read_text_or_empty(&path.with_extension("log.1"), LOG_READ_MAX);
        let current = super::files::read_text_or_empty(&path, LOG_READ_MAX);
        Ok(tail_lines(&format!("{old}{current}"), lines))
    }

    /// Writes the definition durably (temporary file, fsync, rename).
    fn store(&self, name: &str, spec: &ServiceSpec, stopped: bool) -> Result<(), Failure> {
        let failed = |what: &str, path: &Path, e: std::io::Error| {
            (
                ErrorCode::Invalid,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let dir = self.defs_dir();
        std::fs::create_dir_all(&dir).map_err(|e| failed("create", &dir, e))?;
        let path = dir.join(format!("{name}.json"));
        let temporary = dir.join(format!(".{name}.json.new"));
        let stored = Stored {
            spec: spec.clone(),
            stopped,
        };
        let bytes = serde_json::to_vec_pretty(&stored)
            .map_err(|e| (ErrorCode::Invalid, format!("encode service {name}: {e}")))?;
        let mut file =
            std::fs::File::create(&temporary).map_err(|e| failed("create", &temporary, e))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| failed("write", &temporary, e))?;
        std::fs::rename(&temporary, &path).map_err(|e| failed("rename", &temporary, e))
    }

    /// Starts one run of a service and watches it: output to the log, and a restart
    /// (after the backoff) when it exits while the service should run.
    fn start_run(self: &Arc<Self>, name: &str) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(name) else {
            return;
        };
        entry.generation += 1;
        entry.next_restart_ms = None;
        let generation = entry.generation;
        let user = match &entry.spec.user {
            Some(user) => user.as_str(),
            None if users::lookup("sprite").is_some() => "sprite",
            None => "root",
        };
        let mut argv = vec![entry.spec.cmd.clone()];
        argv.extend(entry.spec.args.iter().cloned());
        let request = SpawnRequest {
            argv,
            path: entry.spec.cmd.clone(),
            dir: entry.spec.dir.clone(),
            env: None,
            extra_env: entry.spec.env.clone(),
            user: user.to_string(),
            tty: false,
            stdin: false,
            cols: 0,
            rows: 0,
            max_run_after_disconnect_secs: 0,
        };
        let started = now_ms();
        match Session::spawn(&self.sessions, request) {
            Ok(run) => {
                self.sessions.hide(&run.id);
                // Subscribed before any await: no output is missed.
                let (_, _, output) = run.subscribe(false);
                entry.session = Some(run);
                entry.status = ServiceStatus::Running;
                entry.started_ms = Some(started);
                entry.error = None;
                let services = self.clone();
                let name = name.to_string();
                let log = self.log_path(&name);
                tokio::spawn(async move {
                    let code = write_log(&log, output).await;
                    services.exited(&name, generation, code, started);
                });
            }
            Err(message) => {
                entry.error = Some(message);
                drop(entries);
                self.exited(name, generation, None, started);
            }
        }
    }

    /// A run ended (`code` None: it could not start). Schedules the restart unless the
    /// service was stopped, replaced or deleted meanwhile.
    fn exited(self: &Arc<Self>, name: &str, generation: u64, code: Option<i32>, started: u64) {
        let mut entries = self.entries.lock();
        let Some(entry) = entries.get_mut(name) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        entry.session = None;
        if entry.stopped {
            entry.status = ServiceStatus::Stopped;
            return;
        }
        if let Some(code) = code {
            entry.error = Some(format!("exited with code {code}"));
        }
        let ran = Duration::from_millis(now_ms().saturating_sub(started));
        if ran >= STABLE_AFTER {
            entry.quick_failures = 0;
        }
        let wait = backoff(entry.quick_failures);
        entry.quick_failures += 1;
        entry.restart_count += 1;
        entry.status = ServiceStatus::Failed;
        entry.next_restart_ms = Some(now_ms() + wait.as_millis() as u64);
        let services = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let due =
                services.entries.lock().get(&name).is_some_and(|e| {
                    e.generation == generation && !e.stopped && e.session.is_none()
                });
            if due {
                services.start_run(&name);
            }
        });
    }
}

/// SIGTERM to the run's process group, SIGKILL if it has not exited after `grace`.
async fn stop_run(run: &Arc<Session>, grace: Duration) {
    use nix::sys::signal::Signal;
    if run.exit_code().is_some() {
        return;
    }
    let (_, _, mut output) = run.subscribe(false);
    let _ = run.signal(Signal::SIGTERM as i32);
    let exited = async {
        while let Some(event) = output.recv().await {
            if matches!(event, Output::Exit(_)) {
                return;
            }
        }
    };
    if tokio::time::timeout(grace, exited).await.is_err() {
        let _ = run.signal(Signal::SIGKILL as i32);
    }
}

/// Appends a run's output to its log (rotating it past 1 MiB) until the run exits;
/// returns the exit code.
async fn write_log(path: &Path, mut output: tokio::sync::mpsc::Receiver<Output>) -> Option<i32> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let open = |path: &Path| super::files::open_append(path).ok();
    let mut file = open(path);
    while let Some(event) = output.recv().await {
        match event {
            Output::Stdout(data) | Output::Stderr(data) => {
                let full =
                    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) >= LOG_ROTATE_BYTES;
                if full {
                    let _ = std::fs::rename(path, path.with_extension("log.1"));
                    file = open(path);
                }
                if let Some(file) = file.as_mut() {
                    let _ = file.write_all(&data);
                }
            }
            Output::Exit(code) => return Some(code),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(n, needs)| (n.to_string(), needs.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn services_start_after_what_they_need() {
        let (order, stuck) = start_order(&specs(&[
            ("web", &["db", "cache"]),
            ("db", &[]),
            ("cache", &["db"]),
            ("worker", &["web"]),
        ]));
        assert_eq!(order, ["db", "cache", "web", "worker"]);
        assert!(stuck.is_empty());
        // Needs of a service that is not there (deleted or stopped) do not block.
        let (order, _) = start_order(&specs(&[("web", &["gone"])]));
        assert_eq!(order, ["web"]);
    }

    #[test]
    fn cycles_are_reported_not_started() {
        let (order, stuck) = start_order(&specs(&[
            ("a", &["b"]),
            ("b", &["a"]),
            ("c", &["a"]),
            ("d", &[]),
        ]));
        assert_eq!(order, ["d"]);
        assert_eq!(stuck, ["a", "b", "c"]);
    }

    #[test]
    fn restarts_back_off_exponentially_up_to_a_minute() {
        let waits: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn logs_answer_the_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb", 5), "a\nb\n");
        assert_eq!(tail_lines("", 3), "");
    }
}
