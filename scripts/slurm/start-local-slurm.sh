#!/usr/bin/env bash
# Start a real, single-machine SLURM cluster for nnpipe's tests (tests/slurm).
#
# Installs (if missing) and starts munged, slurmctld and slurmd from Debian's packages, with
# fake GPUs: a `gpu` GRES backed by dummy character devices, so that `sbatch --gpus=2` is
# accepted and the job sees CUDA_VISIBLE_DEVICES=0,1 (torch still finds no CUDA device and
# nnpipe trains on the CPU with gloo). Not for production: no accounting database, no
# cgroups, everything runs as root.
#
# Usage: scripts/slurm/start-local-slurm.sh [--no-install] [--restart] [--check]
#   --no-install  fail instead of running apt-get when the binaries are missing
#   --restart     stop a running instance first (default: reuse it when its config matches)
#   --check       only say whether this machine can run it (root, binaries or apt); exit 0/1
# Environment:
#   NNPIPE_SLURM_DIR    state, logs, pid files, fake devices (default /var/lib/nnpipe-slurm)
#   NNPIPE_SLURM_GPUS   fake GPUs per node (default 2; 0 = none)
#   NNPIPE_SLURM_NODES  emulated nodes on this host (default 1; 2 = n1,n2 for multi-node tests)
#   NNPIPE_SLURM_CPUS   CPUs to declare per node (default: this machine's, split over nodes)
# Exit status 0 when the node(s) are idle and `srun true` ran; otherwise 1 with the reason and
# the tails of the daemons' logs. Stop with scripts/slurm/stop-local-slurm.sh.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${NNPIPE_SLURM_DIR:-/var/lib/nnpipe-slurm}
NGPUS=${NNPIPE_SLURM_GPUS:-2}
NNODES=${NNPIPE_SLURM_NODES:-1}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARK="# nnpipe local test cluster (scripts/slurm/start-local-slurm.sh)"
PACKAGES="munge slurmctld slurmd slurm-client"
INSTALL=1 RESTART=0 CHECK=0
for arg in "$@"; do
  case $arg in
    --no-install) INSTALL=0 ;;
    --restart) RESTART=1 ;;
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    *) echo "start-local-slurm: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

say() { echo "[start-local-slurm] $*"; }
DAEMONS_TOUCHED=0
fail() {
  echo "start-local-slurm: FAILED: $*" >&2
  if [ "$DAEMONS_TOUCHED" = 1 ]; then
    for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd-*.log /var/log/munge/munged.log; do
      [ -s "$f" ] && { echo "--- last lines of $f" >&2; tail -n 12 "$f" >&2; }
    done
    echo "(daemons left running for inspection; scripts/slurm/stop-local-slurm.sh stops them)" >&2
  fi
  exit 1
}
have_binaries() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null

# ---- can this machine run it at all?
[ "$(id -u)" = 0 ] || fail "needs root (slurmd runs jobs as any user); run as root or skip the SLURM tests"
if ! have_binaries; then
  command -v apt-get >/dev/null || fail "SLURM is not installed and there is no apt-get; install: $PACKAGES"
  [ "$INSTALL" = 1 ] || fail "SLURM is not installed; run: apt-get install -y --no-install-recommends $PACKAGES"
fi
if [ "$CHECK" = 1 ]; then say "this machine can run the local cluster"; exit 0; fi
if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  fail "$CONF exists and was not written by this script: refusing to touch a real cluster's configuration"
fi

# ---- packages (policy-rc.d keeps the packages' init scripts from starting daemons)
if ! have_binaries; then
  say "installing $PACKAGES (apt-get, --no-install-recommends)"
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null; }; then
    rm -f /usr/sbin/policy-rc.d
    fail "apt-get could not install $PACKAGES (no network or no Debian archive?)"
  fi
  rm -f /usr/sbin/policy-rc.d
  have_binaries || fail "apt-get ran but slurmctld/slurmd/sbatch/munged are still missing"
fi

# ---- the configuration we want
HOST=$(hostname -s)
getent hosts "$HOST" >/dev/null || { echo "127.0.0.1 $HOST" >> /etc/hosts; say "added $HOST to /etc/hosts"; }
CPUS=${NNPIPE_SLURM_CPUS:-$(( $(nproc) / NNODES ))}
[ "$CPUS" -ge 1 ] || CPUS=1
# declare less memory than the machine has: more would leave the node INVAL
MEM=$(awk -v n="$NNODES" '/MemTotal/ {printf "%d", $2 / 1024 * 0.85 / n}' /proc/meminfo)
GRES=""; [ "$NGPUS" -gt 0 ] && GRES="Gres=gpu:$NGPUS"
if [ "$NNODES" = 1 ]; then
  NODES=("$HOST")
  NODE_LINES="NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM $GRES State=UNKNOWN"
  TASK_PLUGIN=task/affinity
  # more CPUs than the machine has (NNPIPE_SLURM_CPUS): no CPU binding
  [ "$CPUS" -gt "$(nproc)" ] && TASK_PLUGIN=task/none
