"""The admin API against its own OpenAPI document (api/openapi/admin.yaml), by schemathesis, on a real
sidecar process (policy file, ledger, bearer token) on loopback.

Checks: no 5xx (`not_a_server_error`), statuses and content types the document lists, and answers that
match their schemas. Not checked: whether every request the document calls invalid is refused (ST201) and
every valid one accepted (ST202): the document cannot say everything the models check (a Throttle step
needs maxRequestsPerMinute; pydantic takes the number 5 where the document says a decimal string), and
tests/api holds the models to the CRDs and to a real apiserver instead.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sidecar_process import sidecar_process  # type: ignore[import-not-found]  # noqa: E402

from tokenbudget_api.policy import SidecarPolicy  # noqa: E402

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
TOKEN = "schemathesis-token"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=200, help="examples per operation and phase")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tokenbudget-schemathesis-"))
    (work / "token").write_text(TOKEN)
    env = {**os.environ, "TOKENBUDGET_ADMIN_TOKEN_FILE": str(work / "token"), "TOKENBUDGET_DRAIN_TIMEOUT_S": "0.1"}
    cli = Path(sys.executable).with_name("schemathesis")
    with sidecar_process(work, SidecarPolicy(), env=env, ledger_dir=work / "ledger") as sidecar:
        done = subprocess.run([str(cli), "run", str(REPO / "api" / "openapi" / "admin.yaml"), "--url", sidecar.admin,
                               "-H", f"Authorization: Bearer {TOKEN}", "--checks", CHECKS, "-n", str(args.examples),
                               "--seed", "18", "--report-dir", str(work / "report")], check=False)
        assert sidecar.proc.poll() is None, f"the sidecar died: {sidecar.log()[-2000:]}"
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
