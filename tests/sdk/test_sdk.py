"""The official Sprites Python SDK (sprites-py 0.7.2, from PyPI) against a sprite daemon:
every public method of the sync client, and the async client's, with their results
checked (docs/sdk-compat.md maps each method to its line here).

Run with SPRITES_API_URL and SPRITE_TOKEN set; SPRITES_CONTROL_MODE=1 runs the same
with `control_mode=True` (exec over WS .../control). Exits non-zero on the first
failure.
"""
import asyncio
import io
import os
import subprocess
import sys
import time

from sprites import AsyncSpritesClient, SpritesClient
from sprites import exec as sprites_exec
from sprites import session as sprites_session
from sprites.exceptions import ExitError, FileNotFoundError_, NotFoundError, SpriteError
from sprites.types import NetworkPolicy, PolicyRule, URLSettings

URL = os.environ["SPRITES_API_URL"]
TOKEN = os.environ["SPRITE_TOKEN"]
CONTROL = os.environ.get("SPRITES_CONTROL_MODE") == "1"
NAME = "sdk-control" if CONTROL else "sdk-compat"

client = SpritesClient(token=TOKEN, base_url=URL, control_mode=CONTROL)
sprite = client.create_sprite(NAME)
try:
    assert sprite.name == NAME
    assert sprite.use_control_mode() == CONTROL

    result = sprite.run("echo", "hello", capture_output=True)
    assert result.returncode == 0 and result.stdout == b"hello\n", result

    result = sprite.run("bash", "-c", "echo oops >&2; exit 42", capture_output=True)
    assert result.returncode == 42, result
    assert result.stderr == b"oops\n", result

    try:
        sprite.run("false", check=True)
        raise AssertionError("check=True did not raise")
    except ExitError:
        pass

    result = sprite.run("pwd", cwd="/tmp", capture_output=True)
    assert result.stdout == b"/tmp\n", result

    result = sprite.run("bash", "-c", "echo $GREETING", env={"GREETING": "hi"}, capture_output=True)
    assert result.stdout == b"hi\n", result

    result = sprite.run("tty", tty=True, capture_output=True)
    assert b"/dev/pts/" in result.stdout, result

    result = sprite.run("stty", "size", tty=True, tty_rows=33, tty_cols=99, capture_output=True)
    assert b"33 99" in result.stdout, result

    # sprites-py's control path captures output but never writes it to a `stdout=`
    # stream (an SDK limitation, docs/sdk-compat.md): read it with output() there.
    if CONTROL:
        cmd = sprite.command("wc", "-c", stdin=io.BytesIO(b"x" * 100000))
        assert cmd.output().strip() == b"100000"
    else:
        out = io.BytesIO()
        cmd = sprite.command("wc", "-c", stdin=io.BytesIO(b"x" * 100000), stdout=out)
        cmd.run()
        assert out.getvalue().strip() == b"100000", out.getvalue()
    assert cmd.exit_code == 0

    assert sprite.command("echo", "out").output() == b"out\n"
    both = sprite.command("bash", "-c", "echo a; sleep 0.2; echo b >&2").combined_output()
    assert both == b"a\nb\n", both
    try:
        sprite.command("bash", "-c", "exit 3").output()
        raise AssertionError("output() of a failing command did not raise")
    except ExitError as error:
        assert error.exit_code() == 3, error.exit_code()
    result = sprites_exec.run(sprite, "echo", "module", capture_output=True)
    assert result.stdout == b"module\n", result
    if CONTROL:
        # The runs above went over the control socket, and it is kept for reuse.
        assert sprite.has_control_connection()
        started = time.monotonic()
        for _ in range(20):
            assert sprite.run("true").returncode == 0
        print(f"20 control-mode runs in {time.monotonic() - started:.2f} s")

    # Sessions: TTY commands outlive their client; list, attach, kill them.
    def leave_running(script):
        # The SDK has no detach call: a second process runs it and goes away.
        code = (
            "import os\nfrom sprites import SpritesClient\n"
            "c = SpritesClient(token=os.environ['SPRITE_TOKEN'], base_url=os.environ['SPRITES_API_URL'])\n"
            f"c.sprite({NAME!r}).run('bash', '-c', {script!r}, tty=True, timeout=1)\n"
        )
        subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        for _ in range(50):
            found = [s for s in sprite.list_sessions() if script in s.command]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no session for {script!r}: {sprite.list_sessions()}")

    session = leave_running("echo started; sleep 3; echo finished")
    assert session.tty and session.is_active and session.created, session
    output = sprite.attach_session(session.id).combined_output()
    assert b"started" in output and b"finished" in output, output
    session = leave_running("echo waiting; sleep 600")
    killed = sprites_session.kill_session(sprite, session.id, signal="SIGTERM", timeout=5)
    kinds = [m.type for m in killed]
    assert kinds[0] == "signal" and kinds[-1] == "complete" and "exited" in kinds, kinds
    assert not [s for s in sprite.list_sessions() if s.id == session.id and s.is_active]

    # File system (the SDK's pathlib-like API over /fs/...).
    fs = sprite.filesystem("/home/sprite")
    (fs / "proj/src").mkdir(parents=True)
    (fs / "proj/src/main.py").write_text("print('hi')\n")
    assert (fs / "proj/src/main.py").read_text() == "print('hi')\n"
    assert (fs / "proj/src/main.py").read_bytes() == b"print('hi')\n"
    assert (fs / "proj/src/main.py").exists() and (fs / "proj/src/main.py").is_file()
    assert not (fs / "proj/nope").exists()
    assert sorted(p.name for p in (fs / "proj/src").iterdir()) == ["main.py"]
    stat = (fs / "proj/src/main.py").stat()
    assert stat.size == 12 and stat.mode == "0644" and not stat.is_dir, stat
    (fs / "proj/src/main.py").copy_to(fs / "proj/src/copy.py")
    (fs / "proj/src/copy.py").rename("moved.py")
    assert sorted((fs / "proj/src").listdir()) == ["main.py", "moved.py"]
    (fs / "proj/src/moved.py").chmod(0o755)
    assert (fs / "proj/src/moved.py").stat().mode == "0755"
    result = sprite.run("python3", "/home/sprite/proj/src/main.py", capture_output=True)
    assert result.stdout == b"hi\n", result
    (fs / "proj/src/moved.py").unlink()
    try:
        (fs / "proj/src/moved.py").read_text()
        raise AssertionError("read of a deleted file did not raise")
    except FileNotFoundError_:
        pass
    # Stat of a directory (docs/sdk-compat.md): stat reads entries[0] of the same
    # listing iterdir reads, so the directory's own entry comes first, nameless.
    assert (fs / "proj/src").is_dir() and (fs / "proj/src").exists()
    assert not (fs / "proj/src").is_file()
    stat = (fs / "proj/src").stat()
    assert stat.is_dir and stat.path == "/home/sprite/proj/src" and stat.name == "src", stat
    (fs / "proj/src").mkdir(exist_ok=True)  # its first child is a file: still a directory
    (fs / "proj/empty").mkdir()
    assert (fs / "proj/empty").exists() and (fs / "proj/empty").is_dir()
    assert list((fs / "proj/empty").iterdir()) == []
    assert sorted((fs / "proj").listdir()) == ["empty", "src"]
    (fs / "proj").rmtree()
    assert not (fs / "proj").exists()

    # URL settings.
    sprite.update_url_settings(URLSettings(auth="public"))
    assert client.get_sprite(NAME).url_settings.auth == "public"
    assert client.get_sprite(NAME).url

    # Network policy.
    sprite.update_network_policy(NetworkPolicy(rules=[PolicyRule(domain="*.example.com", action="allow"), PolicyRule(include="defaults")]))
    policy = sprite.get_network_policy()
    assert [(r.domain, r.action, r.include) for r in policy.rules] == [("*.example.com", "allow", None), (None, None, "defaults")], policy
    sprite.update_network_policy(NetworkPolicy(rules=[]))
    assert sprite.get_network_policy().rules == []

    # Labels and URL settings in one update; absent fields stay.
    updated = client.update_sprite(NAME, labels=["sdk", "test"])
    assert updated.labels == ["sdk", "test"], updated.labels
    assert client.get_sprite(NAME).url_settings.auth == "public"
    sprite.update(url_settings=URLSettings(auth="sprite"))
    assert client.get_sprite(NAME).url_settings.auth == "sprite"

    # Checkpoints: create, list, get, restore.
    sprite.run("bash", "-c", "echo one > /home/sprite/state")
    stream = sprite.create_checkpoint("first")
    messages = list(stream)
    assert messages and messages[-1].type == "complete", messages
    checkpoints = sprite.list_checkpoints()
    ids = [c.id for c in checkpoints if c.comment == "first"]
    assert ids, checkpoints
    first = sprite.get_checkpoint(ids[0])
    assert first.id == ids[0] and first.create_time, first
    sprite.run("bash", "-c", "echo two > /home/sprite/state")
    messages = list(sprite.restore_checkpoint(ids[0]))
    assert messages and messages[-1].type == "complete", messages
    result = sprite.run("cat", "/home/sprite/state", capture_output=True)
    assert result.stdout == b"one\n", result
    lineage = sprite.list_checkpoints(history_filter="true")
    assert lineage[0].id == "Current" and lineage[0].history == [ids[0]], lineage

    # Services.
    events = list(sprite.create_service("ticker", "bash", args=["-c", "trap 'echo hup' HUP; echo tick; while true; do sleep 0.2; done"], duration=1))
    types = [e.type for e in events]
    assert types[0] == "started" and types[-1] == "complete", types
    assert all(isinstance(e.timestamp, int) and e.timestamp > 1_600_000_000_000 for e in events), events
    assert any(e.type == "stdout" and e.data == "tick\n" for e in events), events
    assert [s.name for s in sprite.list_services()] == ["ticker"]
    service = sprite.get_service("ticker")
    assert service.state.status == "running", service
    sprite.signal_service("ticker", "HUP")
    events = list(sprite.stop_service("ticker", timeout=2))
    assert [e.type for e in events][0] == "stopping" and events[-1].type == "complete", events
    assert sprite.get_service("ticker").state.status == "stopped"
    events = list(sprite.start_service("ticker", duration=1))
    assert events[0].type == "started", events
    sprite.delete_service("ticker")
    assert sprite.list_services() == []

    # Upgrade: the sprite already runs on its image's newest version, so it answers
    # without a change (a real upgrade is tested in crates/sprite/tests/images.rs);
    # an unknown sprite is a NotFoundError.
    client.upgrade_sprite(NAME)
    try:
        client.upgrade_sprite("sdk-no-such-sprite")
        raise AssertionError("upgrade of a missing sprite did not fail")
    except NotFoundError:
        pass

    names = [s.name for s in client.list_sprites().sprites]
    assert NAME in names, names
    assert NAME in [s.name for s in client.list_all_sprites(prefix="sdk-")]
    info = client.get_sprite(NAME)
    assert info.name == NAME

    # The async client: the same calls, awaited.
    async def run_async():
        aclient = AsyncSpritesClient(token=TOKEN, base_url=URL, control_mode=CONTROL)
        try:
            asprite = aclient.sprite(NAME)
            result = await asprite.run("echo", "async", capture_output=True)
            assert result.stdout == b"async\n", result
            assert await asprite.command("echo", "out").output() == b"out\n"
            fs = asprite.filesystem("/home/sprite")
            await (fs / "async.txt").write_text("a")
            assert await (fs / "async.txt").read_text() == "a"
            await (fs / "async.txt").unlink()
            await (fs / "adir").mkdir()
            assert await (fs / "adir").is_dir() and await (fs / "adir").exists()
            assert [p async for p in (fs / "adir").iterdir()] == []
            await (fs / "adir").mkdir(exist_ok=True)
            await (fs / "adir").rmdir()
            assert not await (fs / "adir").exists()
            assert (await aclient.get_sprite(NAME)).name == NAME
            assert NAME in [s.name for s in (await aclient.list_sprites()).sprites]
            assert [s.name for s in await asprite.list_services()] == []
            assert (await asprite.get_network_policy()).rules == []
        finally:
            await aclient.aclose()
    asyncio.run(run_async())
finally:
    client.delete_sprite(NAME)

try:
    client.get_sprite(NAME)
    raise AssertionError("deleted sprite still found")
except NotFoundError:
    pass

# create_token: the SDK posts to the hosted API's address with `Authorization: FlyV1`;
# here its HTTP client is pointed at this daemon, and the admin token stands in for
# the Fly macaroon. The new token works, for its organization only.
if not CONTROL:
    import httpx
    import sprites.client as sprites_client

    real_client = httpx.Client

    class ToThisDaemon(real_client):
        def post(self, url, *args, **kwargs):
            return super().post(str(url).replace("https://api.sprites.dev", URL), *args, **kwargs)

    sprites_client.httpx.Client = ToThisDaemon
    try:
        minted = SpritesClient.create_token(TOKEN, "sdk-org")
        assert minted.startswith("spr_"), minted
        other = SpritesClient(token=minted, base_url=URL)
        assert [s.name for s in other.list_sprites().sprites] == []
        try:
            SpritesClient.create_token(minted, "sdk-org")
            raise AssertionError("an organization token minted a token")
        except SpriteError as error:
            assert "403" in str(error), error
    finally:
        sprites_client.httpx.Client = real_client
print("sdk ok")
