"""Complete an image's CycloneDX SBOM: the Debian packages of its root filesystem next to the Python ones.

cyclonedx-py (``environment``) lists the Python distributions installed in the image's venv; the OS layer
is read from the rootfs's own dpkg database (``var/lib/dpkg/status``), so the SBOM describes what is
installed, not what was asked for. Output order is sorted and nothing time- or random-based is added, so the
same image gives the same bytes.

    python scripts/sbom_debs.py PY_SBOM.json ROOTFS IMAGE_REF VERSION > SBOM.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote


def dpkg_packages(rootfs: Path) -> list[dict[str, str]]:
    """Installed packages (name, version, architecture, source) from dpkg's status file."""
    packages: list[dict[str, str]] = []
    for stanza in (rootfs / "var/lib/dpkg/status").read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages.append(fields)
    return sorted(packages, key=lambda p: p["Package"])


def deb_component(pkg: dict[str, str]) -> dict[str, Any]:
    name, version, arch = pkg["Package"], pkg["Version"], pkg.get("Architecture", "all")
    purl = f"pkg:deb/debian/{name}@{quote(version, safe='')}?arch={arch}&distro=debian-12"
    component: dict[str, Any] = {
        "type": "library" if name.startswith("lib") else "application",
        "bom-ref": purl,
        "name": name,
        "version": version,
        "purl": purl,
    }
    if "Source" in pkg:
        component["properties"] = [{"name": "debian:source", "value": pkg["Source"].split(" ")[0]}]
    return component


def main(argv: list[str]) -> None:
    py_sbom, rootfs, ref, version = argv[1], Path(argv[2]), argv[3], argv[4]
    bom: dict[str, Any] = json.loads(Path(py_sbom).read_text(encoding="utf-8"))
    components = bom.setdefault("components", [])
    components.extend(deb_component(p) for p in dpkg_packages(rootfs))
    components.sort(key=lambda c: (c.get("purl", ""), c.get("name", "")))
    metadata = bom.setdefault("metadata", {})
    metadata["component"] = {"type": "container", "bom-ref": ref, "name": ref, "version": version}
    json.dump(bom, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv)
