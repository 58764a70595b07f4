"""Placeholder until the sidecar lands: `make demo` must work from day one."""

from __future__ import annotations


def main() -> None:
    print("tokenbudget: the demo arrives with the sidecar (issue 3). Run `make test` for the suite.")


if __name__ == "__main__":
    main()
