#!/usr/bin/env bash
# A real two-node SLURM cluster on this machine, for development and CI.
#
#   bash platform/slurm/cluster.sh install   # apt-get: slurmctld slurmd slurm-client slurmdbd
#                                            #          munge mariadb-server (idempotent)
#   bash platform/slurm/cluster.sh start     # munge, MariaDB, slurmdbd, slurmctld, slurmd x2
#   bash platform/slurm/cluster.sh status    # daemons (pid files) + sinfo + squeue
#   bash platform/slurm/cluster.sh stop      # ends only the daemons this script started
#   bash platform/slurm/cluster.sh env       # prints `export SLURM_CONF=...`
#
# Everything (configs, munge key and socket, MariaDB data, slurm state, spools, pid files,
# logs) lives under one folder: $DETLAB_SLURM_DIR (default /tmp/detlab-slurm). Needs root
# (no sudo, no systemd). "node1" and "node2" are two slurmd on 127.0.0.1 with their own ports;
# the partition "debug" holds both. Point every slurm command at the cluster with
#   export SLURM_CONF=$DETLAB_SLURM_DIR/etc/slurm.conf
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${DETLAB_SLURM_DIR:-/tmp/detlab-slurm}
CLUSTER=${DETLAB_SLURM_CLUSTER:-detlab}
CTLD_PORT=${DETLAB_SLURM_CTLD_PORT:-16817}
DBD_PORT=${DETLAB_SLURM_DBD_PORT:-16819}
NODE1_PORT=${DETLAB_SLURM_NODE_PORT:-17001}
NODE2_PORT=$((NODE1_PORT + 1))
MYSQL_PORT=${DETLAB_SLURM_MYSQL_PORT:-13306}
CPUS=${DETLAB_SLURM_CPUS:-2}            # per node; 2 nodes x 2 CPUs share a 2-core machine
MEM_MB=${DETLAB_SLURM_MEM_MB:-4000}     # per node
MAX_TIME_MIN=${DETLAB_SLURM_MAX_TIME_MIN:-120}
KILL_WAIT=${DETLAB_SLURM_KILL_WAIT:-30}
CRED_EXPIRE=${DETLAB_SLURM_CRED_EXPIRE:-10}  # = delay before a requeued job may restart
DB_PASS=detlab-local  # loopback-only database of a throw-away test cluster, not a secret
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
NODES=(node1 node2)

export SLURM_CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
MYCNF="$DIR/etc/my.cnf"
HOSTS=${DETLAB_HOSTS_FILE:-/etc/hosts}  # another file only in tests
HOSTS_MARK="# detlab local slurm"

log() { echo "[cluster.sh] $*" >&2; }
die() { echo "[cluster.sh] error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (starts daemons, edits /etc/hosts)"; }

# ---------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------
missing_packages() {
  local p out=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  echo "${out[@]:-}"
}

cmd_install() {
  need_root
  local missing
  missing=$(missing_packages)
  if [ -z "$missing" ]; then
    log "packages already installed: ${PACKAGES[*]}"
    return 0
  fi
  log "installing: $missing"
  export DEBIAN_FRONTEND=noninteractive
  # keep the packages' init scripts from starting system-wide daemons during install
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
  [ "$made_policy" = 1 ] && rm -f "$policy"
  missing=$(missing_packages)
  [ -z "$missing" ] || die "packages still missing after apt-get install: $missing"
  log "installed: ${PACKAGES[*]}"
}

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
render() {  # render <template> <output> <mode>: fill @NAME@ placeholders
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  sed -e "s|@DIR@|$DIR|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
    -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@NODE1_PORT@|$NODE1_PORT|g" \
    -e "s|@NODE2_PORT@|$NODE2_PORT|g" -e "s|@MYSQL_PORT@|$MYSQL_PORT|g" \
    -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" -e "s|@MAX_TIME_MIN@|$MAX_TIME_MIN|g" \
    -e "s|@KILL_WAIT@|$KILL_WAIT|g" -e "s|@CRED_EXPIRE@|$CRED_EXPIRE|g" \
    -e "s|@DB_PASS@|$DB_PASS|g" "$1" >"$tmp"
  chmod "$3" "$tmp"
  if [ -f "$2" ] && cmp -s "$tmp" "$2"; then
    rm -f "$tmp"
    return 1  # unchanged
  fi
  mv -f "$tmp" "$2"
  return 0  # written / changed
}

