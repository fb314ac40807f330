"""Proof that the tests bite: break the behaviour on purpose and see which tests fail.

Usage: ``python -m bench.hand_mutations [--only NAME ...] [--list]``

Each mutation replaces one piece of code (found by its exact text, which must
occur once) in a copy of the committed tree (``git archive HEAD``), runs the
tests named for it in that copy, and reports which of them failed.  A
mutation that no test notices is a survivor: a behaviour the suite does not
pin down.  First, every named test runs on an unmutated copy: a test that fails
there would count any mutation as caught, so the run stops, naming it.  The
working tree is never touched.  The table printed at the end
(mutation, file:line, failing tests) is what the closing note of issue 18
quotes; a run of every mutation takes about 20 minutes on two CPUs, most of
it in the end-to-end fault drills.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAULTS_STALE = "tests/e2e/test_faults.py::test_without_a_backing_store_stale_values_stand_in"
FAULTS_BACKED = (
    "tests/e2e/test_faults.py::"
    "test_with_a_backing_store_it_stands_in_then_stale_values_when_it_fails_too"
)
ATTACKS = "tests/e2e/test_attacks.py"
SECURITY_TOKENS = (
    "tests/e2e/test_security.py::test_near_miss_tokens_are_refused_on_every_route_class"
)
RESOLVER_UNITS = ("tests/test_resolver.py", "tests/test_resolver_faults.py", "tests/test_cache.py")
WRITE_UNITS = (
    "tests/test_write_ordering.py",
    "tests/test_merge_property.py",
    "tests/test_backing_stores.py",
    "tests/test_write_through.py",
    "tests/test_rewarm.py",
)


@dataclass(frozen=True)
class Mutation:
    """One deliberate break: ``old`` becomes ``new`` in ``path``; ``tests`` should notice."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "every fallback answers training defaults as 'default' (a real 'no data')",
        "features/serving/resolver.py",
        "    if failure is None:\n        return _default_values(request), request.fields, "
        "None, Source.DEFAULT, None, None",
        "    if True:\n        return _default_values(request), request.fields, "
        "None, Source.DEFAULT, None, None",
        (*RESOLVER_UNITS, f"{FAULTS_STALE}[blackhole]"),
    ),
    Mutation(
        "the stale tier dropped: a failure always answers 'unavailable'",
        "features/serving/resolver.py",
        "    known = cache.get_stale(key)\n",
        "    known = None\n",
        (*RESOLVER_UNITS, f"{FAULTS_STALE}[pause]", f"{FAULTS_BACKED}[pause]"),
    ),
    Mutation(
        "stale values served however old (the freshness window ignored)",
        "features/serving/resolver.py",
        "known[1] <= request.group.freshness.total_seconds()",
        "known[1] >= 0",
        RESOLVER_UNITS,
    ),
    Mutation(
        "stale answers report no age",
        "features/serving/resolver.py",
        "return values, defaulted, event_ms, Source.STALE, age_s, failure",
        "return values, defaulted, event_ms, Source.STALE, None, failure",
        (*RESOLVER_UNITS, f"{FAULTS_STALE}[latency]"),
    ),
    Mutation(
        "stale answers serve the training defaults under the stale label",
        "features/serving/resolver.py",
        "return values, defaulted, event_ms, Source.STALE, age_s, failure",
        "return _default_values(request), defaulted, event_ms, Source.STALE, age_s, failure",
        (*RESOLVER_UNITS, f"{FAULTS_STALE}[kill]"),
    ),
    Mutation(
        "a backing answer after a Redis failure is not marked degraded (and gets cached)",
        "features/serving/resolver.py",
        "requests[index], cast(StoredValues, answer), tier.source, failures[index]",
        "requests[index], cast(StoredValues, answer), tier.source, None",
        (*RESOLVER_UNITS, f"{FAULTS_BACKED}[kill]"),
    ),
    Mutation(
        "degraded answers are cached like real ones",
        "features/serving/resolver.py",
        "                if slot[5] is None:\n                    self._cache.put(key, slot[:3])",
        "                self._cache.put(key, slot[:3])",
        (*RESOLVER_UNITS, f"{FAULTS_BACKED}[blackhole]"),
    ),
    Mutation(
        "the feature deadline ignored (a store is waited on for its own timeout)",
        "features/serving/resolver.py",
        "            async with ReplyDeadline(deadline):",
        "            async with ReplyDeadline(deadline + 3600):",
        (*RESOLVER_UNITS, f"{FAULTS_STALE}[blackhole]"),
    ),
    Mutation(
        "the resolver waits until the deadline itself (no early cut-off)",
        "features/serving/resolver.py",
        "self._slack_s = min(TIMER_SLACK_S, deadline_s * SLACK_SHARE)",
        "self._slack_s = 0.0",
        ("tests/test_deadline_profiles.py",),
    ),
    Mutation(
        "stale values are kept with FEATSERVE_STALE_CACHE_MAXSIZE=0",
        "features/serving/cache.py",
        "LRUCache(maxsize=stale_maxsize) if stale_maxsize > 0 else None",
        "LRUCache(maxsize=stale_maxsize or 1000)",
        (
            "tests/test_cache.py",
            "tests/e2e/test_http_api.py::"
            "test_redis_down_still_answers_from_stale_values_and_defaults_then_recovers",
        ),
    ),
    Mutation(
        "without REDIS_URL the service starts on a default Redis address",
        "service/service.py",
        "SETTINGS = Settings()\n",
        'SETTINGS = Settings().model_copy(update={"redis_url": Settings().redis_url or '
        '"redis://127.0.0.1:1/0"})\n',
        ("tests/e2e/test_http_api.py::test_the_service_refuses_to_start_without_redis_url",),
    ),
    Mutation(
        "ISO 8601 times in CSV lose their offset",
        "features/ingest/writer.py",
        "return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()",
        "return value.replace(tzinfo=UTC).timestamp()",
        ("tests/test_materialize.py",),
    ),
    Mutation(
        "`featserve materialize` exits 1, not 3, when a store fails",
        "service/cli/materialize.py",
        "EXIT_STORE = 3",
        "EXIT_STORE = 1",
        ("tests/test_materialize.py",),
    ),
    Mutation(
        "`featserve materialize` checks --entity-column/--timestamp-column but writes by "
        "the default names",
        "service/cli/materialize.py",
        "                store,\n"
        "                entity_column=args.entity_column,\n"
        "                timestamp_column=args.timestamp_column,\n",
        "                store,\n"
        '                entity_column="entity_id",\n'
        '                timestamp_column="event_timestamp",\n',
        ("tests/test_materialize.py",),
    ),
    Mutation(
        "every profile gets the fraud profile's feature deadline",
        "features/settings.py",
        "PROFILES[self.profile].features_ms",
        'PROFILES["payments"].features_ms',
        ("tests/test_deadline_profiles.py",),
    ),
    Mutation(
        "the hour of day is wrong alike in training, single and batch rows",
        "examples/fraud/derived.py",
        "_SECONDS_PER_HOUR = 3600",
        "_SECONDS_PER_HOUR = 60",
        (
            "tests/e2e/test_oracle.py",
            "tests/e2e/test_http_api.py::"
            "test_score_batch_matches_single_scores_and_uses_one_round_trip",
        ),
    ),
    Mutation(
        "the breaker never opens",
        "features/breaker.py",
        "if permit.probe or self._failures >= self._failure_threshold:",
        "if permit.probe:",
        (*RESOLVER_UNITS, "tests/test_breaker.py", f"{FAULTS_BACKED}[latency]"),
    ),
    Mutation(
        "no backing tier in the service",
        "service/composer.py",
        "        tiers.append(backing_tier(backing, settings))\n",
        "",
        (f"{FAULTS_BACKED}[kill]",),
    ),
    Mutation(
        "the cache serves entries past their TTL",
        "features/serving/cache.py",
        "if self._timer() - entry[1] < self._ttl_s:",
        "if True:",
        RESOLVER_UNITS,
    ),
    Mutation(
        "hash writes ignore the event time (an older value replaces a newer one)",
        "features/stores/redis_scripts.py",
        "at_of[name] or update_ms, -1\n  if present[name] then held_at = own[name] or group_ms "
        "end\n  if at >= held_at then",
        "at_of[name] or update_ms, -1\n  if present[name] then held_at = own[name] or group_ms "
        "end\n  if true then",
        WRITE_UNITS,
    ),
    Mutation(
        "materialization's many-hash script ignores the event time",
        "features/stores/redis_scripts.py",
        "uniform or ats[j], -1\n      if present[name] then held_at = own[name] or group_ms "
        "end\n      if at >= held_at then",
        "uniform or ats[j], -1\n      if present[name] then held_at = own[name] or group_ms "
        "end\n      if true then",
        (*WRITE_UNITS, "tests/test_writer.py"),
    ),
    Mutation(
        "the backing store ignores the event time",
        "features/stores/codecs.py",
        "if name not in times or at >= times[name]:",
        "if True:",
        WRITE_UNITS,
    ),
    Mutation(
        "the backing store skips the per-field merge (a partial write drops the other fields)",
        "features/stores/codecs.py",
        "        values = dict(held.values)\n"
        "        times = {name: held.ms_of(name) for name in values}",
        "        values = {}\n        times = {}",
        WRITE_UNITS,
    ),
    Mutation(
        "the backing store serves expired groups",
        "features/stores/write_rules.py",
        "    return event_ms + _ttl_ms(group) > now_ms",
        "    return True",
        WRITE_UNITS,
    ),
    Mutation(
        "write-through writes Redis before the backing store",
        "features/stores/write_through.py",
        "        backing = self._backing.write(updates)\n"
        "        return _combined(backing, self._online.write(_for_online(updates, backing)))",
        "        online = self._online.write(updates)\n"
        "        return _combined(self._backing.write(updates), online)",
        WRITE_UNITS,
    ),
    Mutation(
        "write-through skips the backing store",
        "features/stores/write_through.py",
        "        backing = await self._backing.write(updates)\n",
        "        backing = [WriteOutcome(frozenset(u.values)) for u in updates]\n",
        (*WRITE_UNITS, "tests/e2e/test_push.py", "tests/e2e/test_push_durability.py"),
    ),
    Mutation(
        "a push does not drop the pushing worker's cached copy",
        "service/service.py",
        "            self.resolver.forget(written.entity_id, written.group)\n",
        "            pass\n",
        ("tests/e2e/test_push.py",),
    ),
    Mutation(
        "a bearer token is accepted when it is a prefix of the right one",
        "service/middleware/access_tokens.py",
        "any(hmac.compare_digest(presented, t) for t in accepted)",
        "any(t.startswith(presented) for t in accepted)",
        (SECURITY_TOKENS,),
    ),
    Mutation(
        "bearer tokens are compared without regard to case",
        "service/middleware/access_tokens.py",
        "any(hmac.compare_digest(presented, t) for t in accepted)",
        "any(hmac.compare_digest(presented.lower(), t.lower()) for t in accepted)",
        (SECURITY_TOKENS,),
    ),
    Mutation(
        "the read token opens writes",
        "service/middleware/access_tokens.py",
        "            return (self._write,) if self._write is not None else ()\n",
        "            return tuple(t for t in (self._write, self._read) if t is not None)\n",
        ("tests/e2e/test_security.py",),
    ),
    Mutation(
        "a slow body is waited for without a deadline",
        "service/middleware/request_body.py",
        "            async with asyncio.timeout(self.read_timeout_s):\n",
        "            async with asyncio.timeout(None):\n",
        (f"{ATTACKS}::test_64_slow_bodies_leave_other_clients_their_latency",),
    ),
    Mutation(
        "BentoML's request metrics labelled with the raw path again",
        "service/bentoml_adapter.py",
        '            label = route_label(scope["path"], self._routes)\n',
        '            label = scope["path"]\n',
        (
            "tests/test_bentoml_adapter.py",
            f"{ATTACKS}::test_20000_unknown_paths_leave_metrics_and_memory_flat",
        ),
    ),
    Mutation(
        "any number of header fields is read",
        "service/bentoml_adapter.py",
        "        if self._header_count > self.limits.max_headers:\n",
        "        if False:\n",
        (f"{ATTACKS}::test_oversized_headers_get_431_and_the_connection_closed",),
    ),
    Mutation(
        "a push that a store fails mid-way answers 200",
        "service/service.py",
        "        except (StoreUnavailable, StoreTimeout) as exc:\n"
        "            ctx.response.status_code = 503",
        "        except (StoreUnavailable, StoreTimeout) as exc:\n"
        "            ctx.response.status_code = 200",
        ("tests/e2e/test_push.py",),
    ),
)


