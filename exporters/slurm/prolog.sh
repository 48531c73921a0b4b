#!/bin/sh
# aifmon Slurm prolog: writes one mapping file per GPU this job holds on this node, so the node
# exporter can publish aif_gpu_job_info{node,gpu,job,project,access_mode}.
#
# Install: copy to the compute nodes and add it to slurm.conf, e.g. `Prolog=/etc/slurm/prolog.d/*`
# with `PrologFlags=Alloc` (runs at allocation, as SlurmdUser, normally root). It never fails the
# job: a prolog that exits non-zero drains the node, so every problem is only reported on stderr.
#
# Reads the environment slurmd gives a prolog: SLURM_JOB_ID, SLURM_JOB_ACCOUNT,
# SLURM_JOB_PARTITION, SLURM_JOB_QOS (where the Slurm version sets it; 22.05 does not, so it is
# read from `scontrol show job`), and SLURM_JOB_GPUS (else CUDA_VISIBLE_DEVICES): the job's GPUs on
# this node as Slurm's GRES indices or as GPU/MIG UUIDs. A GRES index is the GPU's position in
# gres.conf's device list, which is its /dev/nvidiaN number when gres.conf lists the devices in
# order from 0 (`File=/dev/nvidia[0-7]`), as this prolog assumes; see docs/slurm.md.
# Device numbers are turned into UUIDs with `nvidia-smi --query-gpu=minor_number,uuid`, because the
# NVML index, Slurm's index and /dev/nvidiaN can differ; the exporter maps UUIDs to NVML indices.
#
# Settings (environment: set them in a wrapper script, or edit the defaults below):
#   AIFMON_JOB_DIR    mapping directory (default /run/aifmon/jobs; on tmpfs, so a reboot clears it)
#   AIFMON_GPU_TABLE  test/diagnostic hook: "minor_number, uuid" lines used instead of running
#                     nvidia-smi (the same CSV nvidia-smi prints), for nodes or tests without it
#
# File: $AIFMON_JOB_DIR/<UUID>_<job id>, lines job=, account=, partition=, qos=.

PATH=${PATH:+$PATH:}/usr/bin:/bin:/usr/sbin:/sbin   # slurmd sets no PATH; a wrapper may (e.g. /opt/slurm/bin for scontrol)
DIR=${AIFMON_JOB_DIR:-/run/aifmon/jobs}
JOB=${SLURM_JOB_ID:-}
[ -n "$JOB" ] || exit 0
GPUS=${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}
[ -n "$GPUS" ] || exit 0   # a job without GPUs on this node

clean() { printf '%s' "$1" | tr -d '\n\r='; }

QOS=${SLURM_JOB_QOS:-}
if [ -z "$QOS" ] && command -v scontrol >/dev/null 2>&1; then
    QOS=$(scontrol show job -o "$JOB" 2>/dev/null | sed -n 's/.* QOS=\([^ ]*\).*/\1/p')
fi
case "$QOS" in "(null)") QOS= ;; esac   # scontrol's word for none (a cluster without accounting)

gpu_table() {
    if [ -n "${AIFMON_GPU_TABLE:-}" ]; then
        printf '%s\n' "$AIFMON_GPU_TABLE"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=minor_number,uuid --format=csv,noheader,nounits
    fi
}

if ! mkdir -p "$DIR" 2>/dev/null; then
    echo "aifmon prolog: cannot create $DIR; job $JOB is not attributed" >&2
    exit 0
fi
TABLE=$(gpu_table)
for id in $(printf '%s' "$GPUS" | tr ',' ' '); do
    case "$id" in
        GPU-*|MIG-*) uuid=$id ;;
        *) uuid=$(printf '%s\n' "$TABLE" | awk -F', *' -v m="$id" '$1 == m { print $2; exit }') ;;
    esac
    if [ -z "$uuid" ]; then
        echo "aifmon prolog: job $JOB: no GPU with device number $id on this node; not attributed" >&2
        continue
    fi
    tmp=$(mktemp "$DIR/.prolog.XXXXXX") || { echo "aifmon prolog: cannot write in $DIR" >&2; exit 0; }
    printf 'job=%s\naccount=%s\npartition=%s\nqos=%s\n' "$(clean "$JOB")" "$(clean "${SLURM_JOB_ACCOUNT:-}")" \
        "$(clean "${SLURM_JOB_PARTITION:-}")" "$(clean "$QOS")" >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$DIR/${uuid}_$JOB"   # a rename: the exporter never reads a half-written file
done
exit 0
