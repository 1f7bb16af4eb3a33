# Sourced by scripts/*.sh. Brings what the project needs, idempotently, without touching the system's
# Node: a Node >= 22 and pnpm 10 go into ./.tools when the machine lacks them, apt packages are
# installed only when a command is missing, and workspace dependencies come from the lockfile.
set -euo pipefail

SBX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SBX_TOOLS="$SBX_ROOT/.tools"
export PATH="$SBX_TOOLS/bin:$SBX_ROOT/node_modules/.bin:$PATH"
export TURBO_TELEMETRY_DISABLED=1 DO_NOT_TRACK=1

say() { printf '\033[1m[sbx]\033[0m %s\n' "$*" >&2; }

node_major() { node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

ensure_node() {
  if [ "$(node_major)" -ge 22 ]; then return; fi
  if ! command -v npm >/dev/null; then
    say "neither Node >= 22 nor npm is installed; install Node 22 or 24 and run this again"; exit 1
  fi
  say "Node $(node --version 2>/dev/null || echo none) is older than the Node 22 this project needs."
  say "Installing node@24 from the npm registry into ./.tools (your system Node stays as it is;"
  say "delete ./.tools to undo)."
  npm install --global --prefix "$SBX_TOOLS" --no-fund --no-audit --loglevel=error node@24 >&2
  hash -r
  if [ "$(node_major)" -lt 22 ]; then
    say "node@24 did not install a working binary into $SBX_TOOLS/bin; install Node 24 yourself"; exit 1
  fi
  say "using $(command -v node) ($(node --version))"
}

ensure_pnpm() {
  local want
  want="$(node -p 'require(process.argv[1]).packageManager.split("@")[1]' "$SBX_ROOT/package.json")"
  if [ "$(pnpm --version 2>/dev/null || true)" = "$want" ]; then return; fi
  # corepack's signature check fails on some machines, so pnpm comes from npm, pinned to packageManager.
  say "installing pnpm $want into ./.tools"
  npm install --global --prefix "$SBX_TOOLS" --no-fund --no-audit --loglevel=error "pnpm@$want" >&2
  hash -r
}

# Each line of scripts/apt-packages.txt: <command that proves it is installed> <Debian package>.
ensure_apt_packages() {
  local missing=() cmd pkg
  while read -r cmd pkg; do
    case "$cmd" in ''|'#'*) continue ;; esac
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -e "$cmd" ]; then missing+=("$pkg"); fi
  done <"$SBX_ROOT/scripts/apt-packages.txt"
  [ "${#missing[@]}" -eq 0 ] && return
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "missing Debian packages: ${missing[*]} (not root, so not installing; tests that need them will skip)"
      return
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    say "missing packages ${missing[*]} and no apt-get; tests that need them will skip"; return
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# The busybox fetch tests install Debian's busybox-static for both guest arches; apt can download a
# foreign arch's package only once dpkg knows that arch. Root only: a user without it gets the skip.
ensure_dpkg_architectures() {
  command -v dpkg >/dev/null && command -v apt-get >/dev/null || return 0
  local native missing=() arch sudo=""
  native="$(dpkg --print-architecture)"
  for arch in amd64 arm64; do
    if [ "$arch" != "$native" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then missing+=("$arch"); fi
  done
  [ "${#missing[@]}" -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "dpkg lacks the ${missing[*]} architecture (not root, so not adding it; the busybox ${missing[*]} fetch test will skip)"
      return
    fi
  fi
  say "adding dpkg architecture ${missing[*]} (for the busybox fetch tests) and updating apt lists"
  for arch in "${missing[@]}"; do $sudo dpkg --add-architecture "$arch"; done
  $sudo apt-get update -qq >&2
}

ensure_workspace() {
  cd "$SBX_ROOT"
  if [ -f pnpm-lock.yaml ] && [ "${CI:-}" = "true" ]; then
    pnpm install --frozen-lockfile --reporter=silent >&2
  else
    pnpm install --reporter=silent >&2
  fi
}

sbx_bootstrap() {
  ensure_node
  ensure_pnpm
  ensure_apt_packages
  ensure_dpkg_architectures
  ensure_workspace
}
