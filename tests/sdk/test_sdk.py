"""The official Sprites Python SDK (sprites-py, from PyPI) against a sprite daemon.

Run with SPRITES_API_URL and SPRITE_TOKEN set. Exits non-zero on the first failure.
"""
import io
import os
import sys

from sprites import SpritesClient
from sprites.exceptions import ExitError, FileNotFoundError_, NotFoundError
from sprites.types import NetworkPolicy, PolicyRule, URLSettings

URL = os.environ["SPRITES_API_URL"]
TOKEN = os.environ["SPRITE_TOKEN"]
NAME = "sdk-compat"

client = SpritesClient(token=TOKEN, base_url=URL)
sprite = client.create_sprite(NAME)
try:
    assert sprite.name == NAME

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

    out = io.BytesIO()
    cmd = sprite.command("wc", "-c", stdin=io.BytesIO(b"x" * 100000), stdout=out)
    cmd.run()
    assert out.getvalue().strip() == b"100000", out.getvalue()

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

    names = [s.name for s in client.list_sprites().sprites]
    assert NAME in names, names
    info = client.get_sprite(NAME)
    assert info.name == NAME
finally:
    client.delete_sprite(NAME)

try:
    client.get_sprite(NAME)
    raise AssertionError("deleted sprite still found")
except NotFoundError:
    pass
print("sdk ok")
