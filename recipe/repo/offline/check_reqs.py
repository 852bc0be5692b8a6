"""Check that every carried distribution's Requires-Dist (no extras) is met by what Python sees.

Usage: python3 recipe/repo/offline/check_reqs.py SITE [EXTRA_DIST ...]
Run with PYTHONPATH=SITE:<repo root> so SITE shadows site-packages, as in training. Checks every
distribution found in SITE plus the named extra ones. Prints one line per unmet requirement and
the versions actually seen for a few packages that matter; exits 1 if any requirement is unmet.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# torch: the machine's CUDA torch is used on purpose; wandb: only imported with trainer.logger=wandb;
# google-api-core: opencensus's, never imported on the training path (traced on CPU)
IGNORE = {"torch", "wandb", "google-api-core"}


def version_of(name: str) -> str | None:
    try:
        return metadata.version(name)  # first match on sys.path, i.e. what imports will see
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    site = Path(sys.argv[1])
    names = sorted(
        {metadata.Distribution.at(p).metadata["Name"] for p in site.glob("*.dist-info")} | set(sys.argv[2:])
    )
    bad = 0
    for name in names:
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) in IGNORE:
                continue
            have = version_of(req.name)
            if have is None or not req.specifier.contains(Version(have), prereleases=True):
                print(f"UNMET  {name} {version_of(name)} needs {spec}: have {have}")
                bad += 1
    seen = ", ".join(
        f"{n} {version_of(n)}"
        for n in ["torch", "transformers", "tokenizers", "huggingface_hub", "pyarrow", "pandas", "numpy",
                  "grpcio", "protobuf", "aiohttp", "fsspec", "packaging", "regex", "accelerate", "peft"]
    )
    print(f"check_reqs: {len(names)} distributions checked, {bad} unmet; seen: {seen}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
