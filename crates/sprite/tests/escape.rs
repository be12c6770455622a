//! The escape suite: attempts a hostile sprite (root inside, through sudo) or a caller
//! with a token would make to hurt the host, the daemon, other sprites or its own
//! policy, each checked for the safe outcome. Every attempt is recorded in an
//! [`Attempts`] ledger that fails the test listing every escape at once; the suite makes
//! well over 60 attempts (each test prints its count). docs/threat-model.md names the
//! boundary each one tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::internet::*;
use common::*;
use std::process::Command;
use std::time::Duration;

/// The attempts of one test and how each ended.
struct Attempts {
    test: &'static str,
    made: Vec<(String, bool, String)>,
}

impl Attempts {
    fn new(test: &'static str) -> Attempts {
        Attempts {
            test,
            made: Vec::new(),
        }
    }

    /// Records an attempt; `safe` is whether it ended the way the sandbox promises.
    fn check(&mut self, attempt: &str, safe: bool, detail: impl std::fmt::Display) {
        self.made
            .push((attempt.to_string(), safe, detail.to_string()));
    }

    /// The attempts of the in-sprite probe: JSON lines `{"name", "safe", "detail"}`.
    fn record_probe(&mut self, output: &str) {
        for line in output.lines().filter(|l| l.starts_with('{')) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            self.check(
                value["name"].as_str().unwrap(),
                value["safe"].as_bool().unwrap(),
                value["detail"].as_str().unwrap_or_default(),
            );
        }
    }

    fn finish(self, at_least: usize) {
        let escapes: Vec<String> = self
            .made
            .iter()
            .filter(|(_, safe, _)| !safe)
            .map(|(name, _, detail)| format!("{name}: {detail}"))
            .collect();
        eprintln!(
            "{}: {} attempts, {} escapes",
            self.test,
            self.made.len(),
            escapes.len()
        );
        assert!(
            escapes.is_empty(),
            "escapes in {}:\n{}",
            self.test,
            escapes.join("\n")
        );
        assert!(
            self.made.len() >= at_least,
            "{} made {} attempts, fewer than {at_least}",
            self.test,
            self.made.len()
        );
    }
}

async fn root_shell(daemon: &Daemon, sprite: &str, script: &str) -> Finished {
    run(&daemon.client, sprite, &["sudo", "bash", "-c", script]).await
}

async fn root_python(daemon: &Daemon, sprite: &str, script: &str) -> Finished {
    run(&daemon.client, sprite, &["sudo", "python3", "-c", script]).await
}

/// Runs `argv` on the host as an unprivileged user (nobody), from a shell of that user
/// (setpriv itself still holds root's capabilities when it executes its command).
fn as_nobody(argv: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            "sh",
            "-c",
            "exec \"$@\"",
            "sh",
        ])
        .args(argv)
        .output()
        .unwrap()
}

/// An ICMP echo to the sprite's loopback over a raw socket, as ping sends it.
const ICMP_ECHO: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
s.sendto(struct.pack("!BBHHH", 8, 0, 0xf7fd, 1, 1), ("127.0.0.1", 0))
while True:
    data = s.recv(100)
    if data[20] == 0:
        print("icmp reply")
        break
"#;

/// What the in-sprite probes share: each attempt prints a JSON line saying whether it
/// was refused.
const PRELUDE: &str = r#"
import ctypes, errno, json, mmap, os, socket, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def report(name, safe, detail=""):
    print(json.dumps({"name": name, "safe": bool(safe), "detail": str(detail)}), flush=True)
def call(name, number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(number, *args)
    err = ctypes.get_errno()
    report(name, result == -1, f"result {result} errno {errno.errorcode.get(err, err)}")
    return err
def fails(name, action):
    try:
        action()
        report(name, False, "it worked")
    except Exception as e:
        report(name, True, repr(e))
def climb(name):
    # The chroot escape: chroot into a directory, climb out of it with `..` from a
    # working directory left outside, chroot there. It must land on the root it left.
    os.makedirs("/tmp/jail", exist_ok=True)
    seen = sorted(os.listdir("/"))
    pid = os.fork()
    if pid == 0:
        try:
            os.chroot("/tmp/jail")
            for _ in range(64):
                os.chdir("..")
            os.chroot(".")
            found = sorted(os.listdir("/"))
            report(name, found == seen, found)
        except Exception as e:
            # Not an escape, but then nothing was tried: the probe must try it.
            report(name, False, f"the attempt could not be made: {e!r}")
        os._exit(0)
    os.waitpid(pid, 0)
"#;

/// The in-sprite probe, run as root inside (after [`PRELUDE`]).
const PROBE: &str = r#"
# Kernel and mounts.
call("mount tmpfs", 165, b"none", b"/mnt", b"tmpfs", 0, None)
call("umount /proc", 166, b"/proc", 2)
call("fsopen", 430, b"tmpfs", 0)
call("open_tree", 428, -100, b"/", 1)
call("move_mount", 429, -100, b"/proc", -100, b"/mnt", 0)
call("mount_setattr", 442, -100, b"/", 0, None, 0)
call("pivot_root", 155, b"/tmp", b"/tmp")
call("mknod char device", 133, b"/tmp/mem", 0o20600, os.makedev(1, 1))
call("mknod block device", 133, b"/tmp/disk", 0o60600, os.makedev(7, 0))
call("init_module", 175, None, 0, b"")
call("finit_module", 313, 0, b"", 0)
call("delete_module", 176, b"ext4", 0)
call("kexec_load", 246, 0, 0, None, 0)
call("reboot", 169, 0xfee1dead, 672274793, 0x1234567, None)
call("swapon", 167, b"/tmp/swap", 0)
call("settimeofday", 164, None, None)
call("clock_settime", 227, 0, None)
call("syslog read", 103, 3, None, 0)
call("bpf", 321, 0, None, 0)
call("perf_event_open", 298, None, 0, -1, -1, 0)
call("keyctl", 250, 0, 0)
call("add_key", 248, b"user", b"x", b"y", 1, -4)
call("userfaultfd", 323, 0)
call("open_by_handle_at", 304, 3, None, 0)
call("name_to_handle_at", 303, -100, b"/", None, None, 0)
if not globals().get("NESTED"):  # with nested containers on, these work (own test)
    call("unshare user namespace", 272, 0x10000000)
    call("unshare mount namespace", 272, 0x00020000)
    call("unshare net namespace", 272, 0x40000000)
call("setns", 308, 0, 0)
call("acct", 163, b"/tmp/acct")
call("quotactl", 179, 0, b"/", 0, None)
# Seccomp: other ABIs and io_uring.
err = call("x32 getpid", 0x40000000 | 39)
report("x32 answers ENOSYS", err == errno.ENOSYS, errno.errorcode.get(err, err))
call("io_uring_setup", 425, 8, ctypes.create_string_buffer(120))
call("clone3", 435, None, 0)
code = subprocess.run([sys.executable, "-c", """
import ctypes, mmap
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(bytes([0xb8, 20, 0, 0, 0, 0xcd, 0x80, 0xc3]))  # mov eax, 20 (getpid, i386); int 0x80; ret
address = ctypes.addressof(ctypes.c_char.from_buffer(page))
print("i386 pid", ctypes.CFUNCTYPE(ctypes.c_int)(address)())
"""], capture_output=True, text=True)
report("i386 int 0x80", code.returncode != 0 and "i386 pid" not in code.stdout, f"exit {code.returncode} {code.stdout.strip()}")
# Socket families a sprite must not open.
for name, family, proto in [("AF_VSOCK", 40, 0), ("AF_BLUETOOTH", 31, 0), ("AF_KEY", 15, 2), ("AF_ALG", 38, 0), ("AF_RDS", 21, 0), ("AF_CAN", 29, 1), ("AF_TIPC", 30, 0), ("family 60", 60, 0), ("netlink SCSITRANSPORT", 16, 18), ("netlink RDMA", 16, 20)]:
    try:
        s = socket.socket(family, socket.SOCK_DGRAM if family != 16 else socket.SOCK_RAW, proto)
        s.close()
        report("socket " + name, False, "opened")
    except OSError as e:
        report("socket " + name, e.errno == errno.EAFNOSUPPORT, repr(e))
# What Linux userland needs still works (not attempts: the probe fails loudly).
socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
# Capabilities.
status = open("/proc/self/status").read()
bounding = int([l for l in status.splitlines() if l.startswith("CapBnd")][0].split()[1], 16)
for name, bit in [("CAP_SYS_ADMIN", 21), ("CAP_SYS_MODULE", 16), ("CAP_SYS_PTRACE", 19), ("CAP_SYS_RAWIO", 17), ("CAP_SYS_RESOURCE", 24), ("CAP_NET_ADMIN", 12), ("CAP_SYS_TIME", 25), ("CAP_SYSLOG", 34), ("CAP_BPF", 39)]:
    report("bounding set lacks " + name, not bounding & (1 << bit), hex(bounding))
# Under the sprite's root is nothing of the host, and nothing to reach anyway.
climb("a chroot escape leads back to the sprite's own root")
# PID 1 and the host's processes.
call("ptrace PID 1", 101, 16, 1, None, None)
fails("read /proc/1/environ", lambda: open("/proc/1/environ").read())
fails("list /proc/1/root", lambda: os.listdir("/proc/1/root"))
fails("read /proc/1/mem", lambda: open("/proc/1/mem", "rb").read(1))
pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
report("no host process visible", len(pids) < 50, f"{len(pids)} pids")
# /proc and /sys.
fails("write /proc/sysrq-trigger", lambda: open("/proc/sysrq-trigger", "w").write("h"))
fails("write /proc/sys/kernel/core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/tmp/x"))
fails("write /proc/sys/vm/drop_caches", lambda: open("/proc/sys/vm/drop_caches", "w").write("3"))
fails("read /proc/kcore", lambda: open("/proc/kcore", "rb").read(1))
fails("write /sys/kernel/uevent_helper", lambda: open("/sys/kernel/uevent_helper", "w").write("/tmp/x"))
fails("write a cgroup file", lambda: open("/sys/fs/cgroup/pids.max", "w").write("max"))
fails("open /dev/mem", lambda: open("/dev/mem", "rb"))
fails("open /dev/kmsg", lambda: open("/dev/kmsg", "rb"))
# OOM: no process goes below the sprite's baseline.
baseline = int(open("/proc/self/oom_score_adj").read())
def lower_oom():
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
    try:
        os.write(fd, b"-999")
    finally:
        os.close(fd)
