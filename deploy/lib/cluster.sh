# shellcheck shell=bash
# deploy/lib/cluster.sh: shell functions shared by deploy/dev/up, deploy/dev/down
# and tests/run. Source it from bash; it defines functions only (prefix cl_)
# and changes no shell options.
#
# Everything started here listens on 127.0.0.1 (plus a private unix socket
# directory for PostgreSQL) and is stopped by its recorded pid only.
#
#   PostgreSQL   cl_pg_bindir, cl_pg_pick_base, cl_pg_init, cl_pg_start,
#                cl_pg_wait, cl_pg_pid, cl_pg_stop
#   Redis        cl_redis_start, cl_redis_wait, cl_redis_stop
#   processes    cl_pid_alive, cl_pidfile_pid, cl_stop_pid, cl_stop_pidfile,
#                cl_wait_pid_exit
#   ports, HTTP  cl_free_ports, cl_port_free, cl_http_wait
#   dev cluster  cl_dev_dir

cl_log() { printf '%s\n' "$*" >&2; }
cl_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- dev cluster

# cl_dev_dir ROOT: prints the state directory of deploy/dev/up and down:
# $CP_DEV_DIR made absolute (relative to the current directory), or
# ROOT/.dev when it is unset or empty. Refuses / (down --purge deletes it).
cl_dev_dir() {
        local root=$1 d=${CP_DEV_DIR:-}
        [ -n "$d" ] || d=$root/.dev
        case $d in /*) ;; *) d=$PWD/$d ;; esac
        while [[ $d == */ || $d == */. ]]; do d=${d%/}; d=${d%/.}; done
        if [ -z "$d" ] || [[ $d == */.. ]] || [[ $d == */../* ]]; then
                cl_log "CP_DEV_DIR=${CP_DEV_DIR:-} is not a usable directory (no /, no ..)"
                return 1
        fi
        printf '%s\n' "$d"
}

# ---------------------------------------------------------------- processes

# cl_pid_alive PID [PATTERN]: true when PID is a live process (not a zombie)
# and, if PATTERN is given, its command line contains PATTERN.
cl_pid_alive() {
        local pid=$1 pat=${2:-} state cmd
        [[ $pid =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] || return 1
        [ -r "/proc/$pid/stat" ] || return 1
        state=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null) || return 1
        [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
        if [ -n "$pat" ]; then
                cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
                [[ $cmd == *"$pat"* ]] || return 1
        fi
        return 0
}

# cl_pidfile_pid FILE [PATTERN]: prints the pid recorded in FILE (first line)
# and succeeds when that process is alive (see cl_pid_alive).
cl_pidfile_pid() {
        local file=$1 pat=${2:-} pid
        [ -s "$file" ] || return 1
        pid=$(head -n1 "$file" 2>/dev/null | tr -d '[:space:]')
        cl_pid_alive "$pid" "$pat" || return 1
        printf '%s\n' "$pid"
}

# cl_wait_pid_exit PID TIMEOUT_SECONDS: waits until PID is gone (or a zombie).
cl_wait_pid_exit() {
        local pid=$1 timeout=${2:-30} i
        for ((i = 0; i < timeout * 10; i++)); do
                cl_pid_alive "$pid" || return 0
                sleep 0.1
        done
        ! cl_pid_alive "$pid"
}

# cl_stop_pid PID [PATTERN] [TIMEOUT] [SIGNAL]: sends SIGNAL (TERM) to exactly
# PID (if alive and matching PATTERN), waits TIMEOUT (30) seconds, then KILLs it.
cl_stop_pid() {
        local pid=$1 pat=${2:-} timeout=${3:-30} sig=${4:-TERM}
        cl_pid_alive "$pid" "$pat" || return 0
        kill "-$sig" "$pid" 2>/dev/null || true
        cl_wait_pid_exit "$pid" "$timeout" && return 0
        cl_log "pid $pid did not exit within ${timeout}s after SIG$sig; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        cl_wait_pid_exit "$pid" 10
}

# cl_stop_pidfile FILE [PATTERN] [TIMEOUT] [SIGNAL]: stops the process recorded
# in FILE (cl_stop_pid) and removes FILE.
cl_stop_pidfile() {
        local file=$1 pat=${2:-} timeout=${3:-30} sig=${4:-TERM} pid
        if pid=$(cl_pidfile_pid "$file" "$pat"); then
                cl_stop_pid "$pid" "$pat" "$timeout" "$sig" || return 1
        fi
        rm -f "$file"
}

# ---------------------------------------------------------------- ports

# cl_free_ports N: prints N distinct TCP ports free on 127.0.0.1, one a line.
# Ports come from below the kernel's ephemeral range (so outgoing connections
# will not grab them later) when there is room, else from the kernel.
cl_free_ports() {
        python3 - "${1:-1}" <<'EOF'
import random, socket, sys
n = int(sys.argv[1])
try:
    lo, hi = map(int, open('/proc/sys/net/ipv4/ip_local_port_range').read().split())
except Exception:
    lo, hi = 32768, 60999
ranges = []
if lo - 1 - 15000 >= 2000:
    ranges.append((15000, lo - 1))
if 65535 - (hi + 1) >= 2000:
    ranges.append((hi + 1, 65535))
held, ports = [], []
def try_bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Servers set SO_REUSEADDR, so TIME_WAIT leftovers do not block them.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(('127.0.0.1', port))
    except OSError:
        s.close()
        return None
    return s
attempts = 0
while len(ports) < n and ranges and attempts < 2000:
    attempts += 1
    a, b = random.choice(ranges)
    p = random.randint(a, b)
    if p in ports:
        continue
    s = try_bind(p)
    if s:
        held.append(s)
        ports.append(p)
while len(ports) < n:
    s = try_bind(0)
    held.append(s)
    ports.append(s.getsockname()[1])
print('\n'.join(map(str, ports)))
EOF
}

# cl_port_free PORT: true when a server could listen on 127.0.0.1:PORT now.
cl_port_free() {
        python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# cl_http_wait URL TIMEOUT [PID]: waits until URL answers 2xx. Fails early
# when PID (the server) is given and dies.
cl_http_wait() {
        local url=$1 timeout=${2:-60} pid=${3:-} i
        for ((i = 0; i < timeout * 5; i++)); do
                curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
                if [ -n "$pid" ] && ! cl_pid_alive "$pid"; then
                        cl_log "process $pid exited while waiting for $url"
                        return 1
                fi
                sleep 0.2
        done
        cl_log "timed out after ${timeout}s waiting for $url"
        return 1
}

# ---------------------------------------------------------------- PostgreSQL

# cl_pg_bindir: prints the bin directory of the newest PostgreSQL installed
# from Debian packages (/usr/lib/postgresql/VERSION/bin).
cl_pg_bindir() {
        local d best=
        best=$(for d in /usr/lib/postgresql/*/bin; do
                [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && printf '%s\n' "$d"
        done | sort -V | tail -n1)
        [ -n "$best" ] || { cl_log "no PostgreSQL found under /usr/lib/postgresql/*/bin (run deploy/install-deps)"; return 1; }
        printf '%s\n' "$best"
}

# PostgreSQL refuses to run as root: when we are root, its files belong to
# the `postgres` user and its commands run as that user.
cl_pg_user() { if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi; }

# cl_as_pg CMD...: runs CMD as the PostgreSQL user, from / (the caller's
# working directory may not be readable by that user).
cl_as_pg() {
        if [ "$(id -u)" -eq 0 ]; then
                (cd / && runuser -u postgres -- "$@")
        else
                (cd / && "$@")
        fi
}

# cl_pg_dir_usable DIR: creates DIR (if needed), gives it to the PostgreSQL
# user and checks that user can write there (every parent traversable) and
# that the unix socket path fits (sun_path is 108 bytes). On failure DIR is
# removed again when this call created it.
cl_pg_dir_usable() {
        local dir=$1 created=0
        [ -d "$dir" ] || { mkdir -p "$dir" && created=1; } || return 1
        if [ "$(id -u)" -eq 0 ]; then
                chown postgres: "$dir" 2>/dev/null || true
                chmod 700 "$dir"
        fi
        if [ ${#dir} -le 80 ] && cl_as_pg test -w "$dir" -a -x "$dir"; then
                return 0
        fi
        [ $created = 1 ] && rmdir "$dir" 2>/dev/null
        return 1
}

# cl_pg_pick_base PREFERRED FALLBACK: prints PREFERRED when the PostgreSQL
# user can use it (cl_pg_dir_usable), else FALLBACK (created the same way).
# A repository under /root (mode 700) makes the fallback necessary when
# running as root.
cl_pg_pick_base() {
        local want=$1 alt=$2
        if cl_pg_dir_usable "$want"; then
                printf '%s\n' "$want"
        elif cl_pg_dir_usable "$alt"; then
                printf '%s\n' "$alt"
        else
                cl_log "neither $want nor $alt is usable by the PostgreSQL user"
                return 1
        fi
}

# cl_pg_init BASE [fast]: creates a cluster in BASE/data (superuser postgres,
# trust authentication, UTF8, C locale) unless one exists. Layout of BASE:
#   data/          PGDATA             sock/   unix socket directory
#   postgres.log   server log
# "fast" turns durability off (fsync, synchronous_commit, full_page_writes):
# for throwaway test clusters only.
cl_pg_init() {
        local base=$1 mode=${2:-} bindir
        bindir=$(cl_pg_bindir) || return 1
        [ -f "$base/data/PG_VERSION" ] && return 0
        cl_pg_dir_usable "$base" || { cl_log "PostgreSQL user cannot use $base"; return 1; }
        cl_as_pg mkdir -p "$base/data" "$base/sock" || return 1
        cl_as_pg chmod 700 "$base/data" || return 1
        cl_as_pg "$bindir/initdb" -D "$base/data" -A trust -U postgres -E UTF8 \
                --no-locale --no-sync >"$base/initdb.log.tmp" 2>&1 || {
                cat "$base/initdb.log.tmp" >&2
                rm -f "$base/initdb.log.tmp"
                return 1
        }
        rm -f "$base/initdb.log.tmp"
        {
                echo
                echo "# added by deploy/lib/cluster.sh"
                echo "listen_addresses = '127.0.0.1'"
                echo "max_connections = 300"
                echo "logging_collector = off"
                echo "log_line_prefix = '%m [%p] %q%u@%d '"
                if [ "$mode" = fast ]; then
                        echo "fsync = off"
                        echo "synchronous_commit = off"
                        echo "full_page_writes = off"
                fi
                echo "include_if_exists = 'cluster-runtime.conf'"
        } | cl_as_pg tee -a "$base/data/postgresql.conf" >/dev/null
}

# cl_pg_pid BASE: prints the postmaster pid and succeeds when it is running.
cl_pg_pid() {
        cl_pidfile_pid "$1/data/postmaster.pid" postgres
}

# cl_pg_start BASE PORT: starts the cluster in BASE on 127.0.0.1:PORT with
# its unix socket in BASE/sock and waits until it accepts connections.
cl_pg_start() {
        local base=$1 port=$2 bindir
        bindir=$(cl_pg_bindir) || return 1
        cl_as_pg mkdir -p "$base/sock" || return 1
        printf "port = %s\nunix_socket_directories = '%s'\n" "$port" "$base/sock" |
                cl_as_pg tee "$base/data/cluster-runtime.conf" >/dev/null || return 1
        if ! cl_as_pg "$bindir/pg_ctl" start -D "$base/data" -l "$base/postgres.log" \
                -w -t 60 -s >/dev/null; then
                cl_log "PostgreSQL failed to start; last lines of $base/postgres.log:"
                tail -n 20 "$base/postgres.log" >&2 2>/dev/null || true
                return 1
        fi
        cl_pg_wait "$port" 60
}

# cl_pg_wait PORT [TIMEOUT]: waits until PostgreSQL on 127.0.0.1:PORT is ready.
cl_pg_wait() {
        local port=$1 timeout=${2:-60} bindir i
        bindir=$(cl_pg_bindir) || return 1
        for ((i = 0; i < timeout * 10; i++)); do
                "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && return 0
                sleep 0.1
        done
        cl_log "PostgreSQL on 127.0.0.1:$port not ready after ${timeout}s"
        return 1
}

# cl_pg_stop BASE: stops the cluster in BASE (pg_ctl stop -m fast, which
# signals the pid in postmaster.pid) and waits for that pid to exit.
cl_pg_stop() {
        local base=$1 bindir pid
        pid=$(cl_pg_pid "$base") || return 0
        bindir=$(cl_pg_bindir) || return 1
        if ! cl_as_pg "$bindir/pg_ctl" stop -D "$base/data" -m fast -w -t 60 -s >/dev/null; then
                cl_log "pg_ctl stop -m fast failed; trying -m immediate"
                cl_as_pg "$bindir/pg_ctl" stop -D "$base/data" -m immediate -w -t 30 -s >/dev/null || true
        fi
        cl_wait_pid_exit "$pid" 30 || { cl_log "PostgreSQL pid $pid still running"; return 1; }
}

# cl_psql PORT DB ARGS...: psql as postgres over TCP, quiet, stop on error.
cl_psql() {
        local port=$1 db=$2 bindir
        shift 2
        bindir=$(cl_pg_bindir) || return 1
        "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# ---------------------------------------------------------------- Redis

# cl_redis_start DIR PORT: starts redis-server on 127.0.0.1:PORT with no
# persistence; DIR holds redis.pid and redis.log. Waits until it answers.
cl_redis_start() {
        local dir=$1 port=$2 i
        mkdir -p "$dir"
        rm -f "$dir/redis.pid"
        redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
                --save '' --appendonly no --daemonize yes \
                --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
                </dev/null >/dev/null || { cl_log "redis-server failed to start"; return 1; }
        for ((i = 0; i < 100; i++)); do
                [ -s "$dir/redis.pid" ] && break
                sleep 0.1
        done
        cl_pidfile_pid "$dir/redis.pid" redis-server >/dev/null || {
                cl_log "redis-server is not running; last lines of $dir/redis.log:"
                tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
                return 1
        }
        cl_redis_wait "$port" 30
}

# cl_redis_wait PORT [TIMEOUT]: waits until Redis on 127.0.0.1:PORT answers PING.
cl_redis_wait() {
        local port=$1 timeout=${2:-30} i
        for ((i = 0; i < timeout * 10; i++)); do
                [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
                sleep 0.1
        done
        cl_log "Redis on 127.0.0.1:$port not answering after ${timeout}s"
        return 1
}

# cl_redis_stop DIR: stops the redis-server whose pid is in DIR/redis.pid.
cl_redis_stop() {
        cl_stop_pidfile "$1/redis.pid" redis-server 30
}

# ---------------------------------------------------------------- pgbouncer

# cl_pgbouncer_start DIR PORT PG_PORT MODE: starts Debian's pgbouncer on
# 127.0.0.1:PORT in front of the PostgreSQL on 127.0.0.1:PG_PORT, every
# database name passed through ("*"), user postgres without a password
# (auth_type trust, as the test cluster), pool_mode MODE (transaction or
# session). pgbouncer refuses to run as root: DIR (config, pid, log) is the
# PostgreSQL user's and pgbouncer runs as that user. Waits until it answers.
cl_pgbouncer_start() {
        local dir=$1 port=$2 pg_port=$3 mode=$4 bindir i
        bindir=$(cl_pg_bindir) || return 1
        [ -x /usr/sbin/pgbouncer ] || { cl_log "pgbouncer not installed (deploy/install-deps)"; return 1; }
        cl_pg_dir_usable "$dir" || { cl_log "PostgreSQL user cannot use $dir"; return 1; }
        {
                echo "[databases]"
                echo "* = host=127.0.0.1 port=$pg_port"
                echo "[pgbouncer]"
                echo "listen_addr = 127.0.0.1"
                echo "listen_port = $port"
                echo "unix_socket_dir ="
                echo "auth_type = trust"
                echo "auth_file = $dir/userlist.txt"
                echo "pool_mode = $mode"
                echo "max_client_conn = 2000"
                # Session pooling holds a server connection per client
                # connection: the pool must fit every client at once or
                # the rest wait forever (tests open dozens per database).
                if [ "$mode" = session ]; then
                        echo "default_pool_size = 250"
                else
                        echo "default_pool_size = 40"
                fi
                echo "max_db_connections = 0"
                echo "server_reset_query = DISCARD ALL"
                # A database that went away fails queries in 10 s, not 120 s.
                echo "query_wait_timeout = 10"
                echo "ignore_startup_parameters = extra_float_digits"
                echo "logfile = $dir/pgbouncer.log"
                echo "pidfile = $dir/pgbouncer.pid"
                echo "admin_users = postgres"
        } | cl_as_pg tee "$dir/pgbouncer.ini" >/dev/null || return 1
        echo '"postgres" ""' | cl_as_pg tee "$dir/userlist.txt" >/dev/null || return 1
        cl_as_pg /usr/sbin/pgbouncer -q -d "$dir/pgbouncer.ini" </dev/null >/dev/null 2>&1 || {
                cl_log "pgbouncer failed to start; last lines of $dir/pgbouncer.log:"
                tail -n 20 "$dir/pgbouncer.log" >&2 2>/dev/null || true
                return 1
        }
        for ((i = 0; i < 100; i++)); do
                "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres && return 0
                sleep 0.1
        done
        cl_log "pgbouncer on 127.0.0.1:$port not ready"
        return 1
}

# cl_pgbouncer_stop DIR: stops the pgbouncer whose pid is in DIR/pgbouncer.pid.
cl_pgbouncer_stop() {
        cl_stop_pidfile "$1/pgbouncer.pid" pgbouncer 30
}
