#!/bin/bash
# The kernel-lane guest's last step (vm_guest.sh): copy the run directories a job made in
# the repository's results/ (they live in the guest's memory) to the share that goes back
# to the host, printing each one copied.
#
#   vm_results.sh RESULTS SHARE HOST_OUT STAMP
#
# RESULTS: the repository's results/ as the guest sees it; SHARE: the guest's mount of the
# output share; HOST_OUT: the host's path of that same share. The guest sees the host's
# root, so HOST_OUT shows through inside RESULTS when the share lies there (eucalab vm
# test puts it in results/): it is never copied, or the share would be copied into itself
# over and over (over 9p cp cannot tell it is the same directory). STAMP: a file touched
# when the job started; only directories newer than it are the job's.
set -u
results=$1 share=$2 host_out=$3 stamp=$4
[ -d "$results" ] || exit 0
host_out=$(realpath -m "$host_out")
find "$results" -mindepth 1 -maxdepth 1 -type d -newer "$stamp" -print0 |
while IFS= read -r -d '' dir; do
    [ "$(realpath -m "$dir")" = "$host_out" ] && continue
    cp -r --no-preserve=mode -t "$share" "$dir" 2>/dev/null || true
    echo "$dir"
done
