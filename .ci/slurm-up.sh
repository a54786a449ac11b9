#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for tests/test_slurm.py: Debian's slurmctld, slurmd and munge, run as
# root without systemd, two fake GPUs, no accounting database (status by squeue). Safe to run again.
# Stop it with .ci/slurm-down.sh.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi
if sinfo -h -o %T 2>/dev/null | grep -qxE "idle|mixed|allocated"; then
  exit 0
fi

node=$(hostname -s)
hardware=$(slurmd -C | head -1)
cpus=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$hardware")
memory=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$hardware")

mkdir -p /run/munge /var/log/munge /var/lib/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge /var/log/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
[ -S /run/munge/munge.socket.2 ] && munge -n >/dev/null 2>&1 || runuser -u munge -- munged

# Fake GPUs: character devices that only exist so that SLURM can schedule `--gpus` and set CUDA_VISIBLE_DEVICES.
for i in 0 1; do [ -e /dev/fakegpu$i ] || mknod /dev/fakegpu$i c 1 3; done
cat >/etc/slurm/gres.conf <<EOF
AutoDetect=off
NodeName=$node Name=gpu Type=fake File=/dev/fakegpu[0-1]
EOF
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=prefselect-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:fake:2 State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

slurmctld
slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && exit 0
  [[ "$state" == down* || "$state" == drain* ]] && scontrol update NodeName="$node" State=RESUME || true
  sleep 1
done
echo "slurm-up: node $node did not become idle: $(sinfo 2>&1)" >&2
exit 1
