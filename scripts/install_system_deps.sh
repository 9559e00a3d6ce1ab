#!/usr/bin/env bash
# System packages the tests need beyond Python: Xvfb + Mesa (software OpenGL) and the xcb
# libraries Qt needs, for the napari tests; dicom3tools (dciodvfy) and Orthanc for the DICOM tests. Installed with apt-get when something is missing and
# this runs as root on a Debian/Ubuntu machine; otherwise it says what to install and goes on.
# Used by `make test` and `.ci/run`, so the README's test command works on a fresh machine.
set -euo pipefail

PACKAGES=(make xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 openssl
  libxkbcommon0 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1
  libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1
  dicom3tools orthanc orthanc-dicomweb)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  command -v Xvfb >/dev/null 2>&1 || echo "note: no Xvfb and no apt-get here: install Xvfb and Mesa's OpenGL for the napari tests." >&2
  exit 0
fi
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: missing system packages for the napari tests: sudo apt-get install ${missing[*]}" >&2
  exit 0
fi
echo "installing system packages for the tests: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
