//! nftables scripts (the text `nft -f` reads) run in process by libnftables, the library
//! the `nft` command is a thin shell over, loaded at run time. Where the library is not
//! installed, the same script goes to an `nft -f -` process instead.

use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io::Write;

/// Why a script did not apply.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// nftables refused it (nothing of it applied: a script is one transaction).
    #[error("{0}")]
    Refused(String),
    /// `nft` could not be run (library missing and no `nft` command either).
    #[error("could not run nft")]
    Spawn(#[source] std::io::Error),
    /// The script holds a NUL byte.
    #[error("the script holds a NUL byte")]
    Nul,
}

impl NftError {
    /// What nftables said, for recognising errors such as "No such file or directory".
    pub fn message(&self) -> String {
        match self {
            NftError::Refused(message) => message.clone(),
            other => other.to_string(),
        }
    }
}

const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;

type CtxNew = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFree = unsafe extern "C" fn(*mut c_void);
type CtxBuffer = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBuffer = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunCmd = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type GetFlags = unsafe extern "C" fn(*mut c_void) -> c_uint;
type SetFlags = unsafe extern "C" fn(*mut c_void, c_uint);

/// An open libnftables context and the functions used on it.
struct Library {
    ctx: *mut c_void,
    free: CtxFree,
    run: RunCmd,
    output: CtxGetBuffer,
    error: CtxGetBuffer,
    get_flags: GetFlags,
    set_flags: SetFlags,
    // Last: the functions above point into it.
    _library: libloading::Library,
}

// SAFETY: an nft context may be used from any thread as long as one thread at a time
// does; `Nft` only reaches it through its mutex.
unsafe impl Send for Library {}

impl Library {
    fn open() -> Result<Library, libloading::Error> {
        // SAFETY: loading libnftables runs its initialisers, which only set up its own
        // state; the symbols are read with the types of `<nftables/libnftables.h>`
        // (nftables 0.9 and later, stable ABI libnftables.so.1).
        unsafe {
            let library = libloading::Library::new("libnftables.so.1")?;
            let new: CtxNew = *library.get(b"nft_ctx_new\0")?;
            let free: CtxFree = *library.get(b"nft_ctx_free\0")?;
            let buffer_output: CtxBuffer = *library.get(b"nft_ctx_buffer_output\0")?;
            let buffer_error: CtxBuffer = *library.get(b"nft_ctx_buffer_error\0")?;
            let output: CtxGetBuffer = *library.get(b"nft_ctx_get_output_buffer\0")?;
            let error: CtxGetBuffer = *library.get(b"nft_ctx_get_error_buffer\0")?;
            let run: RunCmd = *library.get(b"nft_run_cmd_from_buffer\0")?;
            let get_flags: GetFlags = *library.get(b"nft_ctx_output_get_flags\0")?;
            let set_flags: SetFlags = *library.get(b"nft_ctx_output_set_flags\0")?;
            let ctx = new(0);
            if ctx.is_null() {
                return Err(libloading::Error::DlOpenUnknown);
            }
            buffer_output(ctx);
            buffer_error(ctx);
            Ok(Library {
                ctx,
                free,
                run,
                output,
                error,
                get_flags,
                set_flags,
                _library: library,
            })
        }
    }

    fn run(&mut self, script: &CStr, json: bool) -> Result<String, NftError> {
        // SAFETY: `ctx` is a live context owned by `self` (freed only in drop), used by
        // one thread at a time (`&mut self`); `script` is NUL-terminated and outlives the
        // call; the buffers returned are owned by the context and copied out before the
        // next call on it.
        unsafe {
            let flags = (self.get_flags)(self.ctx);
            if json {
                (self.set_flags)(self.ctx, flags | NFT_CTX_OUTPUT_JSON);
            }
            let status = (self.run)(self.ctx, script.as_ptr());
            if json {
                (self.set_flags)(self.ctx, flags);
            }
            let read = |buffer: *const c_char| {
                if buffer.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr(buffer).to_string_lossy().into_owned()
                }
            };
            // Reading a buffer hands it over and starts a fresh one.
            let output = read((self.output)(self.ctx));
            let error = read((self.error)(self.ctx));
            if status != 0 {
                return Err(NftError::Refused(error.trim().to_string()));
            }
            Ok(output)
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from `nft_ctx_new` and is freed once, here.
        unsafe { (self.free)(self.ctx) }
    }
}

/// Runs nftables scripts; one per daemon.
pub struct Nft {
    library: Option<Mutex<Library>>,
}

impl std::fmt::Debug for Nft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nft")
            .field("in_process", &self.library.is_some())
            .finish()
    }
}

impl Nft {
    /// Loads libnftables, or falls back to running `nft` if it cannot.
    pub fn new() -> Nft {
        Nft {
            library: Library::open().ok().map(Mutex::new),
        }
    }

    /// Whether scripts run in process (no `nft` process is started).
    pub fn in_process(&self) -> bool {
        self.library.is_some()
    }

    /// Applies `script` (what `nft -f` reads) as one transaction; returns its output.
    pub fn run(&self, script: &str) -> Result<String, NftError> {
        self.run_as(script, false)
    }

    /// Runs `script` with JSON output (as `nft -j`), for listings.
    pub fn run_json(&self, script: &str) -> Result<String, NftError> {
        self.run_as(script, true)
    }

    fn run_as(&self, script: &str, json: bool) -> Result<String, NftError> {
        let Some(library) = &self.library else {
            return run_process(script, json);
        };
        let script = CString::new(script).map_err(|_| NftError::Nul)?;
        let mut library = library.lock();
        library.run(&script, json)
    }
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

fn run_process(script: &str, json: bool) -> Result<String, NftError> {
    let mut command = std::process::Command::new(crate::tools::find("nft"));
    if json {
        command.arg("-j");
    }
    let mut child = command
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(NftError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(NftError::Spawn)?;
    if !output.status.success() {
        return Err(NftError::Refused(
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_applies_in_process_and_errors_come_back() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let nft = Nft::new();
        assert!(
            nft.in_process(),
            "libnftables.so.1 is installed with nftables"
        );
        let table = format!("sprite_sys_test_{}", std::process::id());
        nft.run(&format!(
            "add table inet {table}\nadd set inet {table} s {{ type ipv4_addr; }}\n"
        ))
        .expect("create");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let listing = nft
                .run_json(&format!("list table inet {table}"))
                .expect("list");
            assert!(listing.contains("\"nftables\""), "{listing}");
            assert!(listing.contains(&table), "{listing}");
            let error = nft
                .run(&format!("delete set inet {table} nosuch"))
                .expect_err("no such set");
            assert!(
                error.message().contains("No such file or directory"),
                "{error}"
            );
            // A refused script applies nothing of itself.
            let _ = nft.run(&format!(
                "add set inet {table} t {{ type ipv4_addr; }}\ndelete set inet {table} nosuch"
            ));
            let listing = nft.run(&format!("list table inet {table}")).expect("list");
            assert!(!listing.contains("set t "), "{listing}");
        }));
        nft.run(&format!("delete table inet {table}"))
            .expect("delete");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
