#!/usr/bin/env bash
# Installs what the node and its tests need on a fresh Debian machine with Python 3.11:
# Debian tools (DCMTK as scanner/workstation peer; extra packages as arguments) and a
# virtual environment in .venv with torch 2.13.0 (CPU build) and this project.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# dcmtk: scanner/workstation peers; dicom3tools: object validators; orthanc (+ DICOMweb) and
# chromium: the PACS and the browser of the viewer test; openssl: test certificates for TLS;
# postgresql: the shared index's database (the tests start their own server, tests/postgres.py)
debs=(dcmtk dicom3tools orthanc orthanc-dicomweb chromium openssl postgresql "$@")
command -v npm >/dev/null 2>&1 || debs+=(npm)
missing=()
for pkg in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -q
    # Debian's orthanc package starts a system service; keep package installs from
    # starting daemons (tests start their own servers on free loopback ports).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python

# torch first, pinned to the CPU build: with 2.13.0 present, the project's range is
# satisfied and pip pulls no other (CUDA) build.
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    wheel=$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1 || true)
    if [ -n "$wheel" ]; then
        "$VPY" -m pip install -q "$wheel"
    else
        "$VPY" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
"$VPY" -c "import torch, sys; sys.exit('torch is a CUDA build' if torch.version.cuda else 0)"

# OHIF viewer (prebuilt dist of the npm package) for the viewer test
OHIF_VERSION=3.13.2
if [ ! -f .cache/ohif/package/dist/index.html ]; then
    mkdir -p .cache/ohif
    (cd .cache/ohif && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
        && tar xzf "ohif-app-$OHIF_VERSION.tgz" && rm -f "ohif-app-$OHIF_VERSION.tgz")
fi

stamp=.venv/.project-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
    "$VPY" -m pip install -q -e ".[test]"
    touch "$stamp"
fi