fails("oom_score_adj -999", lower_oom)
report("oom_score_adj baseline kept", int(open("/proc/self/oom_score_adj").read()) == baseline and baseline >= 0, baseline)
# Leaks: no host path or device in mountinfo; the sprite's own hostname.
mountinfo = open("/proc/self/mountinfo").read()
leaks = [w for w in mountinfo.split() if w.startswith(("/tmp/", "/var/", "/dev/loop", "/dev/vd", "/dev/sd", "/dev/nvme"))]
report("mountinfo names no host path or device", not leaks, leaks[:5])
report("/etc/hostname is the sprite's name", open("/etc/hostname").read().strip() == socket.gethostname(), open("/etc/hostname").read().strip())
"#;

/// Run as root inside (after [`PRELUDE`]) with nested containers on: from a user and mount namespace of
/// its own (where it holds every capability), what the sprite's own namespaces, the
/// kernel and the host still refuse.
const NESTED_PROBE: &str = r#"
outer = subprocess.Popen(["sleep", "60"])  # stays in the sprite's own namespaces
own = {kind: os.open(f"/proc/{outer.pid}/ns/{kind}", os.O_RDONLY) for kind in ["mnt", "user", "net", "pid"]}
uid, gid = os.getuid(), os.getgid()
if libc.unshare(0x10000000 | 0x00020000) != 0:
    sys.exit(f"unshare failed: errno {ctypes.get_errno()}")
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"0 {uid} 1")
open("/proc/self/gid_map", "w").write(f"0 {gid} 1")
print("nested: mount", libc.mount(b"scratch", b"/mnt", b"tmpfs", 0, None), flush=True)
call("nested: setns into the sprite's mount namespace", 308, own["mnt"], 0x00020000)
call("nested: setns into the sprite's user namespace", 308, own["user"], 0x10000000)
call("nested: setns into the sprite's network namespace", 308, own["net"], 0x40000000)
call("nested: setns into the sprite's pid namespace", 308, own["pid"], 0x20000000)
call("nested: unmount a locked mount (/proc)", 166, b"/proc", 2)
call("nested: unmount a locked mount (/.sprite/checkpoints)", 166, b"/.sprite/checkpoints", 2)
call("nested: remount /sys writable", 165, None, b"/sys", None, 32 | 4096, None)
call("nested: mount a block device's ext4", 165, b"/dev/loop0", b"/mnt", b"ext4", 0, None)
call("nested: init_module", 175, None, 0, b"")
call("nested: bpf", 321, 0, None, 0)
call("nested: keyctl", 250, 0, 0)
call("nested: perf_event_open", 298, None, 0, -1, -1, 0)
call("nested: kexec_load", 246, 0, 0, None, 0)
call("nested: open_by_handle_at", 304, 3, None, 0)
call("nested: io_uring_setup", 425, 8, ctypes.create_string_buffer(120))
call("nested: reboot", 169, 0xfee1dead, 672274793, 0x1234567, None)
fails("nested: write /proc/sys/kernel/core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").write("|/tmp/x"))
fails("nested: write /proc/sysrq-trigger", lambda: open("/proc/sysrq-trigger", "w").write("h"))
fails("nested: open /dev/mem", lambda: open("/dev/mem", "rb"))
# What is under the sprite's root stays out of reach with every capability over the
# mounts: its root cannot be detached, a chroot escape leads back to it, and after a
# pivot into a tmpfs of its own neither can the new root be detached.
call("nested: detach the sprite's root", 166, b"/", 2)
climb("nested: a chroot escape leads back to the sprite's root")
pid = os.fork()
if pid == 0:
    try:
        os.makedirs("/mnt/old", exist_ok=True)
        if libc.syscall(155, b"/mnt", b"/mnt/old") != 0:
            raise OSError(ctypes.get_errno(), "pivot_root")
        os.chdir("/")
        if libc.syscall(166, b"/old", 2) != 0:
            raise OSError(ctypes.get_errno(), "detach the old root")
        call("nested: detach the root pivoted into", 166, b"/", 2)
        climb("nested: a chroot escape after a pivot leads back to the new root")
    except Exception as e:
        # Not an escape, but then the attempts below it were never made.
        report("nested: pivot into a tmpfs of its own", False, f"could not be made: {e!r}")
    os._exit(0)
os.waitpid(pid, 0)
outer.kill()
"#;

