#!/usr/bin/env bash
# A one-node SLURM on this machine for trying and testing `--executor slurm` (needs root):
# installs Debian's slurm-wlm and munge when missing, writes a slurm.conf for this node
# (proctrack/linuxproc, task/none, no accounting, CPUs and memory at or below the machine's)
# and starts munged, slurmctld and slurmd. Does nothing when that cluster already answers.
#   scripts/slurm_local.sh          start (or check) it
#   scripts/slurm_local.sh stop     stop the daemons
set -euo pipefail
conf=/etc/slurm/slurm.conf
node=$(hostname -s)

if [ "${1:-}" = "stop" ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  exit 0
fi
if command -v sinfo >/dev/null && sinfo -h -N -o '%N %t' 2>/dev/null | grep -q "^$node idle\|^$node mix\|^$node alloc"; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/slurm_local.sh: starting SLURM needs root" >&2; exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > "$conf" <<EOF
ClusterName=afdcd
SlurmctldHost=$node
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=3600
KillWait=60
JobRequeue=1
DefMemPerCPU=2048
NodeName=$node CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
[ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
for _ in $(seq 60); do
  if sinfo -h -N -o '%N %t' 2>/dev/null | grep -q "^$node idle"; then
    exit 0
  fi
  scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "scripts/slurm_local.sh: SLURM did not come up; see /var/log/slurm/" >&2
sinfo -N >&2 || true
exit 1
