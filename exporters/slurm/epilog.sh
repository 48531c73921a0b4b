#!/bin/sh
# aifmon Slurm epilog: removes the mapping files the prolog wrote for this job on this node.
# Install beside the prolog (slurm.conf `Epilog=`). Removes only files of this job id, so a GPU
# already handed to the next job keeps that job's file. Never fails the job (see prolog.sh).
#   AIFMON_JOB_DIR  mapping directory (default /run/aifmon/jobs)

PATH=${PATH:+$PATH:}/usr/bin:/bin:/usr/sbin:/sbin   # slurmd sets no PATH; a wrapper may
DIR=${AIFMON_JOB_DIR:-/run/aifmon/jobs}
JOB=${SLURM_JOB_ID:-}
[ -n "$JOB" ] || exit 0
case "$JOB" in *[!0-9_]*) echo "aifmon epilog: odd job id $JOB; nothing removed" >&2; exit 0 ;; esac
for f in "$DIR"/*_"$JOB"; do
    [ -e "$f" ] && rm -f "$f"
done
exit 0
