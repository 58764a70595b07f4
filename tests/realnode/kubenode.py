"""A real Kubernetes node on this machine: containerd + runc + kubelet (+ kube-scheduler), CNI bridge networking.

Used by the real-node test tier with a control plane from ``tests/controlplane.py``. Everything lives in one
temporary directory and on one bridge this class makes; ``stop()`` undoes all of it (processes, containers,
mounts, network namespaces, CNI state, the bridge, the iptables chain, /kubepods cgroups, the sysctls a
kubelet changes) and is safe to call after a failed start. Host quirks and their answers: shared/realnode.md.

Pods reach the apiserver the way they do in a cluster: through the ``kubernetes`` Service's ClusterIP, which
one iptables DNAT rule (in our own chain, standing in for kube-proxy) sends to the apiserver on the bridge's
gateway address. Test traffic goes only to loopback and to addresses on this bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import yaml
from controlplane import ControlPlane, ControlPlaneError, _die_with_parent, free_port, terminate

REPO_ROOT = Path(__file__).resolve().parents[2]
BRIDGE = "tbnode0"
POD_SUBNET = "10.244.77.0/24"
GATEWAY = "10.244.77.1"
SERVICE_RANGE = "10.0.0.0/24"  # the control plane's --service-cluster-ip-range
CNI_NETWORK = "tokenbudget-realnode"
IPTABLES_CHAIN = "TOKENBUDGET-NODE"
IPTABLES_MASQ_CHAIN = "TOKENBUDGET-NODE-MASQ"  # hairpin: a pod reaching another pod through a Service ClusterIP
LOCK_FILE = Path("/run/lock/tokenbudget-realnode.lock")  # the standard place; the file itself stays
CGROUP_ROOT = Path("/sys/fs/cgroup")
# A kubelet changes these and never puts them back (shared/realnode.md).
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
HOST_PATHS_KUBELET_MAKES = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/var/log/pods"))
DEBIAN_TOOLS = {"containerd": "/usr/bin/containerd", "ctr": "/usr/bin/ctr", "runc": "/usr/sbin/runc",
                "iptables": "/usr/sbin/iptables", "ip": "/usr/sbin/ip", "bridge plugin": "/usr/lib/cni/bridge"}


class NodePlane(ControlPlane):
    """The test control plane, with the three apiserver flags pods on a real node need.

    - ServiceAccount admission on: pods get their token volume (the operator talks to the API in-cluster);
    - bound to all addresses: pods reach it through the bridge gateway (the kubeconfig still says 127.0.0.1);
    - ``--enable-aggregator-routing``: webhook Services resolve to endpoint (pod) IPs, as no kube-proxy runs.
    The controller manager publishes the serving certificate as ``kube-root-ca.crt`` for in-cluster clients.
    """

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name == "kube-apiserver":
            args = _without_option(args, "--disable-admission-plugins")
            args = [GATEWAY if a == "127.0.0.1" and args[i - 1] == "--advertise-address" else a
                    for i, a in enumerate(args)]
            args = ["0.0.0.0" if a == "127.0.0.1" and args[i - 1] == "--bind-address" else a
                    for i, a in enumerate(args)]
            args += ["--enable-aggregator-routing=true", "--kubelet-preferred-address-types=InternalIP"]
        elif name == "kube-controller-manager":
            args += ["--root-ca-file", str(self.cert_dir / "apiserver.crt")]
        return super()._spawn(name, args)

    @property
    def secure_port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def _without_option(args: list[str], option: str) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        else:
            out.append(arg)
    return out


def missing_prerequisites(bin_dir: Path) -> list[str]:
    """What this machine lacks for a real node (empty: go ahead)."""
    missing = [f"{name} ({path})" for name, path in DEBIAN_TOOLS.items() if not os.access(path, os.X_OK)]
    missing += [name for name in ("kubelet", "kube-scheduler", "kube-controller-manager")
                if not os.access(bin_dir / name, os.X_OK)]
    if os.geteuid() != 0:
        missing.append("root (kubelet, containerd and CNI need it)")
    return missing


def _clear_leftovers() -> bool:
    """With no kubelet running, a bridge or DNAT chain of ours is what a killed run left (CI starts after
    everything was ended): remove them. With a kubelet running they are another run's and stay; returns
    whether the bridge name is free."""
    if subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True, check=False).returncode == 0:
        return not Path(f"/sys/class/net/{BRIDGE}").exists()
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)
    for args in (["-D", "PREROUTING", "-i", BRIDGE, "-j", IPTABLES_CHAIN], ["-F", IPTABLES_CHAIN],
                 ["-X", IPTABLES_CHAIN], ["-D", "POSTROUTING", "-o", BRIDGE, "-j", IPTABLES_MASQ_CHAIN],
                 ["-F", IPTABLES_MASQ_CHAIN], ["-X", IPTABLES_MASQ_CHAIN]):
        subprocess.run(["iptables", "-t", "nat", *args], capture_output=True, check=False)
    return not Path(f"/sys/class/net/{BRIDGE}").exists()


@contextlib.contextmanager
def one_node_per_machine(timeout: float = 540.0) -> Iterator[None]:
    """Hold the machine-wide lock of the real-node tier: its bridge, cgroups and sysctls are the host's, so two
    runs (two worktrees, a CI clone) take turns instead of failing. A bridge still there once we hold the lock
    is a leftover of a run that was killed: cleared (_clear_leftovers)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)  # /run/lock exists on Debian; not everywhere
    with open(LOCK_FILE, "w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"another real-node run held {LOCK_FILE} for {timeout:.0f} s") from None
                time.sleep(2)
        try:
            if not _clear_leftovers():
                raise ControlPlaneError(f"bridge {BRIDGE} exists and a kubelet runs, with nobody holding {LOCK_FILE}")
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class RealNode:
    """containerd + kubelet + kube-scheduler against ``plane``; ``start()``, ``import_image()``, ``stop()``."""

    def __init__(self, plane: NodePlane, *, pause_ref: str) -> None:
        self.plane = plane
        self.pause_ref = pause_ref
        self.workdir = Path(tempfile.mkdtemp(prefix="tb-node-"))
        self.node_name = f"tb-node-{secrets.token_hex(3)}"
        self.sock = self.workdir / "containerd" / "containerd.sock"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._sysctls: dict[str, str] = {}
        self._preexisting_paths = {p for p in HOST_PATHS_KUBELET_MAKES if p.exists()}
        self._preexisting_netns = set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set()
        self._dnat: list[str] = []
        self._masq: list[str] = []
        self.startup_seconds: dict[str, float] = {}
        self._started_at = time.time()

    # -- start -----------------------------------------------------------------------------------------------

    def start(self) -> RealNode:
        try:
            for key in KUBELET_SYSCTLS:
                self._sysctls[key] = Path("/proc/sys", key).read_text().strip()
            self._bridge_and_dnat()
            began = time.monotonic()
            self._start_containerd()
            self.startup_seconds["containerd"] = time.monotonic() - began
            return self
        except BaseException:
            self.stop()
            raise

    def _run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise ControlPlaneError(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def _bridge_and_dnat(self) -> None:
        """Our bridge with the gateway address (the node IP), and ClusterIP 10.0.0.1:443 → the apiserver."""
        prefix = ipaddress.ip_network(POD_SUBNET).prefixlen
        self._run("ip", "link", "add", BRIDGE, "type", "bridge")
        self._run("ip", "addr", "add", f"{GATEWAY}/{prefix}", "dev", BRIDGE)
        self._run("ip", "link", "set", BRIDGE, "up")
        self._run("iptables", "-t", "nat", "-N", IPTABLES_CHAIN)
        self._dnat = ["PREROUTING", "-i", BRIDGE, "-j", IPTABLES_CHAIN]
        self._run("iptables", "-t", "nat", "-A", *self._dnat)
        self._run("iptables", "-t", "nat", "-A", IPTABLES_CHAIN, "-d", "10.0.0.1/32", "-p", "tcp", "--dport", "443",
                  "-j", "DNAT", "--to-destination", f"{GATEWAY}:{self.plane.secure_port}")
        # A pod sent to another pod by route_service() must see the answer come from where it sent: masquerade
        # it (as kube-proxy does), else the reply goes pod to pod over the bridge and is dropped.
        self._run("iptables", "-t", "nat", "-N", IPTABLES_MASQ_CHAIN)
        self._masq = ["POSTROUTING", "-o", BRIDGE, "-j", IPTABLES_MASQ_CHAIN]
        self._run("iptables", "-t", "nat", "-A", *self._masq)
        self._run("iptables", "-t", "nat", "-A", IPTABLES_MASQ_CHAIN, "-s", POD_SUBNET, "-d", POD_SUBNET,
                  "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")

    def route_service(self, cluster_ip: str, port: int, endpoint_ip: str, target_port: int) -> None:
        """Send a Service's ClusterIP:port to one endpoint, for pods on this node (the kube-proxy stand-in's one
        rule per Service); removed with the chain at stop()."""
        self._run("iptables", "-t", "nat", "-A", IPTABLES_CHAIN, "-d", f"{cluster_ip}/32", "-p", "tcp", "--dport",
                  str(port), "-j", "DNAT", "--to-destination", f"{endpoint_ip}:{target_port}")

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = self._logs[name] = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop
        # Killed with pytest if pytest dies (SIGKILL from the kernel); stop() is the normal way out.
        main_thread = threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=self.workdir, start_new_session=True,
                                preexec_fn=_die_with_parent if main_thread else None)
        self._procs[name] = proc
        return proc

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True)
        base.mkdir(exist_ok=True)
        (cni / "net.d" / "10-tokenbudget.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0",
            "name": CNI_NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 # Pods route the bridge subnet and the Service range (10.0.0.1: the apiserver, DNAT) and
                 # nothing else: no default route, so nothing leaves this machine.
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": GATEWAY}]],
                          "routes": [{"dst": SERVICE_RANGE, "gw": GATEWAY}], "dataDir": str(cni / "ipam")}},
            ],
        }))
        config = f"""version = 2
root = "{base / 'root'}"
state = "{base / 'state'}"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{base / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.pause_ref}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / 'net.d'}"
"""
        (base / "config.toml").write_text(config)
        proc = self._spawn("containerd", ["/usr/bin/containerd", "--config", str(base / "config.toml")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"containerd exited {proc.returncode}\n{self.log_tail()}")
            if self.sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"containerd not answering after 30 s\n{self.log_tail()}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run("ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args,
                         check=check, timeout=timeout)

    def import_image(self, archive: Path, ref: str) -> None:
        """Import an OCI archive and check ref arrived (without a ref name in it, ctr imports nothing, silently)."""
        out = self.ctr("images", "import", str(archive), timeout=300).stdout
        if ref not in self.ctr("images", "ls", "-q").stdout.split():
            raise ControlPlaneError(f"ctr import of {archive} did not make {ref}: {out}")

    def start_kubelet(self, timeout: float = 60.0) -> None:
        """kubelet + kube-scheduler; returns once the Node is Ready."""
        kdir = self.workdir / "kubelet"
        kdir.mkdir()
        # The kubelet bind-mounts its root dir onto itself (rshared) at start, while its pods-API and
        # podresources goroutines create sockets under it by a temp file and a rename; a rename whose two
        # path walks straddle that mount fails with EXDEV and the kubelet exits ("invalid cross-device
        # link", seen once in CI). Made rshared here first, the kubelet finds it shared and mounts nothing.
        root = kdir / "root"
        root.mkdir()
        self._run("mount", "--bind", str(root), str(root))
        self._run("mount", "--make-rshared", str(root))
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this host is cgroup v1 hybrid
            "cgroupDriver": "cgroupfs",  # containerd 1.6 cannot tell the kubelet its driver
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "address": GATEWAY,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(self.workdir / "pod-logs"),
            # kubectl logs/exec: the apiserver has no kubelet client certificate here; the server listens on
            # our bridge only.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
        }
        (kdir / "config.yaml").write_text(yaml.safe_dump(kubelet_config))
        began = time.monotonic()
        self._spawn("kubelet", [
            str(self.plane.bin_dir / "kubelet"),
            "--config", str(kdir / "config.yaml"),
            "--kubeconfig", str(self.plane.kubeconfig),
            "--root-dir", str(kdir / "root"),
            "--cert-dir", str(kdir / "pki"),
            "--volume-plugin-dir", str(kdir / "volume-plugins"),
            "--hostname-override", self.node_name,
            "--node-ip", GATEWAY,
            "--v", "1",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.plane.bin_dir / "kube-scheduler"),
            "--kubeconfig", str(self.plane.kubeconfig),
            "--leader-elect=false",
            "--bind-address", "127.0.0.1",
            "--secure-port", "0",
        ])  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited {proc.returncode}\n{self.log_tail()}")
            done = self.plane.kubectl("get", "node", self.node_name, "-o",
                                      "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
            if done.stdout.strip() == "True":
                self.startup_seconds["kubelet"] = time.monotonic() - began
                return
            time.sleep(0.3)
        raise ControlPlaneError(f"node {self.node_name} not Ready in {timeout:.0f} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"---- {path.name} ----\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- stop ------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Tear everything down, each step on its own so one failure does not leave the rest behind."""
        steps = [self._drain_pods, self._stop_processes, self._kill_our_shims, self._remove_runc_state,
                 self._unmount, self._remove_netns, self._remove_network, self._remove_cgroups,
                 self._restore_sysctls, self._remove_host_paths]
        errors = []
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(f"{step.__name__}: {exc!r}")
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        keep = os.environ.get("TOKENBUDGET_KEEP_NODE_DIR")  # for debugging: the logs survive the run
        if keep:
            for log_file in self.workdir.rglob("*.log"):
                with contextlib.suppress(OSError):
                    target = Path(keep) / self.workdir.name / log_file.relative_to(self.workdir)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log_file, target)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if errors:
            raise ControlPlaneError("node teardown: " + "; ".join(errors))

    def _drain_pods(self) -> None:
        """Let the kubelet stop every pod (CNI DEL, unmounts) while it still runs: force-delete them all."""
        if "kubelet" not in self._procs or self._procs["kubelet"].poll() is not None:
            return
        self.plane.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0", "--force",
                           "--wait=false", check=False, timeout=30)
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split()
            if not tasks:
                return
            time.sleep(0.5)

    def _stop_processes(self) -> None:
        for name in ("kube-scheduler", "kubelet"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                terminate(proc, grace=10.0)
        if "containerd" in self._procs and self._procs["containerd"].poll() is None:
            for task in self.ctr("tasks", "ls", "-q", check=False, timeout=10).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False, timeout=10)
                self.ctr("tasks", "delete", "-f", task, check=False, timeout=10)
        proc = self._procs.pop("containerd", None)
        if proc is not None:
            terminate(proc, grace=10.0)

    def _kill_our_shims(self) -> None:
        """containerd-shim-runc-v2 outlives containerd: find ours by the socket path on their command line."""
        needle = str(self.sock).encode()
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (pid_dir / "cmdline").read_bytes()
                if needle in cmdline and b"containerd-shim" in cmdline:
                    os.kill(int(pid_dir.name), signal.SIGKILL)

    def _remove_runc_state(self) -> None:
        """Containers whose shim died keep running under runc: delete those of our containerd by its root."""
        state = self.workdir / "containerd" / "state"
        root = Path("/run/containerd/runc/k8s.io")
        if not root.is_dir():
            return
        ours = {p.name for p in (state / "io.containerd.runtime.v2.task" / "k8s.io").glob("*")} if state.is_dir() \
            else set()
        for container_id in ours:
            self._run("runc", "--root", str(root), "delete", "--force", container_id, check=False, timeout=20)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty: another containerd's containers are never touched

    def _unmount(self) -> None:
        prefix = str(self.workdir) + "/"
        for _ in range(5):
            mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
            ours = sorted({m for m in mounts if m.startswith(prefix)}, key=len, reverse=True)
            if not ours:
                return
            for mount in ours:
                self._run("umount", "-l", mount, check=False)

    def _remove_netns(self) -> None:
        netns = Path("/run/netns")
        if not netns.is_dir():
            return
        for name in set(os.listdir(netns)) - self._preexisting_netns:
            if name.startswith("cni-"):
                self._run("ip", "netns", "delete", name, check=False)
        with contextlib.suppress(OSError):
            if not self._preexisting_netns:
                netns.rmdir()

    def _remove_network(self) -> None:
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            self._run("ip", "link", "delete", BRIDGE, check=False)
        if self._dnat:
            self._run("iptables", "-t", "nat", "-D", *self._dnat, check=False)
        self._run("iptables", "-t", "nat", "-F", IPTABLES_CHAIN, check=False)
        self._run("iptables", "-t", "nat", "-X", IPTABLES_CHAIN, check=False)
        if self._masq:
            self._run("iptables", "-t", "nat", "-D", *self._masq, check=False)
        self._run("iptables", "-t", "nat", "-F", IPTABLES_MASQ_CHAIN, check=False)
        self._run("iptables", "-t", "nat", "-X", IPTABLES_MASQ_CHAIN, check=False)
        for path in (Path("/var/lib/cni/networks") / CNI_NETWORK,):
            shutil.rmtree(path, ignore_errors=True)
        results = Path("/var/lib/cni/results")
        if results.is_dir():
            # Ours, and containerd's loopback results for our sandboxes (made after we started; one run at a
            # time, as the bridge name is checked first).
            for entry in [*results.glob(f"{CNI_NETWORK}-*"), *results.glob("cni-loopback-*")]:
                with contextlib.suppress(OSError):
                    if entry.name.startswith(CNI_NETWORK) or entry.stat().st_mtime >= self._started_at:
                        entry.unlink()
        for empty in (results, Path("/var/lib/cni/networks"), Path("/var/lib/cni")):
            with contextlib.suppress(OSError):
                empty.rmdir()

    def _remove_cgroups(self) -> None:
        """/kubepods in every hierarchy, deepest first (each holds no process once the pods are gone)."""
        for hierarchy in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []:
            top = hierarchy / "kubepods"
            if not top.is_dir():
                continue
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)

    def _remove_host_paths(self) -> None:
        for path in HOST_PATHS_KUBELET_MAKES:
            if path not in self._preexisting_paths:
                shutil.rmtree(path, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of ours is still on the machine (empty after a clean stop)."""
        found = [f"process {name}" for name, proc in self._procs.items() if proc.poll() is None]
        if Path(f"/sys/class/net/{BRIDGE}").exists():
            found.append(f"bridge {BRIDGE}")
        results = Path("/var/lib/cni/results")
        if results.is_dir() and any(e.stat().st_mtime >= self._started_at for e in results.iterdir()):
            found.append("CNI results in /var/lib/cni/results")
        if self.workdir.exists():
            found.append(f"directory {self.workdir}")
        if any(str(self.workdir) in line for line in Path("/proc/self/mounts").read_text().splitlines()):
            found.append("mounts under the node's directory")
        for hierarchy in [CGROUP_ROOT, *CGROUP_ROOT.iterdir()] if CGROUP_ROOT.is_dir() else []:
            if (hierarchy / "kubepods").is_dir():
                found.append(f"cgroup {hierarchy / 'kubepods'}")
        for key, value in self._sysctls.items():
            if Path("/proc/sys", key).read_text().strip() != value:
                found.append(f"sysctl {key}")
        return found


def _version() -> str:
    for line in (REPO_ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise RuntimeError("no version in pyproject.toml")


def image_ref(target: str) -> str:
    """The ref scripts/images.sh gives a target's image (and ctr imports it under)."""
    return f"localhost/tokenbudget-{target}:{os.environ.get('IMAGE_TAG', _version())}"


@dataclass
class Cluster:
    """What the tests get: the control plane, the node, helm and the image archives."""

    plane: NodePlane
    node: RealNode
    helm: Path
    images: dict[str, Path]

    def helm_run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.helm), "--kubeconfig", str(self.plane.kubeconfig), *args],
                              capture_output=True, text=True, check=False, timeout=timeout,
                              env={**os.environ, "HELM_CACHE_HOME": str(self.plane.workdir / "helm-cache"),
                                   "HELM_CONFIG_HOME": str(self.plane.workdir / "helm-config"),
                                   "HELM_DATA_HOME": str(self.plane.workdir / "helm-data")})
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}")
        return done


