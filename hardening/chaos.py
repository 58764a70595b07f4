"""`make chaos`: a matrix of faults on the apiserver test stack, each cell with traffic running.

The stack is the reconciler tests' (tests/apiserver_stack.py): etcd + kube-apiserver,
the operator as the ServiceAccount of deploy/rbac.yaml, two sidecar processes on their own loopback
addresses with Pod objects pointing at them, and the test upstream process. Each cell applies a fresh
TokenBudget (a daily request limit the traffic overruns, so refusals happen, and a large token limit that
only counts), sends calls through both sidecars, injects its fault while they run, undoes it, lets the
operator catch up, and then compares the budget's status with what the upstream served:

- calls: the calls the upstream served (status 200 sent, completed or cut); refusals: the sidecars' 429s;
- lost = served - counted and doubled = counted - served, where counted is the status's request count;
- overrun = counted - limit (the documented bound is 0: grants never sum past the limit, a restarted
  sidecar resumes its windows from checkpoint + ledger, an operator outage stops nothing a grant covers).

Prints the table and exits non-zero when any cell lost, doubled or overran. Needs root for the ledger
cells (a 1 MiB tmpfs mounted, filled, remounted read-only, unmounted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from apiserver_stack import (  # type: ignore[import-not-found]  # noqa: E402
    TOKEN,
    http,
    kill,
    namespaces,
    operator_running,
    sidecar_pod,
    start_sidecar,
    start_upstream,
    wait_for,
)
from controlplane import ControlPlane, pod_address, resolve_bin_dir, terminate  # type: ignore[import-not-found]  # noqa: E402
from operator_harness import OperatorProcess  # type: ignore[import-not-found]  # noqa: E402
from rig import Tally, call  # noqa: E402

from tokenbudget_api import names  # noqa: E402

LIMIT = 40  # requests per day in each cell's budget; the traffic offers 2 x CALLS
CALLS = 32  # per sidecar per cell
PACE_S = 0.12
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's faketime package
SIDECAR_ENV = {"TOKENBUDGET_READ_TIMEOUT_S": "2", "TOKENBUDGET_DRAIN_TIMEOUT_S": "1"}


@dataclass
class Cell:
    name: str
    fault: Callable[[Chaos], None]  # injects at FAULT_AT s into the traffic
    recover: Callable[[Chaos], None]  # undoes it RECOVER_AFTER s later
    headers: dict[str, str] | None = None  # per-call upstream behaviour (every third call)
    evidence: Callable[[Chaos], str] | None = None  # what shows the fault took effect, for the note


@dataclass
class Row:
    cell: str
    calls: int
    refusals: int
    lost: int
    doubled: int
    overrun: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return (self.calls >= 0 and self.lost == 0 and self.doubled == 0 and self.overrun == 0
                and "not injected" not in self.note)


class SidecarProc:
    def __init__(self, ip: str, pod: str, work: Path, token_file: Path) -> None:
        self.ip, self.pod, self.work, self.token_file = ip, pod, work, token_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ledger(self) -> Path:
        return self.work / f"ledger-{self.ip}"

    def start(self, timeout: float = 30) -> None:
        old = dict(os.environ)
        os.environ.update(SIDECAR_ENV)
        try:
            self.proc = start_sidecar(self.ip, self.work, self.token_file)
        finally:
            os.environ.clear()
            os.environ.update(old)
        wait_for(f"sidecar {self.ip}", lambda: http("GET", f"http://{self.ip}:{names.SIDECAR_ADMIN_PORT}/healthz",
                                                    token=None), timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Chaos:
    def __init__(self, kube: ControlPlane, work: Path, *, fake_clock: bool = True) -> None:
        self.kube, self.work = kube, work
        self.ns = f"tb-chaos-{uuid.uuid4().hex[:6]}"  # never a namespace another run (or test) left Terminating
        self.token_file = work / "admin-token"
        self.token_file.write_text(TOKEN)
        self.sidecars = [SidecarProc(pod_address(60 + i), f"chaos-{i}", work, self.token_file) for i in range(2)]
        self.upstream = ""
        self.operator: OperatorProcess | None = None
        self.mounted = False
        self.ro_started: bool | None = None
        self.counts: dict[str, int] = {}
        self.clock_file: Path | None = None
        if fake_clock and Path(FAKETIME_LIB).exists():  # processes started here see this offset (+0 until a jump)
            self.clock_file = work / "faketime"
            self.clock_file.write_text("+0\n")
            os.environ.update({"LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
                               "FAKETIME_CACHE_DURATION": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})

    # --- faults -----------------------------------------------------------------------------------------

    def signal_operator(self, sig: signal.Signals) -> None:
        assert self.operator is not None
        assert self.operator.proc is not None
        os.kill(self.operator.proc.pid, sig)

    def restart_operator(self) -> None:
        assert self.operator is not None
        if self.operator.proc is not None:
            self.operator.proc.wait()
        self.operator.start(timeout=60)

    def signal_kube(self, name: str, sig: signal.Signals) -> None:
        os.kill(self.kube.pids[name], sig)

    def restart_apiserver(self) -> None:
        proc = self.kube._procs["kube-apiserver"]
        args = list(proc.args)[1:]
        terminate(proc, grace=5.0)  # SIGTERM, then SIGKILL: it can ignore SIGTERM for longer (controlplane.py)
        time.sleep(3)  # the outage
        self.kube._spawn("kube-apiserver", args)
        self.kube._wait_ready()

    def fill_ledger(self) -> None:
        filler = self.sidecars[1].ledger / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 65536)

    def empty_ledger(self) -> None:
        (self.sidecars[1].ledger / "filler").unlink(missing_ok=True)

    def read_only_restart(self) -> None:
        """A read-only ledger cannot be had under a writer (remount says busy): the sidecar is killed, the
        ledger remounted read-only, and the sidecar started on it (a pod restarting onto a bad volume)."""
        sidecar = self.sidecars[1]
        sidecar.kill()
        subprocess.run(["mount", "-o", "remount,ro", str(sidecar.ledger)], check=True)
        try:
            sidecar.start(timeout=8)
            self.ro_started = True
        except AssertionError:
            self.ro_started = False

    def writable_again(self) -> None:
        sidecar = self.sidecars[1]
        sidecar.kill()
        subprocess.run(["mount", "-o", "remount,rw", str(sidecar.ledger)], check=True)
        sidecar.start()

    def log_count(self, text: str) -> int:
        log = self.work / f"sidecar-{self.sidecars[1].ip}.log"
        count = log.read_text(errors="replace").count(text) if log.exists() else 0
        seen, self.counts[text] = self.counts.get(text, 0), count
        return count - seen

    def jump_clock(self, seconds: int) -> None:
        """Every process of ours (sidecars, operator, upstream) runs under libfaketime reading this file."""
        if self.clock_file is None:
            raise RuntimeError("libfaketime is not installed (apt-get install faketime)")
        self.clock_file.write_text(f"+{seconds}\n")

    # --- the stack --------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[Chaos]:
        namespaces(self.kube, self.ns)
        upstream_proc, self.upstream = start_upstream(self.work)
        ledger = self.sidecars[1].ledger
        ledger.mkdir(parents=True, exist_ok=True)
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ledger)],
                                      check=False, capture_output=True).returncode == 0
        try:
            for s in self.sidecars:
                s.start()
                sidecar_pod(self.kube, self.ns, s.pod, s.ip, {"app": "chaos"})
            with operator_running(self.kube, self.work) as operator:
                self.operator = operator
                yield self
        finally:
            for s in self.sidecars:
                s.kill()
            kill(upstream_proc)
            if self.mounted:
                subprocess.run(["umount", "-l", str(ledger)], check=False)
            self.kube.kubectl("delete", "namespace", self.ns, "--ignore-not-found", "--wait=false", check=False)

    def budget(self, name: str) -> dict[str, Any]:
        ups = [{"name": "openai", "baseURL": self.upstream, "dialect": "OpenAI"},
               {"name": "anthropic", "baseURL": self.upstream, "dialect": "Anthropic"}]
        return {"apiVersion": names.API_VERSION, "kind": names.TOKENBUDGET_KIND,
                "metadata": {"name": name, "namespace": self.ns},
                "spec": {"selector": {"matchLabels": {"app": "chaos"}}, "timeZone": "UTC", "upstreams": ups,
                         "limits": [{"name": "calls", "period": "Hour", "requests": LIMIT},
                                    {"name": "counted", "duration": "6h", "requests": 10**9},
                                    {"name": "tokens", "duration": "6h", "tokens": 10**12}]}}

    def used(self, name: str) -> dict[str, int]:
        tb = json.loads(self.kube.kubectl("get", "tb", name, "-n", self.ns, "-o", "json").stdout)
        return {w["name"]: int(w["used"]) for w in (tb.get("status") or {}).get("windows") or []}

    def enforcing(self, key: str) -> bool:
        for s in self.sidecars:
            policy = http("GET", f"http://{s.ip}:{names.SIDECAR_ADMIN_PORT}/policy")
            leases = [lease for b in policy["budgets"] if f"{b['namespace']}/{b['name']}" == key
                      for lease in b.get("leases") or []]
            if not leases or not all(float(lease["granted"]) > 0 for lease in leases):
                return False
        return True

    # --- one cell ---------------------------------------------------------------------------------------

    def run(self, cell: Cell, fault_at: float, recover_after: float) -> Row:
        name = f"chaos-{cell.name}"
        for old in self.kube.kubectl("get", "tb", "-n", self.ns, "-o", "name").stdout.split():
            self.kube.kubectl("delete", old, "-n", self.ns, "--wait=true")
        self.kube.kubectl("apply", "-f", "-", input=json.dumps(self.budget(name)))
        wait_for(f"{name} on both sidecars", lambda: self.enforcing(f"{self.ns}/{name}"), timeout=30, interval=0.2)
        http("DELETE", f"{self.upstream}/_upstream/served", token=None)
        tally = Tally()
        traffic = threading.Thread(target=lambda: asyncio.run(self._traffic(tally, cell.headers)))
        traffic.start()
        time.sleep(fault_at)
        note = ""
        try:
            cell.fault(self)
            time.sleep(recover_after)
        except Exception as exc:  # the fault could not be injected: say so in the table
            note = f"fault not injected: {exc}"
        finally:
            try:
                cell.recover(self)
            except Exception as exc:
                note += f" recovery failed: {exc}"
        traffic.join(120)
        served = [r for r in http("GET", f"{self.upstream}/_upstream/served", token=None) if r["status"] == 200]
        counted = self._settled(name)
        calls = counted.get("counted", 0)  # rolling: spans a period boundary (and the clock jump)
        expected_tokens = sum(r["input_tokens"] + r["output_tokens"] for r in served if r["completed"])
        broken = sum(1 for r in served if not r["completed"])
        if not broken and counted.get("tokens") != expected_tokens:
            note += f" tokens {counted.get('tokens')} counted, {expected_tokens} served"
        if broken:
            note += f" {broken} cut streams (tokens estimated)"
        if tally.errors:
            note += f" {tally.errors} calls failed at the app"
        if counted.get("calls", 0) != calls:  # records on both sides of an Hour boundary (the clock jump)
            note += f" {counted.get('calls', 0)} of them in the status's current hour"
        if cell.evidence is not None:
            note += " " + cell.evidence(self)
        return Row(cell.name, len(served), tally.refused, max(0, len(served) - calls), max(0, calls - len(served)),
                   max(0, counted.get("calls", 0) - LIMIT), note.strip())

    def _settled(self, name: str, quiet_s: float = 6.0, limit_s: float = 90.0) -> dict[str, int]:
        """The status once it stopped changing for quiet_s (the operator pulls every 0.5 s)."""
        deadline = time.monotonic() + limit_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                now = self.used(name)
                if now != last:
                    last, since = now, time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return now
            time.sleep(0.5)
        return last or {}

    async def _traffic(self, tally: Tally, headers: dict[str, str] | None) -> None:
        async with aiohttp.ClientSession() as session:
            async def one(sidecar: SidecarProc) -> None:
                base = f"http://{sidecar.ip}:{names.SIDECAR_DATA_PORT}"
                for n in range(CALLS):
                    await call(session, base, n, tally, headers if headers and n % 3 == 1 else None, limit_s=20)
                    await asyncio.sleep(PACE_S)

            await asyncio.gather(*(one(s) for s in self.sidecars))


def _nothing(_: Chaos) -> None:
    return None


CELLS = [
    Cell("baseline", _nothing, _nothing),
    Cell("upstream-reset-mid-stream", _nothing, _nothing, {"x-upstream-fail": "reset-mid-stream"}),
    Cell("upstream-silent", _nothing, _nothing, {"x-upstream-fail": "stall-mid-stream"}),
    Cell("sidecar-sigkill", lambda c: c.sidecars[0].kill(), lambda c: c.sidecars[0].start()),
    Cell("operator-sigkill", lambda c: c.signal_operator(signal.SIGKILL), lambda c: c.restart_operator()),
    Cell("operator-sigstop", lambda c: c.signal_operator(signal.SIGSTOP),
         lambda c: c.signal_operator(signal.SIGCONT)),
    Cell("apiserver-restart", lambda c: c.restart_apiserver(), _nothing),
    Cell("etcd-stopped", lambda c: c.signal_kube("etcd", signal.SIGSTOP),
         lambda c: c.signal_kube("etcd", signal.SIGCONT)),
    Cell("ledger-disk-full", lambda c: c.fill_ledger(), lambda c: c.empty_ledger(),
         evidence=lambda c: f"(sidecar logged {c.log_count('No space left on device')} ENOSPC errors)"),
    Cell("ledger-read-only", lambda c: c.read_only_restart(), lambda c: c.writable_again(),
         evidence=lambda c: "(the sidecar " + ("started" if c.ro_started else "refused to start") +
         " on the read-only ledger)"),
    # Last: from here on, our processes' wall clocks run an hour ahead of the apiserver's (its Leases and
    # timestamps stay on real time), across the calendar Hour of the budget's `calls` limit.
    Cell("clock-jump-forward-1h", lambda c: c.jump_clock(3600), _nothing),
]


def table(rows: list[Row]) -> str:
    out = [f"{'cell':<28} {'calls':>5} {'refusals':>8} {'lost':>4} {'doubled':>7} {'overrun':>7}  note"]
    for r in rows:
        out.append(f"{r.cell:<28} {r.calls:>5} {r.refusals:>8} {r.lost:>4} {r.doubled:>7} {r.overrun:>7}  {r.note}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="*", help="cell names (default: all)")
    parser.add_argument("--fault-at", type=float, default=1.5, help="seconds into the traffic")
    parser.add_argument("--recover-after", type=float, default=3.0, help="seconds the fault lasts")
    args = parser.parse_args(argv)
    chosen = [c for c in CELLS if not args.cells or c.name in args.cells]
    if os.geteuid() != 0:
        chosen = [c for c in chosen if not c.name.startswith("ledger-")]
        print("not root: the ledger cells (tmpfs) are left out")
    if not Path(FAKETIME_LIB).exists():
        chosen = [c for c in chosen if not c.name.startswith("clock-")]
        print(f"no {FAKETIME_LIB} (Debian's faketime): the clock cell is left out")
    work = Path(tempfile.mkdtemp(prefix="tokenbudget-chaos-"))
    kube = ControlPlane(resolve_bin_dir(REPO))
    rows: list[Row] = []
    try:
        kube.start()
        kube.apply_crds(REPO / "crds")
        chaos = Chaos(kube, work)
        with chaos.running():
            for cell in chosen:
                try:
                    row = chaos.run(cell, args.fault_at, args.recover_after)
                except Exception as exc:  # a cell that cannot be measured is a failure, and the others still run
                    why = f"could not be measured: {type(exc).__name__}: {exc}"[:300]
                    row = Row(cell.name, -1, -1, -1, -1, -1, why)
                print(f"{row.cell}: calls {row.calls} refusals {row.refusals} lost {row.lost} doubled {row.doubled} "
                      f"overrun {row.overrun} {row.note}", flush=True)
                rows.append(row)
    finally:
        kube.stop()
    print(table(rows))
    bad = [r.cell for r in rows if not r.ok]
    print("chaos: " + (f"BROKEN in {', '.join(bad)}" if bad else "every invariant held"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
