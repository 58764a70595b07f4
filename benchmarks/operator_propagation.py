"""Operator figures: apply → enforcing propagation over many sidecars, and status lag after traffic.

Starts its own etcd + kube-apiserver (tests/controlplane.py), the test upstream, the operator as a real
process with its default intervals, and N sidecar apps in two "farm" processes (two cores: apps share
processes, but each sidecar listens on its own loopback address, 127.0.1.x, on the standard ports, and
every policy push and usage pull is real HTTP from the operator). Each sidecar has a Pod object whose
status.podIP points at it, as in the tests.

- propagation: patch a budget selecting `--sidecars` pods, then read from the farms when each sidecar
  applied a policy carrying the new generation (recorded inside the sidecar process at apply time, so no
  polling skews it); p50/p99 of (applied - patch sent).
- status lag: one chat completion through each of `--status-sidecars` sidecars, then poll the budget until
  status shows exactly what the upstream served; the lag is from the last response to that read.
- status patch rate: the operator's tokenbudget_operator_status_patches_total over the run, per budget.
- fleet percent staleness (issue 13): `--staleness-sidecars` sidecars (20) call steadily under one leased
  budget sized to reach about 60 % in `--staleness-seconds`; every 0.5 s each sidecar's GET /budgets percent
  is read beside the budget's status percent; p50/p99/max of |sidecar - status| in percentage points. Both
  lag what was spent (status by a usage round, a sidecar by a lease round plus its own calls since), so
  the figure is their disagreement, the thing a user comparing headers with `kubectl get tb` sees.

Prints figures; asserts nothing. Run: `.venv/bin/python benchmarks/operator_propagation.py [--sidecars 100]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))

NS = "bench-operator"
TOKEN = "bench-token"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def sidecar_ip(i: int) -> str:
    return f"127.0.1.{i + 1}"


# ----- the farm: many sidecar apps in one process --------------------------------------------------------


async def run_farm(ips: list[str], token_file: Path, control_port: int) -> None:
    from aiohttp import web

    from tokenbudget_api.policy import SidecarPolicy
    from tokenbudget_sidecar.app import create_admin_app, create_app, create_state
    from tokenbudget_sidecar.settings import Settings

    applied: dict[str, list[tuple[float, dict[str, int]]]] = {}
    runners: list[web.AppRunner] = []
    for ip in ips:
        settings = Settings(data_host=ip, admin_host=ip, admin_token_file=token_file, log_level="WARNING")
        state = create_state(settings)
        original = state.apply

        def apply(policy: SidecarPolicy, original: Any = original, ip: str = ip) -> None:
            original(policy)
            applied.setdefault(ip, []).append((time.time(), {b.key: b.generation for b in policy.budgets}))

        state.apply = apply  # type: ignore[method-assign]
        for app, port in ((create_app(settings, state), settings.data_port), (create_admin_app(state),
                                                                              settings.admin_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, ip, port).start()
            runners.append(runner)

    async def report(_: web.Request) -> web.Response:
        return web.json_response(applied)

    control = web.Application()
    control.router.add_get("/applied", report)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


# ----- the driver ----------------------------------------------------------------------------------------


def get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
        return json.loads(resp.read())


def wait_line(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{log.name}: no {needle!r} in {timeout} s")


def budget(name: str, selector: dict[str, str], tokens: int, upstream: str) -> dict[str, Any]:
    return {"apiVersion": "tokenbudget.io/v1alpha1", "kind": "TokenBudget", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"matchLabels": selector}, "timeZone": "UTC",
                     "limits": [{"name": "daily-tokens", "period": "Day", "tokens": tokens}],
                     "upstreams": [{"name": "openai", "baseURL": upstream, "dialect": "OpenAI"}]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecars", type=int, default=100, help="sidecars the propagation budget selects")
    parser.add_argument("--status-sidecars", type=int, default=200, help="sidecars sending traffic")
    parser.add_argument("--rounds", type=int, default=5, help="spec changes / traffic rounds")
    parser.add_argument("--staleness-sidecars", type=int, default=20, help="sidecars of the staleness budget")
    parser.add_argument("--staleness-seconds", type=float, default=30.0, help="length of the staleness run")
    args = parser.parse_args()

    from controlplane import ControlPlane, free_port, resolve_bin_dir
    from kubernetes import client, config
    from operator_harness import OperatorProcess

    from tokenbudget_api import names
    from tokenbudget_operator.injector import certs

    total = max(args.sidecars, args.status_sidecars)
    workdir = Path(tempfile.mkdtemp(prefix="tb-operator-bench-"))
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    procs: list[subprocess.Popen[bytes]] = []
    plane = ControlPlane(resolve_bin_dir(REPO_ROOT))
    operator = None
    try:
        plane.start()
        plane.apply_crds(REPO_ROOT / "crds")
        config.load_kube_config(str(plane.kubeconfig))  # type: ignore[no-untyped-call]
        core: Any = client.CoreV1Api()
        custom: Any = client.CustomObjectsApi()
        for ns in (NS, "tokenbudget-system"):
            core.create_namespace({"metadata": {"name": ns}})
        core.create_namespaced_secret(NS, {"metadata": {"name": names.ADMIN_TOKEN_SECRET},
                                           "stringData": {names.ADMIN_TOKEN_SECRET_KEY: TOKEN}})

        log = workdir / "upstream.log"
        with open(log, "ab") as out:
            procs.append(subprocess.Popen([sys.executable, "-m", "tokenbudget_testing.upstream", "--port", "0"],
                                          stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT))
        upstream = wait_line(log, "listening on ", procs[-1]).split("listening on ", 1)[1].strip()

        farms: list[int] = []
        ips = [sidecar_ip(i) for i in range(total)]
        for part in (ips[: total // 2], ips[total // 2 :]):
            port = free_port()
            farm_log = workdir / f"farm-{port}.log"
            with open(farm_log, "ab") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, __file__, "--farm", ",".join(part), str(token_file), str(port)],
                    stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
            wait_line(farm_log, "ready", procs[-1], timeout=120)
            farms.append(port)

        for i, ip in enumerate(ips):
            labels = {"app": "bench", **({"group": "prop"} if i < args.sidecars else {})}
            name = f"bench-{i:03d}"
            core.create_namespaced_pod(NS, {
                "metadata": {"name": name, "labels": labels},
                "spec": {"initContainers": [{"name": names.SIDECAR_CONTAINER, "image": "x", "restartPolicy": "Always"}],
                         "containers": [{"name": "app", "image": "x"}]}})
            core.patch_namespaced_pod_status(name, NS, {"status": {"phase": "Running", "podIP": ip,
                                                                   "podIPs": [{"ip": ip}]}})

        tls_dir = workdir / "tls"
        certs.write_material(certs.generate(["127.0.0.1"]), tls_dir)
        operator = OperatorProcess(plane, workdir, "operator", webhook_config_owner="Install",
                                   tls_source="SecretDir", tls_dir=str(tls_dir), log_level="WARNING")
        operator.start(timeout=60)

        def applied() -> dict[str, list[tuple[float, dict[str, int]]]]:
            out: dict[str, list[tuple[float, dict[str, int]]]] = {}
            for port in farms:
                out.update(get_json(f"http://127.0.0.1:{port}/applied"))
            return out

        def wait_generation(key: str, generation: int, who: list[str], timeout: float = 120) -> dict[str, float]:
            deadline = time.monotonic() + timeout
            while True:
                seen = applied()
                firsts = {ip: next((t for t, gens in seen.get(ip, []) if gens.get(key) == generation), None)
                          for ip in who}
                if all(v is not None for v in firsts.values()):
                    return {ip: float(v) for ip, v in firsts.items() if v is not None}
                if time.monotonic() > deadline:
                    missing = sum(v is None for v in firsts.values())
                    raise RuntimeError(f"{missing} sidecars never applied {key} generation {generation}")
                time.sleep(0.2)

        plural = names.TOKENBUDGET_PLURAL
        custom.create_namespaced_custom_object("tokenbudget.io", "v1alpha1", NS, plural,
                                               budget("status", {"app": "bench"}, 100_000_000, upstream))
        custom.create_namespaced_custom_object("tokenbudget.io", "v1alpha1", NS, plural,
                                               budget("prop", {"group": "prop"}, 50_000_000, upstream))
        prop_ips = ips[: args.sidecars]
        wait_generation(f"{NS}/prop", 1, prop_ips)
        wait_generation(f"{NS}/status", 1, ips[: args.status_sidecars])
        time.sleep(3)  # let the first lease rounds settle

        samples: list[float] = []
        for r in range(args.rounds):
            sent = time.time()
            custom.patch_namespaced_custom_object("tokenbudget.io", "v1alpha1", NS, plural, "prop",
                                                  {"spec": {"limits": [{"name": "daily-tokens", "period": "Day",
                                                                        "tokens": 50_000_000 + r + 1}]}})
            firsts = wait_generation(f"{NS}/prop", r + 2, prop_ips)
            samples += [t - sent for t in firsts.values()]
            time.sleep(1)

        patches_before = sum(operator.samples("tokenbudget_operator_status_patches_total").values())
        began = time.monotonic()
        lags: list[float] = []
        for _ in range(args.rounds):
            done = asyncio.run(traffic(ips[: args.status_sidecars]))
            served = get_json(f"{upstream}/_upstream/served")
            expected = str(sum(int(x["input_tokens"]) + int(x["output_tokens"]) for x in served if x["status"] == 200))
            while True:
                found = custom.get_namespaced_custom_object("tokenbudget.io", "v1alpha1", NS, plural, "status")
                windows = (found.get("status") or {}).get("windows") or []
                if windows and windows[0]["used"] == expected:
                    lags.append(time.time() - done)
                    break
                if time.time() - done > 60:
                    raise RuntimeError(f"status never showed {expected}: {windows}")
                time.sleep(0.1)
        elapsed = time.monotonic() - began
        patches = sum(operator.samples("tokenbudget_operator_status_patches_total").values()) - patches_before

        gaps, calls = staleness(custom, upstream, ips[: args.staleness_sidecars], args.staleness_seconds)

        print(f"\napply → enforcing, {args.sidecars} sidecars x {args.rounds} spec changes ({len(samples)} samples)")
        print(f"  p50 {percentile(samples, 50):.3f} s   p99 {percentile(samples, 99):.3f} s   "
              f"max {max(samples):.3f} s   mean {statistics.fmean(samples):.3f} s")
        print(f"status lag, {args.status_sidecars} sidecars x {args.rounds} traffic rounds "
              f"(default usage interval 5 s, status ≤ 1 per 2 s)")
        print(f"  p50 {percentile(lags, 50):.2f} s   max {max(lags):.2f} s   rounds {[round(x, 2) for x in lags]}")
        print(f"status patches: {patches:.0f} in {elapsed:.1f} s for 2 budgets = "
              f"{patches / 2 / elapsed * 2:.2f} per budget per 2 s")
        print(f"fleet percent staleness, {args.staleness_sidecars} sidecars, {calls} calls in "
              f"{args.staleness_seconds:.0f} s ({len(gaps)} samples): |sidecar percent - status percent| "
              f"p50 {percentile(gaps, 50):.0f}  p99 {percentile(gaps, 99):.0f}  max {max(gaps):.0f} points")
    finally:
        if operator is not None:
            operator.stop()
        for proc in procs:
            proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(5)
        plane.stop()


def staleness(custom: Any, upstream: str, ips: list[str], seconds: float) -> tuple[list[float], int]:
    """Steady calls through `ips` under one budget; samples of |sidecar percent - status percent|."""
    from tokenbudget_api import names

    plural = names.TOKENBUDGET_PLURAL
    per_call = 45  # about what one call below costs: 10 prompt + 20 output, settled; 1 call / 0.25 s per sidecar
    limit = int(len(ips) * seconds * 4 * per_call / 0.6)
    # It selects every bench pod (app=bench); only `ips` call, the others hold zero grants, as idle replicas do.
    custom.create_namespaced_custom_object("tokenbudget.io", "v1alpha1", NS, plural,
                                           budget("fleet", {"app": "bench"}, limit, upstream))
    time.sleep(6)  # its first push and lease round
    key = f"{NS}/fleet"
    stop = time.monotonic() + seconds
    gaps: list[float] = []

    async def drive() -> int:
        import aiohttp

        body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello there."}]}
        count = 0
        async with aiohttp.ClientSession() as session:

            async def caller(ip: str) -> None:
                nonlocal count
                while time.monotonic() < stop:
                    async with session.post(f"http://{ip}:8787/openai/v1/chat/completions", json=body) as resp:
                        await resp.read()
                        count += resp.status == 200
                    await asyncio.sleep(0.25)

            async def sampler() -> None:
                while time.monotonic() < stop:
                    await asyncio.sleep(0.5)
                    found = await asyncio.to_thread(custom.get_namespaced_custom_object, "tokenbudget.io", "v1alpha1",
                                                    NS, plural, "fleet")
                    windows = (found.get("status") or {}).get("windows") or []
                    if not windows:
                        continue
                    status_pct = windows[0]["percent"]
                    for ip in ips:
                        async with session.get(f"http://{ip}:8788/budgets",
                                               headers={"authorization": f"Bearer {TOKEN}"}) as resp:
                            report = await resp.json()
                        for b in report["budgets"]:
                            if b["name"] == key and b["windows"]:
                                gaps.append(abs(b["windows"][0]["percent"] - status_pct))

            await asyncio.gather(sampler(), *(caller(ip) for ip in ips))
        return count

    calls = asyncio.run(drive())
    return gaps, calls


async def traffic(ips: list[str]) -> float:
    """One chat completion through each sidecar (50 at a time); returns when the last answered (time.time())."""
    import aiohttp

    sem = asyncio.Semaphore(50)
    body = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello there."}]}
    async with aiohttp.ClientSession() as session:

        async def one(ip: str) -> None:
            async with sem, session.post(f"http://{ip}:8787/openai/v1/chat/completions", json=body) as resp:
                await resp.read()

        await asyncio.gather(*(one(ip) for ip in ips))
    return time.time()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--farm":
        asyncio.run(run_farm(sys.argv[2].split(","), Path(sys.argv[3]), int(sys.argv[4])))
    else:
        main()
