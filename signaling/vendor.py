"""Third-party browser files the pages load (the socket.io client, ...),
shipped inside the package under signaling/web/static/vendor/ and served
at /static/vendor/<name>, never from a CDN.

Each file is committed with its licence and listed in vendor/manifest.json
(npm package, version, the file's path inside the package, its sha256,
its licence files). Committed rather than built when the wheel is built:
`pip wheel .` / `pip install` then need neither node nor the npm registry
(a build step would put npm on every installer's path and make the wheel
depend on the network at build time), and a reviewer sees every byte a
browser runs in the diff. npm stays a development tool: to add a file (or
update one after a package-lock change), add its entry to the manifest and
run `python -m signaling.vendor` after `npm ci` in signaling/web; it copies
the file and its licence and records version and sha256.
tests/test_vendor.py checks the manifest against the files, against
package-lock.json, and byte for byte against node_modules when present.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parent / "web"
VENDOR_DIR = WEB_DIR / "static" / "vendor"
MANIFEST = VENDOR_DIR / "manifest.json"
NODE_MODULES = WEB_DIR / "node_modules"
PACKAGE_LOCK = WEB_DIR / "package-lock.json"


@dataclass(frozen=True)
class VendorFile:
    """One committed third-party file: `name` under VENDOR_DIR (and
    /static/vendor/), copied from `source` inside npm package `package`
    at `version`; `licenses` are files under VENDOR_DIR."""

    name: str
    package: str
    version: str
    source: str
    sha256: str
    licenses: tuple[str, ...]

    @property
    def path(self) -> Path:
        return VENDOR_DIR / self.name

    def npm_path(self, node_modules: Path = NODE_MODULES) -> Path:
        return node_modules / self.package / self.source


def load_manifest(path: Path = MANIFEST) -> tuple[VendorFile, ...]:
    """The manifest's entries. Raises ValueError naming a malformed entry."""
    entries = json.loads(path.read_text(encoding="utf-8"))["files"]
    files = []
    for index, entry in enumerate(entries):
        try:
            files.append(VendorFile(
                name=str(entry["name"]), package=str(entry["package"]), version=str(entry.get("version", "")),
                source=str(entry["source"]), sha256=str(entry.get("sha256", "")),
                licenses=tuple(str(name) for name in entry.get("licenses", ())),
            ))
        except KeyError as exc:
            raise ValueError(f"{path}: files[{index}] has no {exc.args[0]!r}") from None
    return tuple(files)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def problems(files: tuple[VendorFile, ...]) -> list[str]:
    """What is wrong with the committed files (missing, altered, no licence);
    empty when every page's third-party file can be served."""
    found: list[str] = []
    for file in files:
        if not file.path.is_file():
            found.append(f"{file.name}: missing from {VENDOR_DIR}")
        elif sha256_of(file.path) != file.sha256:
            found.append(f"{file.name}: differs from the sha256 in {MANIFEST.name}")
        if not file.licenses:
            found.append(f"{file.name}: no licence listed")
        for licence in file.licenses:
            if not (VENDOR_DIR / licence).is_file():
                found.append(f"{file.name}: licence file {licence} missing")
    return found


def locked_version(package: str, lock: Path = PACKAGE_LOCK) -> str | None:
    """The version package-lock.json pins for `package`, if any."""
    packages = json.loads(lock.read_text(encoding="utf-8")).get("packages", {})
    entry = packages.get(f"node_modules/{package}")
    return None if entry is None else str(entry.get("version"))


def _licence_file(package_dir: Path) -> Path:
    """A package's licence file, whatever its case or extension (LICENSE,
    LICENSE.md, license). Raises FileNotFoundError naming the package."""
    for path in sorted(package_dir.iterdir()):
        if path.is_file() and path.name.upper().startswith(("LICENSE", "LICENCE")):
            return path
    raise FileNotFoundError(f"{package_dir}: no licence file")


def update(node_modules: Path = NODE_MODULES) -> list[str]:
    """Copy each manifest entry (and the licence of its package and of the
    packages listed after it in `licenses`) from node_modules, and record
    version and sha256. Returns what was updated. Development tool only."""
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    done: list[str] = []
    for entry in raw["files"]:
        package, source = entry["package"], entry["source"]
        origin = node_modules / package / source
        if not origin.is_file():
            raise FileNotFoundError(f"{origin}: run `npm ci` in {WEB_DIR} first")
        shutil.copyfile(origin, VENDOR_DIR / entry["name"])
        entry["version"] = json.loads((node_modules / package / "package.json").read_text())["version"]
        entry["sha256"] = sha256_of(VENDOR_DIR / entry["name"])
        for licence in entry.get("licenses", []):
            # named "<package>.LICENSE.txt" ('/' of a scope as '__')
            owner = licence.removesuffix(".LICENSE.txt").replace("__", "/")
            shutil.copyfile(_licence_file(node_modules / owner), VENDOR_DIR / licence)
        done.append(f"{entry['name']} <- {package}@{entry['version']}/{source}")
    MANIFEST.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return done


if __name__ == "__main__":
    for line in update():
        print(line)
    sys.exit(0)
