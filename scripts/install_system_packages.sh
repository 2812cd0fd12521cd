#!/usr/bin/env bash
# Debian packages the tests use: a real Prometheus (with promtool), headless Chromium with its
# driver, and nftables with iproute2 (the NAT test's network namespaces). Installs only what is
# missing; fails with a clear message where it cannot install.
set -euo pipefail
declare -A package_of=([prometheus]=prometheus [promtool]=prometheus [chromium]=chromium [chromedriver]=chromium-driver
                       [nft]=nftables [ip]=iproute2)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package_of[$tool]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# A screenshot of the health page needs a font, which chromium only recommends.
[[ " ${missing[*]} " == *" chromium "* ]] && missing+=(fonts-liberation)
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_system_packages: apt-get not found; install these yourself: $packages" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_system_packages: run as root, or install: $packages" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian packages: $packages"
$sudo apt-get update -qq
# shellcheck disable=SC2086 # one word per package
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $packages >/dev/null
