#!/usr/bin/env bash
# Install the AI coding-agent CLIs that policies/{claude,codex,gemini}*.toml run, with npm, under
# the fixed prefix those policies name:  /opt/cellkeep/agents  (bin/claude, bin/codex, bin/gemini).
#
# usage: scripts/install-agents.sh              install (or confirm) the pinned versions; root only
#        scripts/install-agents.sh --check      exit 0 if the pinned versions are installed, else 1
#        scripts/install-agents.sh --uninstall  remove the prefix (and /opt/cellkeep if left empty)
#
# Idempotent: when every package is already at its pinned version nothing is downloaded. The
# versions are pinned below (override one with e.g. CELLKEEP_CLAUDE_VERSION=2.1.400 to test a new
# release, then update the pin and the policies' review). The installed versions are printed and
# recorded in /opt/cellkeep/agents/VERSIONS.
#
# Supply chain: packages come from the npm registry configured on the host (npm's own TLS and
# integrity checks), installed with --ignore-scripts, so no package runs code at install time, with
# one reviewed exception: @anthropic-ai/claude-code's install.cjs, which only copies the native
# binary of the platform package (@anthropic-ai/claude-code-linux-x64) over bin/claude.exe. Everything
# is root-owned and not writable by others, so a cell (which may only read and execute the prefix)
# cannot modify the agents.
#
# Needs: node >= 20 and npm (Debian: /usr/bin/node). claude-code declares node >= 22, which only
# concerns its install script: the CLI itself is a native binary and never runs on this node.
set -euo pipefail

PREFIX=/opt/cellkeep/agents
CLAUDE_VERSION=${CELLKEEP_CLAUDE_VERSION:-2.1.332}
CODEX_VERSION=${CELLKEEP_CODEX_VERSION:-0.171.0}
GEMINI_VERSION=${CELLKEEP_GEMINI_VERSION:-0.61.0}
PACKAGES=(
  "@anthropic-ai/claude-code@$CLAUDE_VERSION"
  "@openai/codex@$CODEX_VERSION"
  "@google/gemini-cli@$GEMINI_VERSION"
)
MODULES=$PREFIX/lib/node_modules

say() { echo "install-agents: $*" >&2; }
die() { say "$*"; exit 1; }

# The version recorded in an installed package's package.json ("" if absent).
installed_version() {
  local pj=$MODULES/$1/package.json
  [[ -f $pj ]] || { echo ""; return; }
  node -e 'process.stdout.write(String(require(process.argv[1]).version || ""))' "$pj" 2>/dev/null || echo ""
}

# True when every package is at its pinned version and claude's native binary is in place.
all_installed() {
  local spec name want
  for spec in "${PACKAGES[@]}"; do
    name=${spec%@*}; want=${spec##*@}
    [[ $(installed_version "$name") == "$want" ]] || return 1
  done
  claude_is_native
}

# claude-code ships bin/claude.exe as a placeholder until its install script copies the platform
# binary over it; the real one is an ELF executable of ~400 MB.
claude_is_native() {
  local exe=$MODULES/@anthropic-ai/claude-code/bin/claude.exe
  [[ -x $exe ]] && [[ $(head -c 4 "$exe" | od -An -c | tr -d ' ') == 177ELF ]]
}

case ${1:-} in
  --check)
    if all_installed; then say "pinned versions present under $PREFIX"; exit 0; fi
    say "not installed (or not at the pinned versions) under $PREFIX"; exit 1 ;;
  --uninstall)
    [[ $(id -u) == 0 ]] || die "--uninstall must run as root"
    rm -rf "$PREFIX"
    rmdir /opt/cellkeep 2>/dev/null || true
    say "removed $PREFIX"; exit 0 ;;
  "") ;;
  *) die "unknown argument $1 (use --check or --uninstall)" ;;
esac

[[ $(id -u) == 0 ]] || die "must run as root (installs under $PREFIX)"
command -v node >/dev/null || die "node is not installed (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm is not installed"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "node $(node --version) is too old: gemini-cli needs node >= 20"

umask 022
t0=$SECONDS
if all_installed; then
  say "already installed at the pinned versions; nothing to download"
else
  mkdir -p "$PREFIX"
  chown root:root "$PREFIX"; chmod 0755 "$PREFIX"
  say "npm install -g --prefix $PREFIX ${PACKAGES[*]}"
  # --ignore-scripts: see the header. --no-fund/--no-audit: no extra registry round trips.
  npm install -g --prefix "$PREFIX" --ignore-scripts --no-fund --no-audit --loglevel=error \
    "${PACKAGES[@]}"
  # The one install script we allow: claude-code's copy of its native binary.
  (cd "$MODULES/@anthropic-ai/claude-code" && node install.cjs)
  claude_is_native || die "claude-code: the native binary was not installed (bin/claude.exe is still the placeholder)"
  say "npm install took $((SECONDS - t0)) s"
fi

# Nothing under the prefix may be writable by anyone but root.
chown -R root:root "$PREFIX"
chmod -R go-w "$PREFIX"

# Print and record what is installed. The CLIs write state into $HOME even for --version, so
# give them a throwaway HOME instead of root's.
scratch=$(mktemp -d); trap 'rm -rf "$scratch"' EXIT
versions=$PREFIX/VERSIONS
{
  echo "# written by scripts/install-agents.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); node $(node --version), npm $(npm --version)"
  for bin in claude codex gemini; do
    v=$(cd "$scratch" && HOME=$scratch timeout 120 "$PREFIX/bin/$bin" --version 2>/dev/null | tail -n 1) \
      || die "$PREFIX/bin/$bin --version failed"
    printf '%-7s %-45s %s\n' "$bin" "$(readlink -f "$PREFIX/bin/$bin")" "$v"
  done
} > "$versions.tmp"
mv "$versions.tmp" "$versions"
sed -n '2,$p' "$versions"
say "done in $((SECONDS - t0)) s; versions recorded in $versions"
