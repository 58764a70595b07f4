"""`make fuzz`: coverage-guided fuzzing (atheris + libFuzzer) of every target in targets.py.

Each target runs in a process of its own (libFuzzer fuzzes one function per process), instrumented for
coverage of tokenbudget's own modules only, starting from its seed corpus in fuzz/corpus/<target>/ (kept
small, in git) and a working corpus under $TOKENBUDGET_CACHE/fuzz/<target>/ that grows across runs (not in
git). Prints executions and corpus size per target; exits non-zero when a target crashed, hung
(`-timeout`) or outgrew its memory bound (`-rss_limit_mb`), leaving the reproducer in the working directory.

    python fuzz/run.py --seconds 60            # every target, a minute each
    python fuzz/run.py --seconds 5 usage admin # some targets
    python fuzz/run.py --reproduce FILE TARGET # run one input, with the traceback
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "corpus"
CACHE = Path(os.environ.get("TOKENBUDGET_CACHE", Path.home() / ".cache" / "tokenbudget")) / "fuzz"
TIMEOUT_S = 10  # one input taking longer is a hang
RSS_LIMIT_MB = 1536  # the process (tiktoken's encodings are ~100 MiB of it) past this is a leak or a blow-up
MAX_LEN = 16384


@dataclass
class Result:
    target: str
    returncode: int
    executions: int
    corpus: int
    seconds: float
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def _target_names() -> list[str]:
    sys.path.insert(0, str(HERE))
    import targets

    return list(targets.targets())


def fuzz_one(name: str, seconds: int, cache: Path) -> None:
    """In the child: instrument tokenbudget's modules, then hand the target to libFuzzer (never returns)."""
    import atheris

    with atheris.instrument_imports(include=["tokenbudget_sidecar", "tokenbudget_api"]):
        sys.path.insert(0, str(HERE))
        import targets
    target = targets.targets()[name]
    work = cache / name
    work.mkdir(parents=True, exist_ok=True)
    seeds = SEEDS / name
    args = [sys.argv[0], str(work), *([str(seeds)] if seeds.is_dir() else []),
            f"-max_total_time={seconds}", f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}",
            f"-max_len={MAX_LEN}", f"-artifact_prefix={work}/", "-print_final_stats=1"]
    atheris.Setup(args, target)
    atheris.Fuzz()


def run(name: str, seconds: int, cache: Path | None = None) -> Result:
    """One target in a child process; its libFuzzer output goes to a log beside the working corpus."""
    cache = cache or CACHE
    (cache / name).mkdir(parents=True, exist_ok=True)
    log = cache / f"{name}.log"
    began = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run([sys.executable, __file__, "--child", name, "--seconds", str(seconds),
                               "--cache", str(cache)],
                              stdout=out, stderr=subprocess.STDOUT, timeout=seconds + TIMEOUT_S + 120, check=False)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units: (\d+)", text)
    corpus = re.findall(r"corp: (\d+)/", text)  # libFuzzer's own count: the seeds it kept and what it added
    return Result(name, done.returncode, int(runs[-1]) if runs else 0, int(corpus[-1]) if corpus else 0,
                  time.monotonic() - began, log)


def report(results: list[Result]) -> str:
    lines = [f"{'target':<26} {'executions':>11} {'corpus':>7} {'seconds':>8}  result"]
    for r in results:
        verdict = "ok" if r.ok else f"FAILED (exit {r.returncode}; see {r.log})"
        lines.append(f"{r.target:<26} {r.executions:>11} {r.corpus:>7} {r.seconds:>8.1f}  {verdict}")
    return "\n".join(lines)


def reproduce(path: Path, name: str) -> None:
    sys.path.insert(0, str(HERE))
    import targets

    targets.targets()[name](path.read_bytes())
    print(f"{name}: {path} passes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", help="target names (default: all)")
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the working corpora grow")
    parser.add_argument("--reproduce", type=Path, help="run one input file through a target")
    args = parser.parse_args(argv)
    if args.child:
        sys.argv = [sys.argv[0]]
        fuzz_one(args.child, args.seconds, args.cache)
        return 0
    if args.reproduce:
        reproduce(args.reproduce, args.targets[0])
        return 0
    names = args.targets or _target_names()
    results = []
    for name in names:
        result = run(name, args.seconds, args.cache)
        print(f"{name}: {result.executions} executions, corpus {result.corpus}, "
              f"{'ok' if result.ok else 'FAILED'}", flush=True)
        results.append(result)
    print(report(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
