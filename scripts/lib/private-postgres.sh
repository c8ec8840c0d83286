# A private PostgreSQL cluster for development and tests, sourced by scripts/dev-server
# and scripts/test when nothing answers on the configured port.
#
#   GATEHOUSE_PG_PORT          the port a PostgreSQL is looked for on 127.0.0.1 (5432)
#   GATEHOUSE_PRIVATE_PG_DIR   the private cluster's data directory (.dev/postgres)
#
# The cluster is created once (initdb, trust authentication for user postgres, loopback
# only, no Unix socket), started on a free loopback port each time, and reused: what
# it holds survives a restart. initdb refuses to run as root, so under root the
# cluster belongs to the `postgres` system user and runs as that user.

# Whether something accepts TCP connections on 127.0.0.1:$1.
pg_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The directory holding initdb and pg_ctl: PATH, Debian/Ubuntu's versioned
# directories (newest first), Homebrew's.
private_pg_bindir() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r) \
           /opt/homebrew/opt/postgresql*/bin /usr/local/opt/postgresql*/bin \
           /opt/homebrew/bin /usr/local/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Installs Debian/Ubuntu's postgresql package when that is allowed (root, or sudo
# without a password); says what to do otherwise.
private_pg_install() {
  local sudo=""
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: no PostgreSQL answers on 127.0.0.1:${GATEHOUSE_PG_PORT:-5432} and no initdb/pg_ctl was found." >&2
    echo "Install PostgreSQL (e.g. 'brew install postgresql'), or set GATEHOUSE_DATABASE_URL." >&2
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    if sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "error: no PostgreSQL answers on 127.0.0.1:${GATEHOUSE_PG_PORT:-5432} and its programs are not installed." >&2
      echo "Install them with 'sudo apt-get install postgresql' (this script may not use sudo), or set GATEHOUSE_DATABASE_URL." >&2
      return 1
    fi
  fi
  echo "installing Debian's postgresql package for a private cluster"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# Runs a PostgreSQL program as the cluster's owner.
private_pg_run() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# A free loopback port.
private_pg_free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 12000))  # below the usual ephemeral range (32768-)
    if ! pg_answers "$port"; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# Starts (creating it the first time) the cluster in $1; sets PRIVATE_PG_DIR,
# PRIVATE_PG_PORT and PRIVATE_PG_BIN.
private_pg_start() {
  PRIVATE_PG_DIR="$(mkdir -p "$1" && cd "$1" && pwd)"
  PRIVATE_PG_BIN="$(private_pg_bindir)" || {
    private_pg_install || return 1
    PRIVATE_PG_BIN="$(private_pg_bindir)" || { echo "error: initdb still not found" >&2; return 1; }
  }
  if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
      echo "error: initdb refuses to run as root and there is no 'postgres' user to run it as; run this as a normal user" >&2
      return 1
    fi
    chown postgres: "$PRIVATE_PG_DIR"
    chmod 700 "$PRIVATE_PG_DIR"
    if ! runuser -u postgres -- test -w "$PRIVATE_PG_DIR"; then
      echo "error: running as root, the cluster runs as user postgres, who cannot reach $PRIVATE_PG_DIR (a parent directory is closed to it)" >&2
      return 1
    fi
  fi
  if [ ! -f "$PRIVATE_PG_DIR/PG_VERSION" ]; then
    echo "creating a private PostgreSQL cluster in $PRIVATE_PG_DIR"
    private_pg_run "$PRIVATE_PG_BIN/initdb" -D "$PRIVATE_PG_DIR" -U postgres --auth=trust \
      -E UTF8 --locale=C >"$PRIVATE_PG_DIR.initdb.log" 2>&1 || {
      cat "$PRIVATE_PG_DIR.initdb.log" >&2
      return 1
    }
  fi
  # A server left running by a run that was killed outright: stop it first, but only
  # when the pid in postmaster.pid really is a server of this directory (after a
  # reboot the file is stale and its pid may belong to anything, even another
  # PostgreSQL); a stale file is removed instead.
  if [ -f "$PRIVATE_PG_DIR/postmaster.pid" ]; then
    local pid
    pid="$(head -1 "$PRIVATE_PG_DIR/postmaster.pid")"
    if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$PRIVATE_PG_DIR" ]; then
      private_pg_run "$PRIVATE_PG_BIN/pg_ctl" -D "$PRIVATE_PG_DIR" -m fast -w stop >/dev/null
    else
      rm -f "$PRIVATE_PG_DIR/postmaster.pid"
    fi
  fi
  # A port found free can be taken by someone else before the server binds it:
  # another port then, a few times.
  local attempt
  for attempt in 1 2 3 4 5; do
    PRIVATE_PG_PORT="$(private_pg_free_port)"
    if private_pg_run "$PRIVATE_PG_BIN/pg_ctl" -D "$PRIVATE_PG_DIR" -l "$PRIVATE_PG_DIR/server.log" \
      -w -t 60 -o "-p $PRIVATE_PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" \
      start >/dev/null; then
      break
    fi
    if [ "$attempt" = 5 ] || ! tail -5 "$PRIVATE_PG_DIR/server.log" | grep -q 'could not bind\|could not create any TCP/IP sockets'; then
      tail -20 "$PRIVATE_PG_DIR/server.log" >&2
      PRIVATE_PG_PORT=""
      return 1
    fi
  done
  echo "private PostgreSQL: postgres://postgres@127.0.0.1:$PRIVATE_PG_PORT (data in $PRIVATE_PG_DIR)"
}

# Creates database $1 in the private cluster unless it exists.
private_pg_createdb() {
  local psql=(env PGCONNECT_TIMEOUT=10 "$PRIVATE_PG_BIN/psql" -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U postgres -d postgres)
  [ -x "$PRIVATE_PG_BIN/psql" ] || psql=(env PGCONNECT_TIMEOUT=10 psql -h 127.0.0.1 -p "$PRIVATE_PG_PORT" -U postgres -d postgres)
  "${psql[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1 \
    || "${psql[@]}" -qc "CREATE DATABASE \"$1\""
}

# Stops the private cluster if this shell started it.
private_pg_stop() {
  if [ -n "${PRIVATE_PG_PORT:-}" ]; then
    private_pg_run "$PRIVATE_PG_BIN/pg_ctl" -D "$PRIVATE_PG_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    echo "private PostgreSQL stopped"
    PRIVATE_PG_PORT=""
  fi
}
