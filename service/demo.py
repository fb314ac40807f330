"""``make serve``: the service on a fresh machine, with demo data and a trained model.

``python -m service.demo`` uses ``REDIS_URL`` when it is set, and otherwise
starts an embedded Redis on 127.0.0.1 (port 6379 when free).  It writes
demo features for users ``u000000`` to ``u009999``, trains and saves the
model when the BentoML model store has none, runs ``bentoml serve`` on
127.0.0.1:3000 and prints a curl that works.  Ctrl-C stops everything it
started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import bentoml
import httpx
import numpy as np

from features.local_redis import LocalRedis, free_port
from features.registry import FRAUD_REGISTRY
from features.settings import Settings
from features.stores.base import WriteRow
from features.stores.redis import RedisStore, sync_client
from models.dataset import generate_users

__all__ = ["demo_rows", "main", "wait_until_ready"]

DEMO_USERS = 10_000
DEMO_SEED = 20251127
READY_TIMEOUT_S = 120.0


def demo_rows(n_users: int, now: int, seed: int = DEMO_SEED) -> Iterator[WriteRow]:
    """Rows for every shipped group of users ``u000000`` onwards, as of ``now``."""
    users = generate_users(n_users, seed, now)
    features = FRAUD_REGISTRY.group("user", "features")
    recent = FRAUD_REGISTRY.group("user", "recent_items")
    embedding = FRAUD_REGISTRY.group("user", "embedding")
    rng = np.random.default_rng(seed + 1)
    dim = embedding.features[0].dim or 0
    for index, entity_id in enumerate(users.entity_ids):
        yield WriteRow(entity_id, features, users.record(index))
        items = rng.integers(0, 50_000, size=12)
        seen = now - rng.integers(60, 4 * 3600, size=12)
        yield WriteRow(
            entity_id,
            recent,
            {
                "recent_items": {
                    f"i{item:05d}": float(ts) for item, ts in zip(items, seen, strict=True)
                }
            },
        )
        yield WriteRow(entity_id, embedding, {"embedding": rng.standard_normal(dim).tolist()})


def write_demo_features(settings: Settings, n_users: int) -> None:
    """Write the demo rows to the store ``settings`` points at."""
    store = RedisStore(sync_client(settings))
    try:
        store.write(list(demo_rows(n_users, int(time.time()))))
    finally:
        store.close()


def ensure_model(tag: str) -> None:
    """Train and save the model when the model store has none under ``tag``."""
    try:
        bentoml.models.get(tag)
        return
    except bentoml.exceptions.NotFound:
        pass
    print(f"No model {tag} in the BentoML model store: training one.", flush=True)
    subprocess.run([sys.executable, "-m", "models.train"], check=True)


def wait_until_ready(base_url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``/readyz`` until it answers 200; raise if the server exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"bentoml serve was not ready within {timeout_s:.0f} s")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    parser.add_argument("--users", type=int, default=DEMO_USERS, help="demo users to write")
    args = parser.parse_args(argv)
    # `kill` and `timeout` send SIGTERM: clean up as for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    settings = Settings()
    embedded: LocalRedis | None = None
    if not settings.redis_url:
        embedded = LocalRedis(port=6379 if _port_is_free(6379) else free_port()).start()
        print(f"Started an embedded {embedded.binary.name} at {embedded.url}", flush=True)
        settings = Settings(redis_url=embedded.url)
    env = {**os.environ, "REDIS_URL": settings.redis_url or ""}
    try:
        write_demo_features(settings, args.users)
        print(f"Wrote demo features for u000000..u{args.users - 1:06d}", flush=True)
        ensure_model(settings.model_tag)
        base_url = f"http://127.0.0.1:{args.port}"
        server = subprocess.Popen(
            [
                sys.executable, "-m", "bentoml", "serve", "service.service:FraudScorer",
                "--host", "127.0.0.1", "--port", str(args.port),
            ],
            env=env,
        )  # fmt: skip
        try:
            wait_until_ready(base_url, server, READY_TIMEOUT_S)
            print(
                "\nfeatserve is ready. Try:\n\n"
                f"  curl -s -X POST {base_url}/score -H 'Content-Type: application/json' \\\n"
                '       -d \'{"entity_id": "u000123", "amount": 250.0}\'\n',
                flush=True,
            )
            return server.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        if embedded is not None:
            embedded.close()


if __name__ == "__main__":
    raise SystemExit(main())
