"""The official Sprites Python SDK (sprites-py, from PyPI) against a sprite daemon.

Run with SPRITES_API_URL and SPRITE_TOKEN set. Exits non-zero on the first failure.
"""
import io
import os
import sys

from sprites import SpritesClient
from sprites.exceptions import ExitError, NotFoundError

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