# pid files -> the daemon names their /proc/<pid>/comm must show (guards against pid reuse)
pidfile_of() {
  case "$1" in
    munged) echo "$DIR/munge/munged.pid" ;;
    mariadbd) echo "$DIR/mysql/mariadbd.pid" ;;
    slurmdbd) echo "$DIR/run/slurmdbd.pid" ;;
    slurmctld) echo "$DIR/run/slurmctld.pid" ;;
    slurmd-*) echo "$DIR/run/$1.pid" ;;
  esac
}

running_pid() {  # prints the pid of daemon $1 if it runs (from its pid file), else fails
  local f pid comm
  f=$(pidfile_of "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  [ "$comm" = "${1%%-*}" ] || return 1
  echo "$pid"
}

wait_for() {  # wait_for <seconds> <command...>: retry until it succeeds or time runs out
  local end=$((SECONDS + $1))
  shift
  while ((SECONDS < end)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.25
  done
  return 1
}

stop_daemon() {
  local name=$1 pid i
  pid=$(running_pid "$name") || return 0
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 80; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) did not exit after 20 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$(pidfile_of "$name")"
}

ensure_hosts() {
  local n missing=()
  for n in "${NODES[@]}"; do
    grep -Eq "^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]$n([[:space:]]|$)" "$HOSTS" ||
      missing+=("$n")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "adding '127.0.0.1 ${missing[*]}' to $HOSTS (torch.distributed resolves node names)"
    echo "127.0.0.1 ${missing[*]}  $HOSTS_MARK" >>"$HOSTS"
  fi
  for n in "${NODES[@]}"; do getent hosts "$n" >/dev/null || die "$n does not resolve"; done
}

# ---------------------------------------------------------------------------------------
# daemons
# ---------------------------------------------------------------------------------------
start_munge() {
  mkdir -p "$DIR/munge"
  chown munge:munge "$DIR/munge"
  chmod 755 "$DIR/munge"
  if [ ! -s "$DIR/munge/munge.key" ]; then
    mungekey --create --keyfile="$DIR/munge/munge.key"
  fi
  chown munge:munge "$DIR/munge/munge.key"
  chmod 600 "$DIR/munge/munge.key"
  if running_pid munged >/dev/null; then return 0; fi
  log "starting munged (socket $MUNGE_SOCKET)"
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  su -s /bin/sh munge 9>&- -c "munged --socket='$MUNGE_SOCKET' --key-file='$DIR/munge/munge.key' \
    --pid-file='$DIR/munge/munged.pid' --log-file='$DIR/munge/munged.log' \
    --seed-file='$DIR/munge/munged.seed'"
  munge_ok() { timeout 5 munge -n -S "$MUNGE_SOCKET" | timeout 5 unmunge -S "$MUNGE_SOCKET"; }
  wait_for 20 munge_ok || die "munge does not answer; see $DIR/munge/munged.log"
}

mysql_root() { mariadb --defaults-file="$MYCNF" -uroot "$@"; }

start_mariadb() {
  mkdir -p "$DIR/mysql"
  chown mysql:mysql "$DIR/mysql"
  if [ ! -d "$DIR/mysql/data/mysql" ]; then
    log "initialising MariaDB data dir $DIR/mysql/data"
    rm -rf "$DIR/mysql/data"
    mariadb-install-db --defaults-file="$MYCNF" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
      die "mariadb-install-db failed; see $DIR/log/mariadb-install.log"
  fi
  if ! running_pid mariadbd >/dev/null; then
    log "starting mariadbd (127.0.0.1:$MYSQL_PORT)"
    setsid /usr/sbin/mariadbd --defaults-file="$MYCNF" </dev/null >>"$DIR/log/mariadbd.out" 2>&1 9>&- &
  fi
  wait_for 60 timeout 5 mariadb-admin --defaults-file="$MYCNF" -uroot ping ||
    die "MariaDB does not answer; see $DIR/mysql/mariadbd.log"
  mysql_root <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

start_slurmdbd() {
  if ! running_pid slurmdbd >/dev/null; then
    log "starting slurmdbd (port $DBD_PORT)"
    slurmdbd 9>&-
  fi
  wait_for 60 timeout 10 sacctmgr -n list cluster ||
    die "slurmdbd does not answer; see $DIR/log/slurmdbd.log"
}

setup_accounting() {
  if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null
  fi
  if ! timeout 10 sacctmgr -n -P list account format=account | grep -qx detlab; then
    timeout 10 sacctmgr -i add account detlab Cluster="$CLUSTER" Description="detlab tests" \
      Organization=detlab >/dev/null
  fi
  if ! timeout 10 sacctmgr -n -P list assoc cluster="$CLUSTER" account=detlab user=root format=user |
    grep -qx root; then
    timeout 10 sacctmgr -i add user root Account=detlab Cluster="$CLUSTER" >/dev/null
  fi
}

start_slurmctld() {
  if ! running_pid slurmctld >/dev/null; then
    log "starting slurmctld (port $CTLD_PORT)"
    slurmctld 9>&-
  fi
  ctld_up() { timeout 10 scontrol ping | grep -q "is UP"; }
  wait_for 60 ctld_up || die "slurmctld is not UP; see $DIR/log/slurmctld.log"
}

start_slurmd() {
  local n
  for n in "${NODES[@]}"; do
    mkdir -p "$DIR/spool/$n"
    if ! running_pid "slurmd-$n" >/dev/null; then
      log "starting slurmd -N $n"
      slurmd -N "$n" 9>&-
    fi
  done
}

nodes_idle() {
  local states
  states=$(sinfo -h -N -p debug -o "%N %T" 2>/dev/null | sort -u)
  [ "$(echo "$states" | grep -cE '^node[12] (idle|mixed|allocated|completing)$')" = 2 ]
}

wait_nodes() {
  local i n state
  for ((i = 0; i < 240; i++)); do
    nodes_idle && return 0
    if ((i % 20 == 19)); then  # every 5 s: bring back nodes left down/drained by a restart
      for n in "${NODES[@]}"; do
        state=$(sinfo -h -n "$n" -o "%T" 2>/dev/null | head -1)
        case "$state" in
          down* | drain* | fail*) scontrol update nodename="$n" state=resume 2>/dev/null || true ;;
        esac
      done
    fi
    sleep 0.25
  done
  sinfo -N >&2 || true
  die "nodes are not idle after 60 s; see $DIR/log/slurmd-node*.log"
}

cmd_start() {
  need_root
  for b in slurmctld slurmd slurmdbd munged mariadbd sinfo; do
    command -v "$b" >/dev/null || die "$b not found: run '$0 install' first"
  done
  mkdir -p "$DIR"/{etc,run,log,state,spool}
  exec 9>"$DIR/.lock"
  flock -w 120 9 || die "another cluster.sh holds $DIR/.lock"
  ensure_hosts
  local changed=0
  render "$HERE/slurm.conf.tmpl" "$DIR/etc/slurm.conf" 644 && changed=1
  render "$HERE/slurmdbd.conf.tmpl" "$DIR/etc/slurmdbd.conf" 600 && changed=1
  render "$HERE/my.cnf.tmpl" "$MYCNF" 644 || true
  if [ "$changed" = 1 ] && running_pid slurmctld >/dev/null; then
    log "configuration changed: restarting the slurm daemons"
    stop_slurm_daemons
  fi
  start_munge
  start_mariadb
  start_slurmdbd
  setup_accounting
  start_slurmctld
  start_slurmd
  wait_nodes
  log "cluster '$CLUSTER' is up: $(sinfo -h -o '%P %D nodes %T' | tr '\n' ' ')"
  echo "export SLURM_CONF=$SLURM_CONF"
}

# The lines ensure_hosts added, removed by rewriting the file in place (a container's
# /etc/hosts is often a bind mount: no temporary file renamed over it).
remove_hosts() {
  local kept
  grep -q "$HOSTS_MARK\$" "$HOSTS" 2>/dev/null || return 0
  log "removing the '$HOSTS_MARK' line from $HOSTS"
  kept=$(grep -v "$HOSTS_MARK\$" "$HOSTS" || true)
  printf '%s\n' "$kept" >"$HOSTS"
}

stop_slurm_daemons() {
  local n
  for n in "${NODES[@]}"; do stop_daemon "slurmd-$n"; done
  stop_daemon slurmctld
  stop_daemon slurmdbd
}

cmd_stop() {
  need_root
  if running_pid slurmctld >/dev/null; then
    local jobs
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      sleep 1
    fi
  fi
  stop_slurm_daemons
  stop_daemon mariadbd
  stop_daemon munged
  remove_hosts
  log "stopped (state kept in $DIR; remove it for a fresh cluster)"
}

cmd_status() {
  local d pid ok=0
  echo "state dir: $DIR"
  for d in munged mariadbd slurmdbd slurmctld slurmd-node1 slurmd-node2; do
    if pid=$(running_pid "$d"); then
      printf '  %-14s running (pid %s)\n' "$d" "$pid"
    else
      printf '  %-14s stopped\n' "$d"
      ok=1
    fi
  done
  if [ "$ok" = 0 ]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    sinfo || ok=1
    squeue || true
  fi
  return "$ok"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *)
    echo "usage: $0 install|start|stop|status|env   (state dir: \$DETLAB_SLURM_DIR=$DIR)" >&2
    exit 2
    ;;
esac
