"""``make serve``: the service on a fresh machine, with demo data and a trained model.

It serves the project ``--project`` or ``FEATSERVE_PROJECT`` names (``make
serve`` passes ``PROJECT``, the Makefile's example project unless told
otherwise).
``python -m service.cli.demo`` uses ``REDIS_URL`` when it is set (with
``FEATSERVE_REDIS_MODE``: ``cluster`` when it names a node of a Redis
Cluster, ``sentinel`` with ``FEATSERVE_SENTINELS``), and otherwise starts an
embedded one on 127.0.0.1 of the mode asked for: one server (port 6379 when
free), a 3-primary / 3-replica cluster, or a primary, two replicas and three
sentinels.  It writes
the project's demo tables for 10,000 entities and loads them with
``featserve materialize``, trains and saves the
model when the BentoML model store has none, runs ``bentoml serve`` on
127.0.0.1:3000 and prints curls that work.  Writes (``POST /push``) and
``/ops/status`` need ``FEATSERVE_WRITE_TOKEN``: when it is unset, a token is
made for this run and printed in the curls.  Ctrl-C stops everything it
started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bentoml

from features.project import Project
from features.project_loader import load_project
from features.redaction import install_log_redaction, redact
from features.settings import Settings
from models.train import default_model_name
from service import cli
from service.harness.local_cluster import LocalCluster
from service.harness.local_redis import LocalRedis, free_port
from service.harness.local_sentinel import MASTER_NAME, LocalSentinels
from service.harness.served import (
    READY_TIMEOUT_S,
    SERVICE,
    bentoml_serve_command,
    wait_until_ready,
)

__all__ = ["load_demo_data", "main"]

DEMO_USERS = 10_000


def load_demo_data(
    redis_url: str | None,
    n_users: int,
    out_dir: Path,
    settings: Settings | None = None,
    project: str | Path | None = None,
) -> None:
    """Write the demo tables of the project in folder ``project`` (default: the project of
    ``settings``, else of the environment) to ``out_dir`` and load them with ``featserve
    materialize`` into ``redis_url`` (or where ``settings``, else the environment, says), in
    the Redis mode ``settings`` (else the environment) says."""
    folder = str(project or (settings or Settings()).project or "")
    if not folder:
        raise RuntimeError("no project: set FEATSERVE_PROJECT or pass --project")
    declared = load_project(folder)
    if declared.demo is None:
        raise RuntimeError(f"project {declared.name!r} brings no demo data (Project.demo)")
    paths = declared.demo.write_tables(out_dir, n_users, int(time.time()), "parquet")
    for group, path in paths.items():
        args = ["materialize", str(path), "--group", group, "--project", folder]
        if redis_url:
            args += ["--redis-url", redis_url]
        code = cli.main(args, settings)
        if code != 0:
            raise RuntimeError(redact(f"featserve {' '.join(args)} exited with {code}"))


def ensure_model(tag: str, project_folder: str) -> None:
    """Train and save the model when the model store has none under ``tag``."""
    try:
        bentoml.models.get(tag)
        return
    except bentoml.exceptions.NotFound:
        pass
    print(f"No model {tag} in the BentoML model store: training one.", flush=True)
    command = [sys.executable, "-m", "models.train", "--project", project_folder]
    if not tag.endswith(":latest"):
        command += ["--name", tag.partition(":")[0]]
    subprocess.run(command, check=True)


def ready_message(base_url: str, settings: Settings, token_was_set: bool, project: Project) -> str:
    """What to try once the service answers: curls for a score, a push and the status page,
    with bodies made of ``project``'s fields and examples."""
    token = settings.write_token.get_secret_value() if settings.write_token else ""
    where = (
        "from FEATSERVE_WRITE_TOKEN"
        if token_was_set
        else "made for this run; set FEATSERVE_WRITE_TOKEN to choose your own"
    )
    read_header = ' -H "Authorization: Bearer $FEATSERVE_READ_TOKEN"' if settings.read_token else ""
    export = "" if token_was_set else f"  export FEATSERVE_WRITE_TOKEN={token}\n"
    example_id = f"{project.entity.name[:1]}000123"
    score = {project.entity_field: example_id} | {
        item.name: item.example for item in project.request if item.required
    }
    group = project.registry.groups_of(project.entity.name)[0]
    feature = group.features[0]
    update = json.dumps(
        {
            "updates": [
                {
                    "entity_id": example_id,
                    "group": group.name,
                    "event_timestamp": int(time.time()),
                    "values": {feature.name: feature.default},
                }
            ]
        }
    )
    return (
        "\nfeatserve is ready. Try:\n\n"
        f"  curl -s -X POST {base_url}/score -H 'Content-Type: application/json'{read_header} \\\n"
        f"       -d '{json.dumps(score)}'\n\n"
        f"Writes and /ops/status need the write token ({where}):\n\n"
        f"{export}"
        f"  curl -s -X POST {base_url}/push -H 'Content-Type: application/json' \\\n"
        '       -H "Authorization: Bearer $FEATSERVE_WRITE_TOKEN" \\\n'
        f"       -d '{update}'\n"
        f'  curl -s {base_url}/ops/status -H "Authorization: Bearer $FEATSERVE_WRITE_TOKEN"\n'
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default 3000)")
    parser.add_argument("--users", type=int, default=DEMO_USERS, help="demo entities to write")
    parser.add_argument("--data", type=Path, default=Path("var/demo"), help="demo tables folder")
    parser.add_argument("--project", help="the project folder (default: FEATSERVE_PROJECT)")
    args = parser.parse_args(argv)
    if args.project:
        os.environ["FEATSERVE_PROJECT"] = args.project
    if not os.environ.get("FEATSERVE_PROJECT"):
        parser.error("no project: pass --project DIR or set FEATSERVE_PROJECT")
    # `kill` and `timeout` send SIGTERM: clean up as for Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    install_log_redaction()
    # Local runs keep a SQLite backing store unless told otherwise.
    os.environ.setdefault("FEATSERVE_BACKING_STORE", f"sqlite:{args.data / 'backing.sqlite3'}")
    token_was_set = bool(os.environ.get("FEATSERVE_WRITE_TOKEN"))
    if not token_was_set:
        os.environ["FEATSERVE_WRITE_TOKEN"] = secrets.token_urlsafe(24)
    with contextlib.ExitStack() as embedded:
        settings = Settings()
        if settings.redis_missing:
            os.environ.update(_start_embedded(settings, embedded))
            settings = Settings()
        return _serve(args, settings, token_was_set)


