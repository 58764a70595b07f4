"""The five subcommands: parse-free glue from argparse's namespace to the modules that do the work.

The sidecar's admission code is imported inside `simulate` only, so status and report start without it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tokenbudget_cli import export as export_mod
from tokenbudget_cli import insights_cmd, prom_report, status_cmd, status_view, trace
from tokenbudget_cli import kube as kube_mod
from tokenbudget_cli import report as report_mod
from tokenbudget_cli.console import console
from tokenbudget_cli.kube import Kube, KubeError, Target


class UsageError(Exception):
    """Flags that do not go together."""


USER_ERRORS: tuple[type[Exception], ...] = (KubeError, UsageError, export_mod.ExportError, trace.TraceError,
                                            prom_report.PrometheusError, FileNotFoundError, OSError)


def _kube(args: argparse.Namespace) -> Kube:
    if getattr(args, "all_namespaces", False) and args.namespace:
        raise UsageError("-n and -A do not go together")
    return Kube(Target(kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace,
                       all_namespaces=getattr(args, "all_namespaces", False)))


def status(args: argparse.Namespace) -> int:
    kube = _kube(args)
    budgets = kube.budgets(args.name)
    # Pods are listed only where a budget's status (an older operator's) does not count those without sidecar.
    pods = {ns: kube.pods(ns) for ns in sorted({kube_mod.namespace_of(b) for b in budgets
                                                if status_view.needs_pods(b)})}
    doc = status_view.document(budgets, kube.tiers(args.name), pods)
    if args.name and not doc.budgets and not doc.think_tiers:
        raise UsageError(f"no TokenBudget or ThinkTier named {args.name} in namespace {kube.namespace}")
    if args.output == "json":
        sys.stdout.write(status_cmd.as_json(doc) + "\n")
    elif args.output == "yaml":
        sys.stdout.write(status_cmd.as_yaml(doc))
    else:
        status_cmd.render(doc, console())
    return 0


def insights(args: argparse.Namespace) -> int:
    kube = _kube(args)
    budgets = kube.budgets(args.name)
    if args.name and not budgets:
        raise UsageError(f"no TokenBudget named {args.name} in namespace {kube.namespace}")
    doc = insights_cmd.document(budgets)
    if args.output == "json":
        sys.stdout.write(insights_cmd.as_json(doc) + "\n")
    else:
        insights_cmd.render(doc, console())
    return 0


def report(args: argparse.Namespace) -> int:
    by, fmt = report_mod.By(args.by), report_mod.Format(args.format)
    if args.prometheus_url:
        now = dt.datetime.now(dt.UTC)
        until = prom_report.parse_time(args.until, now, now)
        since = prom_report.parse_time(args.since, now, until - dt.timedelta(days=1))
        if since >= until:
            raise UsageError(f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})")
        found = prom_report.rows(prom_report.Prometheus(args.prometheus_url), by, since, until)
        report_mod.render(found, by, fmt, console(), source="prometheus", note=prom_report.note(by, since, until))
        return 0
    if args.since or args.until:
        raise UsageError("--since/--until need spend history: give --prometheus-url")
    report_mod.render(report_mod.rows(_kube(args).budgets(), by), by, fmt, console())
    return 0


def export(args: argparse.Namespace) -> int:
    token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else None
    if args.admin_url:
        url = args.admin_url
    else:
        if not args.pod:
            raise UsageError("name a pod, or give --admin-url")
        kube = _kube(args)
        url = export_mod.admin_url_for(kube.pod_ip(args.pod), args.admin_port)
        token = token or kube.admin_token()
    records = export_mod.records(url, token, after=args.after)
    if args.out:
        with args.out.open("w", encoding="utf-8") as f:
            count = trace.write(records, f)
        console(sys.stderr).print(f"{count} usage records written to {args.out}", highlight=False)
    else:
        trace.write(records, sys.stdout)
    return 0


def simulate(args: argparse.Namespace) -> int:
    from tokenbudget_cli import simulate_report, thinking_sim
    from tokenbudget_cli.simulate import BudgetFileError, Simulation, load_budgets

    try:
        budgets = load_budgets(args.filename)
        tiers = thinking_sim.load_tiers(args.filename)
    except (BudgetFileError, ValueError) as exc:
        raise UsageError(f"{args.filename}: {exc}") from exc
    if not budgets and not tiers:
        raise UsageError(f"{args.filename}: no TokenBudget or ThinkTier in it")
    records = trace.read(args.trace)
    err = console(sys.stderr)
    show = not args.no_progress and sys.stderr.isatty()
    with Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("calls"),
                  TimeRemainingColumn(), console=err, transient=True, disable=not show) as bar:
        task = bar.add_task("replay", total=len(records))
        result = Simulation(budgets).run(records, progress=lambda n: bar.update(task, completed=n))
    summary = simulate_report.summarize(result)
    summary.thinking = {f"{kube_mod.namespace_of(t) or 'default'}/{kube_mod.name_of(t)}":
                        thinking_sim.calibrate(t, records) for t in tiers}
    if args.output == "json":
        sys.stdout.write(simulate_report.as_json(summary) + "\n")
        return 0
    out = console()
    names = ", ".join([f"{b.metadata.get('namespace', 'default')}/{b.metadata.get('name')} "
                       f"({b.spec.enforcement.value})" for b in budgets]
                      + [f"ThinkTier {kube_mod.name_of(t)}" for t in tiers])
    out.print(f"Replayed {summary.trace.calls:,} calls of {args.trace} against {names}\n", highlight=False)
    if budgets:
        simulate_report.render(summary, out)
    simulate_report.render_thinking(summary, out)
    return 0