/// The owner of a process's user namespace (`NS_GET_OWNER_UID`).
fn userns_owner(pid: u32) -> u32 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, struct, sys; fd = os.open(f'/proc/{sys.argv[1]}/ns/user', os.O_RDONLY); b = bytearray(4); fcntl.ioctl(fd, 0xb704, b); print(struct.unpack('I', b)[0])",
        ])
        .arg(pid.to_string())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A root filesystem tarball with a static busybox and a character device node (1, 3:
/// what the host calls /dev/null), as a hostile image would ship one.
fn image_with_a_device(dir: &std::path::Path) -> std::path::PathBuf {
    let tarball = dir.join("devimage.tar");
    let script = r#"
import io, os, sys, tarfile
with tarfile.open(sys.argv[1], "w") as tar:
    tar.add("/bin/busybox", arcname="bin/busybox")
    for applet in ["sh", "cat", "ls", "id", "sleep", "head"]:
        link = tarfile.TarInfo("bin/" + applet); link.type = tarfile.SYMTYPE; link.linkname = "busybox"; tar.addfile(link)
    for d in ["etc", "tmp", "home/sprite", "proc", "sys", "dev"]:
        info = tarfile.TarInfo(d); info.type = tarfile.DIRTYPE; info.mode = 0o755; tar.addfile(info)
    data = b"root:x:0:0:root:/root:/bin/sh\nsprite:x:1000:1000::/home/sprite:/bin/sh\n"
    info = tarfile.TarInfo("etc/passwd"); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    node = tarfile.TarInfo("evil"); node.type = tarfile.CHRTYPE; node.devmajor = 1; node.devminor = 3; node.mode = 0o666
    tar.addfile(node)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&tarball)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tarball
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_inside_reaches_nothing_of_the_kernel_the_host_or_its_neighbours() {
    let mut attempts = Attempts::new("kernel, host and neighbours");
    let daemon = Daemon::start_with(
        "debian",
        "storage = \"spritefs\"\nnetwork = \"off\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "jail").await;
    create(client, "other").await;

    // The probe: kernel, mounts, devices, seccomp, capabilities, /proc, /sys, OOM, leaks.
    let probe = root_python(&daemon, "jail", &format!("{PRELUDE}{PROBE}")).await;
    assert!(
        probe.stderr.is_empty() || probe.code == 0,
        "probe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    attempts.record_probe(&probe.stdout());

    // What Linux userland needs keeps working under the same lockdown: ICMP echo (what
    // ping does with CAP_NET_RAW), ip and ss over netlink, apt and dpkg as root.
    let tools = root_shell(
        &daemon,
        "jail",
        "ip -o link show lo && ss -ltn && apt-get check -qq && dpkg -s bash >/dev/null",
    )
    .await;
    let echo = root_python(&daemon, "jail", ICMP_ECHO).await;
    assert_eq!(
        echo.stdout(),
        "icmp reply\n",
        "{}",
        String::from_utf8_lossy(&echo.stderr)
    );
    assert_eq!(
        tools.code,
        0,
        "ip, ss, apt, dpkg or raw ICMP broke: {} {}",
        tools.stdout(),
        String::from_utf8_lossy(&tools.stderr)
    );

    // Each sprite's user namespace is its own host uid's, with its own id range.
    let jail = client.get("jail").await.unwrap();
    let other = client.get("other").await.unwrap();
    let (jail_pid, other_pid) = (init_pid_of(&jail.id), init_pid_of(&other.id));
    let (jail_owner, other_owner) = (userns_owner(jail_pid), userns_owner(other_pid));
    attempts.check(
        "the sprite's user namespace is not root's",
        jail_owner != 0 && other_owner != 0,
        format!("owners {jail_owner} and {other_owner}"),
    );
    attempts.check(
        "two sprites have different host ids",
        jail_owner != other_owner,
        format!("owners {jail_owner} and {other_owner}"),
    );
    let map = std::fs::read_to_string(format!("/proc/{jail_pid}/uid_map")).unwrap();
    attempts.check(
        "root inside is the namespace owner's uid",
        map.split_whitespace().nth(1) == Some(jail_owner.to_string().as_str()),
        map.trim(),
    );

    // Host-side mounts of what a sprite controls: a setuid shell made inside is inert
    // for a local user, who cannot even reach it.
    let made = root_shell(
        &daemon,
        "jail",
        "cp /bin/bash /home/sprite/rootbash && chmod 4755 /home/sprite/rootbash && ls -l /home/sprite/rootbash",
    )
    .await;
    assert_eq!(made.code, 0, "{}", String::from_utf8_lossy(&made.stderr));
    client.checkpoint("jail", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // views mount in the background
    let data = daemon.data_path().to_string_lossy().to_string();
    let disk = format!("{data}/layers/{}/mnt/home/sprite/rootbash", jail.id);
    let view = format!("{data}/layers/{}/views/v0/home/sprite/rootbash", jail.id);
    assert!(std::path::Path::new(&disk).exists(), "{disk}");
    for (what, path) in [("disk", &disk), ("checkpoint view", &view)] {
        let out = as_nobody(&[path.as_str(), "-p", "-c", "id -u"]);
        attempts.check(
            &format!("a local user runs the sprite's setuid shell through its {what}"),
            String::from_utf8_lossy(&out.stdout).trim() != "0",
            format!(
                "{} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    }
    let out = as_nobody(&["ls", &format!("{data}/layers")]);
    attempts.check(
        "a local user lists the sprites' layers",
        !out.status.success(),
        out.status,
    );
    let out = as_nobody(&["ls", &format!("{data}/sprites/{}", jail.id)]);
    attempts.check(
        "a local user looks into a sprite's state directory",
        !out.status.success(),
        out.status,
    );
    // The daemon's launch server starts sprites as root from any spec it is given: a
    // local user may not even connect.
    let socket = format!("{data}/launcher.sock");
    assert!(std::path::Path::new(&socket).exists(), "{socket}");
    let connect = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({socket:?}); print('connected')"
    );
    let out = as_nobody(&["python3", "-c", &connect]);
    attempts.check(
        "a local user connects to the daemon's launch server",
        !String::from_utf8_lossy(&out.stdout).contains("connected"),
        format!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    );
    // Every host mount under the data directory that holds sprite files: nosuid, nodev.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (point, options) = (fields[4], fields[5]);
        let sprite_files = point.contains("/layers/") || point.contains("/image-volumes/");
        if point.starts_with(&data) && sprite_files {
            attempts.check(
                &format!("host mount {point} allows setuid or devices"),
                options.contains("nosuid") && options.contains("nodev"),
                options,
            );
        }
    }

    // A device node shipped in an imported image opens nowhere: not in the sprite, not
    // through a checkpoint view, not on the host side.
    let dir = tempfile::tempdir().unwrap();
    let tarball = image_with_a_device(dir.path());
    let file = tokio::fs::File::open(&tarball).await.unwrap();
    client.import_image("devimage", file).await.unwrap();
    let mut request = sprite_request("devbox");
    request.image = Some("devimage".into());
    client.create(&request).await.unwrap();
    let inside = run(
        client,
        "devbox",
        &["sh", "-c", "ls -l /evil; head -c1 /evil && echo opened"],
    )
    .await;
    attempts.check(
        "open an image's device node inside",
        !inside.stdout().contains("opened"),
        format!(
            "{} {}",
            inside.stdout(),
            String::from_utf8_lossy(&inside.stderr)
        ),
    );
    client.checkpoint("devbox", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let through_view = run(
        client,
        "devbox",
        &[
            "sh",
            "-c",
            "head -c1 /.sprite/checkpoints/v0/evil && echo opened",
        ],
    )
    .await;
    attempts.check(
        "open an image's device node through a checkpoint view",
        !through_view.stdout().contains("opened"),
        String::from_utf8_lossy(&through_view.stderr),
    );
    let host_side = std::fs::File::open(format!("{data}/image-volumes/devimage/evil"));
    attempts.check(
        "open an image's device node on the host side (as root)",
        host_side.is_err(),
        format!("{host_side:?}"),
    );
    attempts.finish(85);
}

/// Floods the sprite's api.sock with 1000 idle connections and reports, as JSON lines,
/// how many the daemon refused at once and, after its header deadline, closed.
const API_SOCK_FLOOD: &str = r#"
import json, socket, sys, time
conns = []
failed = 0
for i in range(1000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("/.sprite/api.sock")
        conns.append(s)
    except OSError:
        failed += 1
time.sleep(2)
refused = 0
for s in conns:
    s.setblocking(False)
    try:
        if s.recv(64).startswith(b"HTTP/1.1 503"):
            refused += 1
    except BlockingIOError:
        pass
print(json.dumps({"opened": len(conns), "failed": failed, "refused": refused}), flush=True)
# Some of the admitted ones make a request first, then stay idle (kept alive).
asked = 0
for s in conns:
    if asked == 8:
        break
    try:
        s.setblocking(True)
        s.settimeout(5)
        s.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: sprite\r\n\r\n")
        if s.recv(4096).startswith(b"HTTP/1.1 200"):
            asked += 1
        s.setblocking(False)
    except OSError:
        pass
print(json.dumps({"asked": asked}), flush=True)
time.sleep(14)
closed = 0
for s in conns:
    try:
        s.recv(64)
        closed += 1
    except BlockingIOError:
        pass
    except OSError:
        closed += 1
print(json.dumps({"closed": closed, "held": len(conns)}), flush=True)
"#;

/// Makes inotify instances until the kernel refuses one, then holds them 60 s.
const INOTIFY_HOG: &str = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
while len(fds) < 10000:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    fds.append(fd)
print("instances", len(fds), flush=True)
time.sleep(60)
"#;

/// Adds epoll watches (8 epoll instances over up to 2500 descriptors) until the kernel
/// refuses one, then holds them 60 s. With an argument N: adds N watches and reports.
const EPOLL_HOG: &str = r#"
import os, select, sys, time
wanted = int(sys.argv[1]) if len(sys.argv) > 1 else None
r, w = os.pipe()
fds = [os.dup(r) for _ in range(2500)]
polls = [select.epoll() for _ in range(8)]
added = 0
try:
    for p in polls:
        for fd in fds:
            if wanted is not None and added >= wanted:
                raise StopIteration
            p.register(fd, select.EPOLLIN)
            added += 1
except StopIteration:
    pass
except OSError as e:
    print("refused after", added, e, flush=True)
print("watches", added, flush=True)
if wanted is None:
    time.sleep(60)
"#;

/// Puts `/proc/sys/fs/epoll/max_user_watches` back when dropped.
struct EpollLimit(String);

impl Drop for EpollLimit {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/fs/epoll/max_user_watches", &self.0);
    }
}

/// An exec stream read by whole lines: text that came in the same chunk as a line already
/// returned is kept for the next call (two prints close together often share one frame).
struct Lines {
    stream: sprite_client::ExecStream,
    seen: String,
}

impl Lines {
    fn new(stream: sprite_client::ExecStream) -> Self {
        Self {
            stream,
            seen: String::new(),
        }
    }

    /// Waits for a complete line that contains `marker`; the stream stays open.
    async fn with(&mut self, marker: &str) -> String {
        loop {
            let mut consumed = 0;
            let mut found = None;
            for line in self.seen.split_inclusive('\n') {
                if !line.ends_with('\n') {
                    break;
                }
                consumed += line.len();
                if line.contains(marker) {
                    found = Some(line.trim_end().to_string());
                    break;
                }
            }
            if let Some(line) = found {
                self.seen.drain(..consumed);
                return line;
            }
            match tokio::time::timeout(Duration::from_secs(60), self.stream.next())
                .await
                .expect("waited a minute for the sprite's output")
                .unwrap()
            {
                sprite_client::ExecEvent::Stdout(data) => {
                    self.seen.push_str(&String::from_utf8_lossy(&data));
                }
                sprite_client::ExecEvent::Exit(code) => {
                    panic!("exited {code} before {marker}: {}", self.seen)
                }
                _ => {}
            }
        }
    }
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A host process (root, like the daemon) makes an inotify instance and `count` epoll
/// watches: what breaks first when a sprite spends root's per-user budgets.
fn host_can_watch(count: usize) -> Result<(), String> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import ctypes, os, select, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.inotify_init1(0) >= 0, 'no inotify instance'\nr, w = os.pipe()\np = select.epoll()\nfor fd in [os.dup(r) for _ in range(int(sys.argv[1]))]:\n    p.register(fd, select.EPOLLIN)\n",
        ])
        .arg(count.to_string())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// With `nested_containers = true`, a sprite runs rootless containers (user, mount,
/// pid and network namespaces of its own, mounts inside them), and from inside those
/// still reaches nothing of its own sprite's namespaces, the kernel or the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_containers_when_allowed_reach_nothing_more() {
    let mut attempts = Attempts::new("nested containers");
    let daemon = Daemon::start_with(
        "debian",
        "network = \"off\"\nnested_containers = true\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "nest").await;

    // What rootless container tools do, as the sprite's unprivileged user.
    let tools = run(
        client,
        "nest",
        &[
            "bash",
            "-c",
            "set -e
            unshare -Urm sh -c 'mount -t tmpfs scratch /mnt && touch /mnt/x && echo mounted'
            unshare -Urpf --mount-proc sh -c 'echo pid $$'
            unshare -Urn sh -c 'ip link set lo up && ip -o addr show lo | grep -q 127.0.0.1 && echo network'
            unshare -Ur unshare -Ur id -u",
        ],
    )
    .await;
    assert_eq!(
        tools.stdout(),
        "mounted\npid 1\nnetwork\n0\n",
        "{}",
        String::from_utf8_lossy(&tools.stderr)
    );

    // The whole probe of the locked-down sprite still holds, namespace calls aside.
    let probe = root_python(&daemon, "nest", &format!("{PRELUDE}NESTED = True\n{PROBE}")).await;
    assert!(
        probe.code == 0,
        "probe failed: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    attempts.record_probe(&probe.stdout());

    // From a namespace of its own, with every capability there.
    let nested = root_python(&daemon, "nest", &format!("{PRELUDE}{NESTED_PROBE}")).await;
    assert!(
        nested.stdout().contains("nested: mount 0\n"),
        "the nested mount failed: {} {}",
        nested.stdout(),
        String::from_utf8_lossy(&nested.stderr)
    );
    attempts.record_probe(&nested.stdout());

    // A nested namespace's processes are still the sprite's own host ids.
    let sprite = client.get("nest").await.unwrap();
    let owner = userns_owner(init_pid_of(&sprite.id));
    let mut stream = Lines::new(
        client
            .exec(
                "nest",
                &params(&["unshare", "-Ur", "sh", "-c", "echo ready; sleep 29.25"]),
            )
            .await
            .unwrap(),
    );
    stream.with("ready").await;
    // `sh` forks the sleep after the echo: it may not have run yet.
    let mut pid = None;
    for _ in 0..100 {
        let pids = Command::new("pgrep")
            .args(["-f", "^sleep 29.25$"])
            .output()
            .unwrap();
        pid = String::from_utf8_lossy(&pids.stdout)
            .lines()
            .next()
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = pid.expect("the nested sleep runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap();
    attempts.check(
        "a nested namespace's process runs with a host id outside its sprite's range",
        uid >= owner && uid < owner + 65_536,
        format!("uid {uid}, the sprite's range starts at {owner}"),
    );
    drop(stream);
    client.destroy("nest").await.unwrap();
    attempts.finish(60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sprite_is_refused_and_its_neighbours_never_notice() {
    let mut attempts = Attempts::new("daemon resources and kernel budgets");
    let internet = Internet::new(1, 0.0, false);
    let daemon = Daemon::start_with(
        "debian",
        &format!(
            "storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\ndns_upstreams = [\"{}\"]\n",
            internet.dns()
        ),
    )
    .await;
    let client = &daemon.client;
    create(client, "flood").await;
    create(client, "neighbour").await;
    install_client(&daemon, "neighbour").await;
    let _web = client
        .exec(
            "neighbour",
            &params(&[
                "python3",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "8080",
            ]),
        )
        .await
        .unwrap();
    let public = sprite_api::sprite::UpdateSpriteRequest {
        url_settings: Some(sprite_api::sprite::UrlSettingsUpdate {
            auth: Some(sprite_api::sprite::UrlAuth::Public),
            private_access: None,
        }),
        ..Default::default()
    };
    client.update("neighbour", &public).await.unwrap();
    let descriptors_before = open_descriptors(daemon.pid);

    // 1000 idle connections to one sprite's api.sock.
    let mut flood = Lines::new(
        client
            .exec("flood", &params(&["python3", "-c", API_SOCK_FLOOD]))
            .await
            .unwrap(),
    );
    let first: serde_json::Value = serde_json::from_str(&flood.with("opened").await).unwrap();
    let opened = first["opened"].as_u64().unwrap();
    let refused = first["refused"].as_u64().unwrap();
    attempts.check(
        "1000 idle connections to api.sock are all held",
        opened - refused <= 64,
        &first,
    );
    let held = open_descriptors(daemon.pid).saturating_sub(descriptors_before);
    attempts.check(
        "the flood takes the daemon's descriptors",
        held < 150,
        format!("{held} more open descriptors in the daemon"),
    );
    // Meanwhile the API, the URL proxy and another sprite's DNS answer.
    let started = std::time::Instant::now();
    let listed = client.list_all(None).await;
    attempts.check(
        "the API answers during the flood",
        listed.is_ok() && started.elapsed() < Duration::from_secs(5),
        format!(
            "{:?} in {:?}",
            listed.as_ref().map(|l| l.len()),
            started.elapsed()
        ),
    );
    let page = reqwest::Client::new()
        .get(format!("{}/", daemon.proxy_url))
        .header("host", "neighbour.localhost")
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    attempts.check(
        "the URL proxy serves another sprite during the flood",
        page.as_ref().is_ok_and(|r| r.status() == 200),
        format!("{:?}", page.map(|r| r.status())),
    );
    let resolved = py(&daemon, "neighbour", &["resolve", "allowed.test"]).await;
    attempts.check(
        "another sprite's DNS answers during the flood",
        resolved == internet.address(2),
        &resolved,
    );
    let asked: serde_json::Value = serde_json::from_str(&flood.with("asked").await).unwrap();
    assert_eq!(asked["asked"], 8, "admitted connections answer requests");
    let second: serde_json::Value = serde_json::from_str(&flood.with("closed").await).unwrap();
    attempts.check(
        "idle connections (kept-alive ones too) outlive the header deadline",
        second["closed"] == second["held"],
        &second,
    );

    // inotify instances: one sprite spends its own budget, not root's.
    let mut hog = Lines::new(
        client
            .exec("flood", &params(&["python3", "-c", INOTIFY_HOG]))
            .await
            .unwrap(),
    );
    let made = hog.with("instances").await;
    let count: usize = made.split_whitespace().nth(1).unwrap().parse().unwrap();
    attempts.check(
        "the hog's instances are bounded by a budget",
        (50..10000).contains(&count),
        &made,
    );
    let neighbour = run(
        client,
        "neighbour",
        &[
            "python3",
            "-c",
            "import ctypes; assert ctypes.CDLL(None).inotify_init1(0) >= 0",
        ],
    )
    .await;
    attempts.check(
        "another sprite makes an inotify instance",
        neighbour.code == 0,
        String::from_utf8_lossy(&neighbour.stderr),
    );
    let host = host_can_watch(0);
    attempts.check(
        "the host makes an inotify instance",
        host.is_ok(),
        format!("{host:?}"),
    );
    let watch = client.fs_watch("neighbour", &["/home/sprite"], false).await;
    attempts.check(
        "fs/watch works on another sprite",
        watch.is_ok(),
        format!("{:?}", watch.err()),
    );
    drop(hog);

    // epoll watches, with the host's per-user limit made small for the test.
    let before = std::fs::read_to_string("/proc/sys/fs/epoll/max_user_watches").unwrap();
    let _restore = EpollLimit(before.trim().to_string());
    std::fs::write("/proc/sys/fs/epoll/max_user_watches", "15000").unwrap();
    let mut hog = Lines::new(
        client
            .exec("flood", &params(&["python3", "-c", EPOLL_HOG]))
            .await
            .unwrap(),
    );
    let made = hog.with("watches").await;
    let count: usize = made.split_whitespace().nth(1).unwrap().parse().unwrap();
    attempts.check(
        "the hog's epoll watches are bounded by a budget",
        (10000..=15000).contains(&count),
        &made,
    );
    let neighbour = run(client, "neighbour", &["python3", "-c", EPOLL_HOG, "1000"]).await;
    attempts.check(
        "another sprite adds 1000 epoll watches",
        neighbour.stdout().contains("watches 1000"),
        neighbour.stdout(),
    );
    let host = host_can_watch(1000);
    attempts.check(
        "the host adds 1000 epoll watches",
        host.is_ok(),
        format!("{host:?}"),
    );
    drop(hog);
    attempts.finish(13);
}

/// Run as root in a sprite: asks its resolver about `name` (the upstream answers after
/// a second) while spraying forged answers for it, from the upstream's address and port
/// to every ephemeral port of the host's side, with the query's own id: prints the
/// address the resolver answered.
const FORGE_ANSWERS: &str = r#"
import socket, struct, sys, threading
upstream, host, name, forged = sys.argv[1:5]
qid = 0x4242
query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack(">HH", 1, 1)
resolver = open("/etc/resolv.conf").read().split("nameserver")[1].split()[0]
answer = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + query[12:] + b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 3600, 4) + socket.inet_aton(forged)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = [0]
def spray():
    for round in range(2):
        for port in range(32768, 61000):
            udp = struct.pack(">HHHH", 53, port, 8 + len(answer), 0) + answer
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(upstream), socket.inet_aton(host))
            try:
                raw.sendto(ip + udp, (host, 0)); sent[0] += 1
            except OSError:
                pass
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(8)
s.sendto(query, (resolver, 53))
spraying = threading.Thread(target=spray); spraying.start()
try:
    data = s.recv(4096)
    print("answer", socket.inet_ntoa(data[-4:]) if data[7] else "none", "sent", sent[0], flush=True)
except Exception as e:
    print("no answer", e, flush=True)
spraying.join()
"#;

/// Run as root in a sprite: sends UDP with a forged source: a DNS query to its own
/// resolver "from" `victim:5353` (the answer would go to the victim), and a datagram
/// straight to `victim:5353` "from" `other_source`.
const SPOOF: &str = r#"
import socket, struct, sys
victim, other_source = sys.argv[1:3]
resolver = open("/etc/resolv.conf").read().split("nameserver")[1].split()[0]
query = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x07allowed\x04test\x00" + struct.pack(">HH", 1, 1)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def send(source, sport, destination, dport, payload):
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(source), socket.inet_aton(destination))
    raw.sendto(ip + udp, (destination, 0))
for _ in range(20):
    send(victim, 5353, resolver, 53, query)
    send(other_source, 9999, victim, 5353, b"spoofed")
print("sent", flush=True)
"#;

/// Run in a sprite: listens on UDP 5353 for `seconds` and prints what came.
const LISTEN_UDP: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
s.settimeout(0.2)
print("listening", flush=True)
got = []
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        data, peer = s.recvfrom(4096)
        got.append(peer[0])
    except socket.timeout:
        pass
print("received", len(got), got[:3], flush=True)
"#;

/// A service that tries, as fast as it can from the moment the sprite boots, to reach
/// `address:8000`, and logs every success.
const PROBER: &str = r#"
import socket, sys, time
address = sys.argv[1]
while True:
    try:
        socket.create_connection((address, 8000), timeout=0.05).close()
        open("/home/sprite/probe.log", "a").write("CONNECTED %f\n" % time.time())
    except OSError:
        pass
"#;

async fn gateway_of(daemon: &Daemon, sprite: &str) -> std::net::Ipv4Addr {
    run(
        &daemon.client,
        sprite,
        &[
            "sh",
            "-c",
            "awk '/^nameserver/ {print $2}' /etc/resolv.conf",
        ],
    )
    .await
    .stdout()
    .trim()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_attacks_from_a_sprite_fail() {
    let mut attempts = Attempts::new("network");
    let internet = Internet::new(2, 1.0, true);
    let daemon = Daemon::start_with(
        "debian",
        &format!(
            "storage = \"local\"\nwarm_after = \"never\"\ncold_after = \"never\"\ndns_upstreams = [\"{}\"]\n",
            internet.dns()
        ),
    )
    .await;
    let client = &daemon.client;
    for name in ["open", "strict", "other"] {
        create(client, name).await;
        install_client(&daemon, name).await;
    }
    let (allowed, denied) = (internet.address(2), internet.address(3));

    // No policy: never cloud metadata nor the host's own networks.
    let out = py(&daemon, "open", &["connect", "169.254.169.254", "8000"]).await;
    attempts.check(
        "no policy: reach 169.254.169.254",
        out.starts_with("failed"),
        &out,
    );
    let out = py(&daemon, "open", &["connect", &allowed, "8000"]).await;
    attempts.check(
        "no policy: reach the host's connected network",
        out.starts_with("failed"),
        &out,
    );

    // A restricted policy: names resolve, private answers are never admitted...
    let only_allowed = serde_json::json!([
        {"domain": "allowed.test", "action": "allow"},
        {"domain": "metadata.test", "action": "allow"}
    ]);
    assert_eq!(
        set_policy(&daemon, "strict", only_allowed.clone())
            .await
            .status(),
        204
    );
    assert_eq!(
        py(&daemon, "strict", &["get", "http://allowed.test:8000/"]).await,
        "hello from the internet"
    );
    assert_eq!(
        py(&daemon, "strict", &["resolve", "metadata.test"]).await,
        "169.254.169.254"
    );
    let out = py(&daemon, "strict", &["connect", "169.254.169.254", "8000"]).await;
    attempts.check(
        "an allowed name resolving to link-local admits it",
        out.starts_with("failed"),
        &out,
    );
    // ...unless the policy names the range (so the check above can fail).
    let named = serde_json::json!([
        {"domain": "metadata.test", "action": "allow"},
        {"cidr": "169.254.169.254/32", "action": "allow"}
    ]);
    assert_eq!(set_policy(&daemon, "strict", named).await.status(), 204);
    assert_eq!(
        py(&daemon, "strict", &["resolve", "metadata.test"]).await,
        "169.254.169.254"
    );
    assert_eq!(
        py(&daemon, "strict", &["connect", "169.254.169.254", "8000"]).await,
        "connected"
    );
    assert_eq!(
        set_policy(&daemon, "strict", only_allowed).await.status(),
        204
    );

    // Forged answers for an allowed name, sprayed at every port of the resolver's
    // upstream socket with the id the sprite chose, do not admit another address.
    let forged = root_python_args(
        &daemon,
        "strict",
        FORGE_ANSWERS,
        &[
            &internet.address(53),
            &internet.address(1),
            "allowed.test",
            &denied,
        ],
    )
    .await;
    eprintln!("forged answers: {}", forged.stdout().trim());
    attempts.check(
        "forged DNS answers are believed",
        forged.stdout().contains(&format!("answer {allowed}")),
        forged.stdout(),
    );
    let out = py(&daemon, "strict", &["connect", &denied, "8000"]).await;
    attempts.check(
        "forged DNS answers admit their address",
        out.starts_with("failed"),
        &out,
    );

    // Spoofed sources: towards the resolver (its answer would go to another sprite)
    // and straight at another sprite.
    let other_gateway = gateway_of(&daemon, "other").await;
    let other_address = std::net::Ipv4Addr::from(u32::from(other_gateway) + 1).to_string();
    let mut listener = Lines::new(
        client
            .exec("other", &params(&["python3", "-c", LISTEN_UDP, "4"]))
            .await
            .unwrap(),
    );
    listener.with("listening").await;
    let spoofed = root_python_args(&daemon, "strict", SPOOF, &[&other_address, &allowed]).await;
    assert!(
        spoofed.stdout().contains("sent"),
        "{}",
        String::from_utf8_lossy(&spoofed.stderr)
    );
    let received = listener.with("received").await;
    attempts.check(
        "spoofed packets reach another sprite (directly or through the resolver)",
        received.starts_with("received 0"),
        &received,
    );

    // The policy is in force before anything of the sprite runs: a service that tries
    // a denied address from boot never gets through, start after start.
    create(client, "window").await;
    client
        .fs_write(
            "window",
            "/home/sprite/prober.py",
            None,
            true,
            std::io::Cursor::new(PROBER.as_bytes().to_vec()),
        )
        .await
        .unwrap();
    let policy = serde_json::json!([{"domain": "allowed.test", "action": "allow"}]);
    assert_eq!(set_policy(&daemon, "window", policy).await.status(), 204);
    let prober = sprite_api::services::ServiceSpec {
        cmd: "python3".into(),
        args: vec!["/home/sprite/prober.py".into(), denied.clone()],
        ..Default::default()
    };
    client
        .put_service("window", "prober", &prober, None, |_| {})
        .await
        .unwrap();
    for _ in 0..3 {
        client.sleep("window", true).await.unwrap();
        client.wake("window").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let log = run(
        client,
        "window",
        &[
            "sh",
            "-c",
            "cat /home/sprite/probe.log 2>/dev/null; echo end",
        ],
    )
    .await;
    attempts.check(
        "a service reaches a denied address while the sprite starts",
        !log.stdout().contains("CONNECTED"),
        log.stdout(),
    );
    attempts.finish(7);
}

async fn root_python_args(daemon: &Daemon, sprite: &str, script: &str, args: &[&str]) -> Finished {
    let mut argv = vec!["sudo", "python3", "-c", script];
    argv.extend_from_slice(args);
    run(&daemon.client, sprite, &argv).await
}

/// An app for the proxy tests: answers every request with what it saw (path and
/// cookies, as JSON) and tries to set the daemon's cookies, and one of its own.
const ECHO_APP: &str = r#"
import http.server, json
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "cookie": self.headers.get("cookie", ""), "authorization": self.headers.get("authorization", "")}).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("set-cookie", "sprite_auth=chosen-by-the-app; Path=/")
        self.send_header("set-cookie", "SPRITE_TOKEN=chosen-by-the-app; Path=/")
        self.send_header("set-cookie", "theme=dark; Path=/")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
"#;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn proxied(
    daemon: &Daemon,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = no_redirects()
        .get(format!("{}{path}", daemon.proxy_url))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_proxy_gives_no_sprite_another_ones_credentials() {
    let mut attempts = Attempts::new("URL proxy");
    let daemon = Daemon::start_with(
        "debian",
        "storage = \"local\"\nnetwork = \"off\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    for name in ["app", "evil", "open"] {
        create(client, name).await;
        client
            .fs_write(
                name,
                "/home/sprite/echo.py",
                None,
                true,
                std::io::Cursor::new(ECHO_APP.as_bytes().to_vec()),
            )
            .await
            .unwrap();
        let web = sprite_api::services::ServiceSpec {
            cmd: "python3".into(),
            args: vec!["/home/sprite/echo.py".into()],
            http_port: Some(8080),
            ..Default::default()
        };
        client
            .put_service(name, "web", &web, None, |_| {})
            .await
            .unwrap();
    }
    let public = sprite_api::sprite::UpdateSpriteRequest {
        url_settings: Some(sprite_api::sprite::UrlSettingsUpdate {
            auth: Some(sprite_api::sprite::UrlAuth::Public),
            private_access: None,
        }),
        ..Default::default()
    };
    client.update("open", &public).await.unwrap();

    // Signing in: the cookie is a capability, not the token.
    let signed = proxied(&daemon, "app.localhost", &format!("/?token={TOKEN}"), &[]).await;
    assert_eq!(signed.status(), 302);
    let set = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    attempts.check(
        "the sign-in cookie carries the API token",
        !set.contains(TOKEN),
        &set,
    );
    attempts.check(
        "the sign-in cookie is readable by scripts or sent to other hosts",
        set.contains("HttpOnly") && !set.to_ascii_lowercase().contains("domain="),
        &set,
    );
    let own = proxied(&daemon, "app.localhost", "/", &[("cookie", &cookie)]).await;
    assert_eq!(own.status(), 200, "the cookie works on its own sprite");
    let seen: serde_json::Value = own.json().await.unwrap();
    attempts.check(
        "the app sees the sign-in cookie",
        !seen["cookie"].as_str().unwrap().contains("sprite_auth"),
        &seen,
    );

    // Cookies that must not work.
    let on_evil = proxied(&daemon, "evil.localhost", "/", &[("cookie", &cookie)]).await;
    attempts.check(
        "app's cookie opens another sprite",
        on_evil.status() == 401,
        on_evil.status(),
    );
    let value = cookie.split_once('=').unwrap().1;
    let tampered = format!("sprite_auth={}", value.replacen("v1.", "v1.9", 1));
    let out = proxied(&daemon, "app.localhost", "/", &[("cookie", &tampered)]).await;
    attempts.check(
        "a cookie with a longer life forged",
        out.status() == 401,
        out.status(),
    );
    let raw_token = format!("sprite_token={TOKEN}");
    let out = proxied(&daemon, "app.localhost", "/", &[("cookie", &raw_token)]).await;
    attempts.check(
        "the old token cookie still opens a sprite",
        out.status() == 401,
        out.status(),
    );

    // Another sprite's page drives this one with its cookie: refused.
    let out = proxied(
        &daemon,
        "app.localhost",
        "/",
        &[
            ("cookie", &cookie),
            ("origin", "http://evil.localhost:7080"),
        ],
    )
    .await;
    attempts.check(
        "a request from another sprite's page with the cookie",
        out.status() == 403,
        out.status(),
    );
    let upgrade = [
        ("cookie", cookie.as_str()),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let out = proxied(&daemon, "app.localhost", "/", &upgrade).await;
    attempts.check(
        "a WebSocket upgrade on the cookie without Origin",
        out.status() == 403,
        out.status(),
    );
    let mut from_evil = upgrade.to_vec();
    from_evil.push(("origin", "http://evil.localhost"));
    let out = proxied(&daemon, "app.localhost", "/", &from_evil).await;
    attempts.check(
        "a WebSocket upgrade on the cookie from another origin",
        out.status() == 403,
        out.status(),
    );
    let origin = format!(
        "http://app.localhost:{}",
        daemon.proxy_url.rsplit(':').next().unwrap()
    );
    let mut from_own = upgrade.to_vec();
    from_own.push(("origin", &origin));
    let host = format!(
        "app.localhost:{}",
        daemon.proxy_url.rsplit(':').next().unwrap()
    );
    let out = no_redirects()
        .get(format!("{}/", daemon.proxy_url))
        .header("host", &host)
        .headers({
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in &from_own {
                map.insert(
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            map
        })
        .send()
        .await
        .unwrap();
    assert_ne!(out.status(), 403, "the sprite's own page may upgrade");

    // The app cannot set (or reset) the daemon's cookies; its own pass.
    let answer = proxied(
        &daemon,
        "app.localhost",
        "/",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    let cookies: Vec<String> = answer
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    attempts.check(
        "the app sets the daemon's cookie",
        !cookies
            .iter()
            .any(|c| c.to_ascii_lowercase().starts_with("sprite_")),
        format!("{cookies:?}"),
    );
    assert!(
        cookies.iter().any(|c| c.starts_with("theme=")),
        "{cookies:?}"
    );
    let seen: serde_json::Value = answer.json().await.unwrap();
    attempts.check(
        "the app sees the API token",
        !seen["authorization"].as_str().unwrap().contains(TOKEN),
        &seen,
    );

    // ?token= never reaches an app, public ones included.
    let out = proxied(
        &daemon,
        "open.localhost",
        &format!("/page?token={TOKEN}&q=1"),
        &[],
    )
    .await;
    let seen: serde_json::Value = out.json().await.unwrap();
    attempts.check(
        "a public sprite's app sees ?token=",
        seen["path"] == "/page?q=1",
        &seen,
    );
    attempts.finish(12);
}

/// Runs the CLI against the daemon; answers (success, stdout and stderr).
fn cli(daemon: &Daemon, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sprite"))
        .args(args)
        .env("SPRITES_API_URL", &daemon.url)
        .env("SPRITE_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A request to the sprite's own API from inside: `METHOD PATH [BODY]`; prints the
/// status code.
async fn inside_api(daemon: &Daemon, sprite: &str, method: &str, path: &str, body: &str) -> String {
    let mut argv = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--unix-socket",
        "/.sprite/api.sock",
        "-X",
        method,
    ];
    let url = format!("http://sprite{path}");
    if !body.is_empty() {
        argv.extend_from_slice(&["-H", "content-type: application/json", "-d", body]);
    }
    argv.push(&url);
    run(&daemon.client, sprite, &argv)
        .await
        .stdout()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_copies_and_the_inner_api_stay_within_their_sprite() {
    let mut attempts = Attempts::new("files, cp and api.sock");
    let daemon = Daemon::start_with(
        "debian",
        "storage = \"spritefs\"\nnetwork = \"off\"\nwarm_after = \"never\"\ncold_after = \"never\"\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "box").await;

    // api.sock: the owner's checkpoints are not the sprite's to restore or delete.
    client.checkpoint("box", Some("the owner's")).await.unwrap();
    let code = inside_api(&daemon, "box", "POST", "/v1/checkpoints/v0/restore", "").await;
    attempts.check(
        "restore the owner's checkpoint from inside",
        code == "403",
        &code,
    );
    let code = inside_api(&daemon, "box", "DELETE", "/v1/checkpoints/v0", "").await;
    attempts.check(
        "delete the owner's checkpoint from inside",
        code == "403",
        &code,
    );
    assert!(
        client.checkpoint_info("box", "v0").await.is_ok(),
        "v0 is still there"
    );
    let code = inside_api(&daemon, "box", "POST", "/v1/checkpoint", "{}").await;
    assert_eq!(code, "200", "a sprite checkpoints itself");
    let code = inside_api(&daemon, "box", "DELETE", "/v1/checkpoints/v1", "").await;
    assert_eq!(code, "204", "and deletes what it made");
    let code = inside_api(&daemon, "box", "GET", "/v1/sprites", "").await;
    attempts.check(
        "list the organization's sprites from inside",
        code == "404",
        &code,
    );
    let code = inside_api(
        &daemon,
        "box",
        "POST",
        "/v1/tasks",
        r#"{"name":"forever","expire":1e300}"#,
    )
    .await;
    attempts.check("a task that never expires (1e300 s)", code == "400", &code);
    let mut codes = Vec::new();
    for task in 0..65 {
        let body = format!(r#"{{"name":"t{task}","expire":60}}"#);
        codes.push(inside_api(&daemon, "box", "POST", "/v1/tasks", &body).await);
    }
    attempts.check(
        "unlimited tasks",
        codes[..64].iter().all(|c| c == "201") && codes[64] == "409",
        format!("{:?}", &codes[60..]),
    );
    let mut codes = Vec::new();
    for _ in 0..24 {
        codes.push(inside_api(&daemon, "box", "POST", "/v1/checkpoint", "{}").await);
    }
    attempts.check(
        "checkpoints as fast as a sprite can ask",
        codes.iter().any(|c| c == "429"),
        format!("{codes:?}"),
    );
    attempts.check(
        "the daemon answers after all that",
        client.get("box").await.is_ok(),
        "",
    );

    // The fs API never hands host-owned files to a sprite with their host owner.
    let copied = client
        .fs_post::<serde_json::Value>(
            "box",
            "copy",
            &serde_json::json!({"source": "/.sprite/run", "dest": "/home/sprite/runcopy", "recursive": true, "preserveAttrs": true}),
        )
        .await;
    let owners = run(
        client,
        "box",
        &[
            "sh",
            "-c",
            "stat -c '%u %n' /home/sprite/runcopy /home/sprite/runcopy/* 2>/dev/null; true",
        ],
    )
    .await;
    attempts.check(
        "copy host-owned files into the sprite with their host owner",
        !owners.stdout().lines().any(|l| l.starts_with("65534")),
        format!("{copied:?} {}", owners.stdout()),
    );

    // sprite cp: a download never writes through a link on this machine.
    let made = run(
        client,
        "box",
        &[
            "sh",
            "-c",
            "mkdir -p /home/sprite/tree/link && echo payload > /home/sprite/tree/link/payload",
        ],
    )
    .await;
    assert_eq!(made.code, 0);
    let local = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(local.path().join("tree")).unwrap();
    std::os::unix::fs::symlink(outside.path(), local.path().join("tree/link")).unwrap();
    let (ok, said) = cli(
        &daemon,
        &[
            "cp",
            "-r",
            "box:/home/sprite/tree",
            &local.path().to_string_lossy(),
        ],
    );
    attempts.check(
        "a download writes through a symbolic link on this machine",
        !outside.path().join("payload").exists(),
        format!("exit ok {ok}: {said}"),
    );
    // An upload does not follow links out of the tree it copies (unless -L).
    let tree = tempfile::tempdir().unwrap();
    let secret = outside.path().join("id_ed25519");
    std::fs::write(&secret, "private key").unwrap();
    std::fs::write(tree.path().join("notes.txt"), "notes").unwrap();
    std::os::unix::fs::symlink(&secret, tree.path().join("key")).unwrap();
    let source = tree.path().to_string_lossy().to_string();
    let (ok, said) = cli(&daemon, &["cp", "-r", &source, "box:/home/sprite/up"]);
    assert!(ok, "{said}");
    let listed = run(
        client,
        "box",
        &[
            "sh",
            "-c",
            "ls /home/sprite/up; cat /home/sprite/up/key 2>/dev/null; true",
        ],
    )
    .await;
    attempts.check(
        "an upload carries what a link in the tree points at",
        listed.stdout().contains("notes.txt") && !listed.stdout().contains("private key"),
        listed.stdout(),
    );
    let (ok, said) = cli(
        &daemon,
        &["cp", "-r", "-L", &source, "box:/home/sprite/up2"],
    );
    assert!(ok, "{said}");
    let followed = run(client, "box", &["cat", "/home/sprite/up2/key"]).await;
    assert_eq!(
        followed.stdout(),
        "private key",
        "-L copies what links point at"
    );
    attempts.finish(10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sprite_cannot_fill_the_host_disk_nor_keep_endless_checkpoints() {
    let mut attempts = Attempts::new("storage");
    // A threshold no host meets: the guard acts at once on whoever writes.
    let daemon = Daemon::start_with(
        "busybox",
        "storage = \"spritefs\"\nnetwork = \"off\"\nwarm_after = \"never\"\ncold_after = \"never\"\nmin_free_disk_mb = 100000000\nmax_checkpoints = 3\n",
    )
    .await;
    let client = &daemon.client;
    create(client, "writer").await;
    create(client, "quiet").await;
    let first = run(
        client,
        "writer",
        &[
            "dd",
            "if=/dev/zero",
            "of=/home/sprite/a",
            "bs=1M",
            "count=8",
        ],
    )
    .await;
    assert_eq!(first.code, 0, "{}", String::from_utf8_lossy(&first.stderr));
    // The guard looks every 2 s: a sprite that goes on writing is stopped within a
    // few of its writes.
    let more = run(
        client,
        "writer",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 400 ]; do dd if=/dev/zero of=/home/sprite/b$i bs=1M count=1 conv=fsync status=none || exit 1; i=$((i+1)); sleep 0.05; done",
        ],
    )
    .await;
    let said = String::from_utf8_lossy(&more.stderr).to_string();
    attempts.check(
        "a sprite keeps writing while the host is short of disk",
        more.code != 0 && said.contains("No space left"),
        format!("exit {}: {said}", more.code),
    );
    let quiet = run(
        client,
        "quiet",
        &[
            "sh",
            "-c",
            "echo small > /home/sprite/note && cat /home/sprite/note",
        ],
    )
    .await;
    assert_eq!(
        quiet.stdout(),
        "small\n",
        "a sprite that did not write is not held back"
    );

    // Checkpoints per sprite are capped, with a message that says so.
    for _ in 0..3 {
        client.checkpoint("quiet", None).await.unwrap();
    }
    let fourth = client.checkpoint("quiet", None).await;
    let message = format!("{fourth:?}");
    attempts.check(
        "a fourth checkpoint past max_checkpoints = 3",
        fourth.is_err() && message.contains("max_checkpoints"),
        &message,
    );
    attempts.finish(2);
}