def _start_embedded(settings: Settings, stack: contextlib.ExitStack) -> dict[str, str]:
    """Start the embedded Redis of the mode asked for; the variables that name it."""
    if settings.redis_mode == "cluster":
        cluster = stack.enter_context(LocalCluster())
        print(f"Started an embedded 3-primary / 3-replica cluster at {cluster.url}", flush=True)
        return {"REDIS_URL": cluster.url}
    if settings.redis_mode == "sentinel":
        sentinels = stack.enter_context(LocalSentinels())
        print(
            "Started an embedded primary, two replicas and three sentinels at "
            f"{sentinels.sentinel_addresses} (master {MASTER_NAME})",
            flush=True,
        )
        return {
            "FEATSERVE_SENTINELS": sentinels.sentinel_addresses,
            "FEATSERVE_SENTINEL_MASTER": MASTER_NAME,
        }
    server = LocalRedis(port=6379 if _port_is_free(6379) else free_port())
    stack.enter_context(server)
    print(f"Started an embedded {server.binary.name} at {server.url}", flush=True)
    return {"REDIS_URL": server.url}


def _serve(args: argparse.Namespace, settings: Settings, token_was_set: bool) -> int:
    """Load the demo data, make sure there is a model, and serve until interrupted."""
    folder = settings.project or ""
    project = load_project(folder)
    load_demo_data(None, args.users, args.data, settings, folder)
    print(f"Loaded demo features of {args.users} {project.entity.name} entities", flush=True)
    ensure_model(settings.model_tag or f"{default_model_name(project)}:latest", folder)
    base_url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(bentoml_serve_command(SERVICE, args.port), env=dict(os.environ))
    try:
        wait_until_ready(base_url, server, READY_TIMEOUT_S)
        print(ready_message(base_url, settings, token_was_set, project), flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