else
  # several slurmd on one host: each node its own port; CPU binding off (they share the cores)
  NODES=() NODE_LINES=""
  for i in $(seq 1 "$NNODES"); do
    NODES+=("n$i")
    NODE_LINES+="NodeName=n$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17100 + i)) CPUs=$CPUS RealMemory=$MEM $GRES State=UNKNOWN"$'\n'
  done
  TASK_PLUGIN=task/none
fi
WANT=$(mktemp)
trap 'rm -f "$WANT"' EXIT
cat > "$WANT" <<EOF
$MARK
ClusterName=nnpipe-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# no systemd/cgroups on a test machine: track processes through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
# slurmd accepts the declared CPUs even where they exceed the machine's (oversubscribed tests)
SlurmdParameters=config_overrides
# no slurmdbd: sacct does not work, use the squeue status command (tests/slurm/profile)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a per-CPU default every job without --mem would claim the whole node
DefMemPerCPU=500
# finished jobs stay visible to 'squeue --states=all' for 5 minutes (the status check needs it)
MinJobAge=300
# seconds between SIGTERM and SIGKILL when a job is cancelled or reaches its time limit
KillWait=30
ReturnToService=2
MailProg=/bin/true
GresTypes=gpu
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=6817
SlurmdPort=6818
$NODE_LINES
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

alive() {  # alive PIDFILE NAME: the pid in PIDFILE runs a process called NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
node_states() { timeout 10 sinfo -h -o %T 2>/dev/null | sort -u | tr '\n' ' ' || true; }

# ---- already up with this configuration? (idempotent)
if [ "$RESTART" = 0 ] && cmp -s "$WANT" "$CONF" && alive "$DIR/run/slurmctld.pid" slurmctld; then
  up=1
  for n in "${NODES[@]}"; do alive "$DIR/run/slurmd-$n.pid" slurmd || up=0; done
  states=$(node_states)
  if [ "$up" = 1 ] && [[ "$states" =~ ^((idle|mixed|allocated|completing)\ )+$ ]]; then
    say "already running (nodes: $states)"; exit 0
  fi
  say "running but unhealthy (nodes: '$states'); restarting"
fi
"$HERE/stop-local-slurm.sh" --quiet || true

# ---- fresh state (stale node state leaves nodes drained)
rm -rf "$DIR"/state "$DIR"/spool "$DIR"/run "$DIR"/log "$DIR"/dev
mkdir -p "$DIR"/state "$DIR"/run "$DIR"/log "$DIR"/dev /etc/slurm
for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/$n"; done
DAEMONS_TOUCHED=1
install -m 644 "$WANT" "$CONF"

# fake GPUs: one device file per GPU (a GRES count without files leaves the node INVAL)
{
  echo "$MARK"
  echo "AutoDetect=off"
  for n in "${NODES[@]}"; do
    for i in $(seq 0 $((NGPUS - 1))); do
      dev="$DIR/dev/$n-gpu$i"
      mknod "$dev" c 1 3 2>/dev/null || fail "cannot create the fake GPU device $dev (mknod not allowed here)"
      echo "NodeName=$n Name=gpu File=$dev"
    done
  done
} > "$GRES_CONF"

# ---- munge (reuse a running munged; remember in $DIR/run only one we started)
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
    || fail "munged did not start"
  cp /run/munge/munged.pid "$DIR/run/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work ('munge -n | unmunge' fails)"
fi

# ---- slurmctld + one slurmd per node
slurmctld -c || fail "slurmctld did not start"
for n in "${NODES[@]}"; do slurmd -N "$n" || fail "slurmd for node $n did not start"; done
states=""
for _ in $(seq 300); do
  states=$(node_states)
  case $states in
    "idle ") break ;;
    *drain*|*inval*|*fail*|*down*) fail "node state '$states': $(sinfo -h -R -o '%N %E' 2>/dev/null)" ;;
  esac
  sleep 0.2
done
[ "$states" = "idle " ] || fail "node(s) not idle after 60 s (state '$states')"
out=$(timeout 60 srun -N "$NNODES" -n "$NNODES" -t 1 true 2>&1) || fail "'srun true' failed: $out"
say "up: nodes ${NODES[*]}, $CPUS CPUs, ${MEM} MB, $NGPUS fake GPUs each; partition debug; logs $DIR/log"
