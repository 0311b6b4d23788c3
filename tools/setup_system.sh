#!/usr/bin/env bash
# Makes sure the system libraries FFCV compiles against are present (it ships as an sdist only).
# As root on Debian/Ubuntu it installs them with apt; otherwise it stops and says what to install.
set -euo pipefail

have() { pkg-config --exists "$1" 2>/dev/null; }
missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if command -v pkg-config >/dev/null 2>&1; then
    have libturbojpeg || missing+=(libturbojpeg0-dev)
    { have opencv4 || have opencv; } || missing+=(libopencv-dev)
else
    missing+=(libturbojpeg0-dev libopencv-dev)
fi
command -v cc >/dev/null 2>&1 || missing+=(build-essential)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "fastlt: installing system packages for FFCV: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    exit 0
fi

cat >&2 <<MSG
fastlt: FFCV builds from source and needs these system packages, which are missing:
    ${missing[*]}
Install them, then run make again:
    Debian/Ubuntu:  sudo apt-get install ${missing[*]}
    conda:          conda install -c conda-forge pkg-config libjpeg-turbo opencv compilers
                    (then export PKG_CONFIG_PATH=\$CONDA_PREFIX/lib/pkgconfig)
MSG
exit 1
