#!/usr/bin/env bash
# Stop the cluster that scripts/slurm/start-local-slurm.sh started. Idempotent.
#
# Usage: scripts/slurm/stop-local-slurm.sh [--clean] [--quiet]
#   --clean  also remove NNPIPE_SLURM_DIR and the slurm.conf / gres.conf the start script wrote
#   --quiet  no progress lines
# Only processes named in the pid files under $NNPIPE_SLURM_DIR/run are signalled (checked
# against /proc/PID/comm); a munged that was already running before the start is left alone.
set -uo pipefail

DIR=${NNPIPE_SLURM_DIR:-/var/lib/nnpipe-slurm}
MARK="# nnpipe local test cluster (scripts/slurm/start-local-slurm.sh)"
CLEAN=0 QUIET=0
for arg in "$@"; do
  case $arg in
    --clean) CLEAN=1 ;;
    --quiet) QUIET=1 ;;
    *) echo "stop-local-slurm: unknown option $arg" >&2; exit 2 ;;
  esac
done
say() { [ "$QUIET" = 1 ] || echo "[stop-local-slurm] $*"; }

pid_of() {  # pid_of PIDFILE NAME: print the pid when it is alive and called NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}
stop() {  # stop PIDFILE NAME: SIGTERM, up to 10 s, then SIGKILL
  local pid
  pid=$(pid_of "$1" "$2") || { rm -f "$1"; return 0; }
  say "stopping $2 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && { say "$2 ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  rm -f "$1"
}

if pid_of "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs $jobs"
    timeout 10 scancel $jobs 2>/dev/null
    sleep 1
  fi
  timeout 10 scontrol shutdown >/dev/null 2>&1   # asks slurmctld and every slurmd to exit
fi
for f in "$DIR"/run/slurmd-*.pid; do [ -e "$f" ] && stop "$f" slurmd; done
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/munged.pid" munged

if [ "$CLEAN" = 1 ]; then
  say "removing $DIR and the generated configuration"
  rm -rf "$DIR"
  for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    [ -f "$f" ] && grep -qF "$MARK" "$f" && rm -f "$f"
  done
fi
say "stopped"
exit 0
