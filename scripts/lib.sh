# Shared helpers of scripts/run.sh and scripts/test.sh: make sure protoc, Postgres (and for the
# tests Chromium) are there.
# Sourced, not run. Installs with apt-get (Debian) when something is missing.

log() { printf '[chatkpi] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else log "need root to run: $*"; return 1
  fi
}

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# tonic-prost-build needs protoc: Debian's protobuf-compiler (3.21).
ensure_protoc() {
  if [ -n "${PROTOC:-}" ] || command -v protoc >/dev/null 2>&1; then return 0; fi
  apt_install protobuf-compiler
}

# The dashboard test drives a real browser: Debian's chromium (or the binary $CHROMIUM names).
ensure_chromium() {
  if [ -n "${CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1; then return 0; fi
  apt_install chromium
}

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

# Without DATABASE_URL: a local PostgreSQL on 127.0.0.1:5432 (installed and started when
# missing), user postgres with password postgres, and database $1 created if missing.
# Exports DATABASE_URL. With DATABASE_URL set, uses it as is.
ensure_database() {
  local db="$1"
  if [ -n "${DATABASE_URL:-}" ]; then
    log "using DATABASE_URL from the environment"
    return 0
  fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  if ! command -v pg_isready >/dev/null 2>&1; then apt_install postgresql-client; fi
  if ! pg_ready; then
    local version
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$version main"; then
      log "creating PostgreSQL $version cluster"
      as_root pg_createcluster "$version" main >/dev/null
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
    pg_ready || { log "PostgreSQL did not start on 127.0.0.1:5432"; return 1; }
  fi
  export PGPASSWORD=postgres
  if ! psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    # Debian's default is password auth on TCP: give the postgres user a known password.
    log "setting a password for the local postgres user"
    as_root runuser -u postgres -- psql -qc "alter user postgres password 'postgres'" >/dev/null
  fi
  if [ "${RECREATE_DATABASE:-0}" = 1 ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)" >/dev/null
  fi
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select 1 from pg_database where datname = '$db'")" != 1 ]; then
    psql -h 127.0.0.1 -U postgres -d postgres -qc "create database \"$db\"" >/dev/null
  fi
  export DATABASE_URL="postgres://postgres:postgres@127.0.0.1:5432/$db"
  log "DATABASE_URL=$DATABASE_URL"
}

# buf (proto lint and breaking-change checks), from npm (@bufbuild/buf, a pinned version),
# installed under target/tools; node and npm come from Debian when missing. Sets BUF.
BUF_VERSION=1.75.0
ensure_buf() {
  local dir=target/tools/buf
  BUF=$dir/node_modules/.bin/buf
  if [ -x "$BUF" ] && [ "$("$BUF" --version)" = "$BUF_VERSION" ]; then return 0; fi
  command -v npm >/dev/null 2>&1 || apt_install npm
  log "installing @bufbuild/buf@$BUF_VERSION"
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "@bufbuild/buf@$BUF_VERSION" >/dev/null
}
