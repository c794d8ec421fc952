"""Make the published asv dashboard work offline: fetch its JavaScript/CSS from npm.

asv's ``index.html`` loads jQuery, flot, bootstrap and a few plugins from CDNs.
On a machine without internet (this project's, and CI's) the page then shows
only an error. This script fetches the same libraries with ``npm pack`` (the
npm registry is reachable here), puts them in ``<html_dir>/vendor/`` and points
every published page at them (without the CDN files' integrity hashes).
Usage: ``python tools/vendor_dashboard.py [.asv/html]``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# CDN address -> (npm package, file inside it). stupidtable 1.0.1 is not on npm; 1.1.3 is
# its API-compatible successor.
ASSETS = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": (
        "flot@0.8.3",
        "jquery.flot.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": (
        "flot@0.8.3",
        "jquery.flot.time.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": (
        "flot@0.8.3",
        "jquery.flot.selection.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "flot@0.8.3",
        "jquery.flot.categories.js",
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": (
        "flot-orderbars@1.0.0",
        "js/jquery.flot.orderBars.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": (
        "stupid-table-plugin@1.1.3",
        "stupidtable.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": (
        "blueimp-md5@2.19.0",
        "js/md5.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": (
        "bootstrap@3.1.1",
        "dist/js/bootstrap.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": (
        "bootstrap@3.1.1",
        "dist/css/bootstrap.min.css",
    ),
}


def fetch(package: str, member: str, target: Path, work: Path) -> None:
    """Extract ``member`` of npm ``package`` to ``target``."""
    tarball = work / (package.replace("@", "-") + ".tgz")
    if not tarball.exists():
        name = subprocess.run(
            ["npm", "pack", "--silent", package], cwd=work, check=True, capture_output=True,
            text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        (work / name).rename(tarball)
    with tarfile.open(tarball) as archive:
        data = archive.extractfile(f"package/{member}")
        assert data is not None, f"{member} missing from {package}"
        target.write_bytes(data.read())


def main(html_dir: str = ".asv/html") -> int:
    """Vendor the dashboard's assets into ``html_dir``; returns the exit status."""
    root = Path(html_dir)
    vendor = root / "vendor"
    vendor.mkdir(exist_ok=True)
    local = {}
    with tempfile.TemporaryDirectory() as work:
        for url, (package, member) in ASSETS.items():
            name = f"{package.split('@')[0]}-{Path(member).name}"
            fetch(package, member, vendor / name, Path(work))
            local[url] = f"vendor/{name}"
    pattern = re.compile("|".join(re.escape(url) for url in ASSETS))
    # The pages pin the CDN files' hashes (subresource integrity); the npm builds of flot
    # are the unminified sources, so the hashes go with the addresses.
    integrity = re.compile(r'(\s(?:src|href)="vendor/[^"]+")\s+integrity="[^"]*"')
    for page in root.glob("*.html"):
        text = pattern.sub(lambda match: local[match.group(0)], page.read_text())
        page.write_text(integrity.sub(r"\1", text))
    print(f"vendored {len(ASSETS)} assets into {vendor}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
