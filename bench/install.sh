#!/usr/bin/env bash
# Idempotent installs for the load-benchmark harness. Each step is skipped when
# its tool is already present; a failed peer install is reported, not fatal, so
# that the harness can still run the targets that did install.
#
# Usage: bench/install.sh [base|litellm|portkey|all]...
set -uo pipefail

BENCH_CACHE="${BENCH_CACHE:-$HOME/.cache/custos-bench}"
LITELLM_VERSION="${LITELLM_VERSION:-1.100.5}"
PORTKEY_VERSION="${PORTKEY_VERSION:-1.15.2}"
mkdir -p "$BENCH_CACHE"

log() { printf 'bench/install: %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    # Debian packages; `apt-get update` runs at most once per invocation and only
    # when something is missing.
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || return 1
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

install_base() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v wrk >/dev/null || missing+=(wrk)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} from Debian"
        apt_install "${missing[@]}" || { log "FAILED: apt-get install ${missing[*]}"; return 1; }
    fi
    # Debian's postinst would start the system nginx on :80 where services may
    # start; the harness never uses it, but say so if it is running.
    return 0
}

install_litellm() {
    local venv="$BENCH_CACHE/litellm-$LITELLM_VERSION"
    if [ -x "$venv/bin/litellm" ]; then return 0; fi
    log "installing litellm[proxy]==$LITELLM_VERSION into $venv (a few minutes)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { log "FAILED: python3 -m venv"; return 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION" \
        > "$BENCH_CACHE/litellm-install.log" 2>&1 \
        || { log "FAILED: pip install litellm[proxy]==$LITELLM_VERSION (see $BENCH_CACHE/litellm-install.log)"; rm -rf "$venv"; return 1; }
}

install_portkey() {
    local dir="$BENCH_CACHE/portkey-$PORTKEY_VERSION"
    if [ -f "$dir/node_modules/@portkey-ai/gateway/package.json" ]; then return 0; fi
    command -v npm >/dev/null || { log "FAILED: npm not found (Node 20 expected)"; return 1; }
    log "installing @portkey-ai/gateway@$PORTKEY_VERSION into $dir"
    mkdir -p "$dir"
    ( cd "$dir" || exit 1
      echo '{"private":true}' > package.json
      npm install --save-exact --no-audit --no-fund --silent "@portkey-ai/gateway@$PORTKEY_VERSION" ) \
        > "$BENCH_CACHE/portkey-install.log" 2>&1 \
        || { log "FAILED: npm install @portkey-ai/gateway@$PORTKEY_VERSION (see $BENCH_CACHE/portkey-install.log)"; return 1; }
}

status=0
[ "$#" -eq 0 ] && set -- base
for what in "$@"; do
    case "$what" in
        base) install_base || status=1 ;;
        litellm) install_litellm || status=1 ;;
        portkey) install_portkey || status=1 ;;
        all) install_base || status=1; install_litellm || status=1; install_portkey || status=1 ;;
        *) log "unknown component $what"; status=2 ;;
    esac
done
exit "$status"