def main(argv: Sequence[str] | None = None, mutations: Sequence[Mutation] = MUTATIONS) -> int:
    """Run the mutations (``--only`` picks some) after their baseline; 1 if any survived."""
    parser = argparse.ArgumentParser(prog="python -m bench.hand_mutations", description=__doc__)
    parser.add_argument("--only", action="append", help="run mutations whose name has this")
    parser.add_argument("--list", action="store_true", help="list the mutations and stop")
    args = parser.parse_args(argv)
    chosen = [m for m in mutations if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for mutation in chosen:
            print(f"{mutation.name}  ({mutation.path})")
        return 0
    baseline = sorted({test for mutation in chosen for test in mutation.tests})
    _, broken = run_tests(None, baseline)
    if broken:
        print(
            "The unmutated tree already fails these tests, so a failure under a mutation "
            "would prove nothing; fix them first:",
            *broken,
            sep="\n  ",
            file=sys.stderr,
        )
        return 2
    rows = []
    for mutation in chosen:
        started = time.monotonic()
        line, failed = run_tests(mutation, mutation.tests)
        print(f"{mutation.name}: {len(failed)} failed in {time.monotonic() - started:.0f} s",
              flush=True)  # fmt: skip
        rows.append((mutation, line, failed))
    print("\n| mutation | where | tests that failed |\n|---|---|---|")
    for mutation, line, failed in rows:
        caught = "<br>".join(failed) if failed else "**none: survived**"
        print(f"| {mutation.name} | {mutation.path}:{line} | {caught} |")
    return 1 if any(not failed for _, _, failed in rows) else 0


def run_tests(mutation: Mutation | None, tests: Sequence[str]) -> tuple[int, list[str]]:
    """Apply ``mutation`` (none: the baseline) to a copy of HEAD and run ``tests`` there;
    the line it changed (0 for the baseline) and the tests that failed."""
    with tempfile.TemporaryDirectory(prefix="featserve-mutant-") as scratch:
        copy = Path(scratch)
        archive = subprocess.run(
            ["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(copy, filter="data")
        line = 0 if mutation is None else _apply(mutation, copy)
        # The copy comes first on sys.path (python -m puts the working directory there).
        tested = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
             *tests],
            cwd=copy,
            capture_output=True,
            text=True,
        )  # fmt: skip
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", tested.stdout, re.MULTILINE)))
    if tested.returncode not in (0, 1):
        failed = failed or [f"pytest exit {tested.returncode}: {tested.stdout[-300:]}"]
    return line, failed


def _apply(mutation: Mutation, copy: Path) -> int:
    """Break ``copy`` as ``mutation`` says; the line of the change."""
    target = copy / mutation.path
    text = target.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the code to break is not in {mutation.path} once")
    target.write_text(text.replace(mutation.old, mutation.new))
    return text[: text.index(mutation.old)].count("\n") + 1


if __name__ == "__main__":
    raise SystemExit(main())
