"""`kubectl tokenbudget` (the console script `kubectl-tokenbudget`, which kubectl finds on PATH as a plugin).

Subcommands: status, insights, report, export, simulate. The kubeconfig flags are kubectl's own (`--kubeconfig`,
`--context`, `-n/--namespace`, `-A/--all-namespaces`), because kubectl passes a plugin its arguments
unparsed. Errors a person can act on are printed in one line with exit code 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tokenbudget_api import names
from tokenbudget_cli.console import console


def _kube_flags(p: argparse.ArgumentParser, all_namespaces: bool = True) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context to use")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")
    if all_namespaces:
        p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kubectl tokenbudget", description="Read and try TokenBudgets and "
                                  "ThinkTiers: status, chargeback reports, usage export, trace replay.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("status", help="each budget's windows, stage, pods, top consumers; ThinkTier classes")
    _kube_flags(p)
    p.add_argument("name", nargs="?", help="one TokenBudget (and ThinkTier) of that name")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    p = sub.add_parser("insights", help="waste per budget with dollars, worst first: repeated context, cache "
                       "misses, retries, tool output, prompt growth, dollars per accepted outcome")
    _kube_flags(p)
    p.add_argument("name", nargs="?", help="one TokenBudget")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")

    p = sub.add_parser("report", help="spend by namespace, budget, model, user or pod")
    _kube_flags(p)
    p.add_argument("--by", choices=["namespace", "budget", "model", "user", "pod"], default="namespace")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--prometheus-url", help="history from the operator's spend counters in Prometheus, e.g. "
                   "http://prometheus.monitoring:9090; without it, the current periods from status")
    p.add_argument("--since", help="start of the range: RFC 3339, a date or an age such as 7d (default: 1 day "
                   "before --until; needs --prometheus-url)")
    p.add_argument("--until", help="end of the range, as --since (default: now; needs --prometheus-url)")

    p = sub.add_parser("export", help="a pod's unacknowledged usage records as a trace (JSON lines)")
    _kube_flags(p, all_namespaces=False)
    p.add_argument("pod", nargs="?", help="pod whose sidecar to read (its IP, port 8788)")
    p.add_argument("--admin-url", help="the sidecar admin API instead of the pod IP, e.g. after port-forward")
    p.add_argument("--token-file", type=Path, help="bearer token file (default: the namespace's Secret "
                   "tokenbudget-sidecar-admin)")
    p.add_argument("--admin-port", type=int, default=names.SIDECAR_ADMIN_PORT,
                   help="the sidecar admin port on the pod IP")
    p.add_argument("--after", type=int, default=0, help="only records after this sequence number")
    p.add_argument("--out", type=Path, help="file to write (default: stdout)")

    p = sub.add_parser("simulate", help="replay a trace through the sidecar's admission code")
    p.add_argument("-f", "--filename", type=Path, required=True, help="TokenBudget YAML (several documents: "
                   "every budget applies, as on a pod they all select)")
    p.add_argument("--trace", type=Path, required=True, help="usage records, one JSON per line (see README)")
    p.add_argument("-o", "--output", choices=["table", "json"], default="table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows on a terminal only)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from tokenbudget_cli import commands

    try:
        return int(getattr(commands, args.command)(args))
    except commands.USER_ERRORS as exc:
        console(sys.stderr).print(f"error: {exc}", markup=False, highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
