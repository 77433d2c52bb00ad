#!/bin/bash
# PID 1 of the kernel-lane VM (experiments/testbed/vm.py), after the initramfs switched root into
# this machine's own files (read-only 9p under a tmpfs overlay). It makes the guest a
# working Linux for Mininet and Open vSwitch, loads the kernel features the lane is for,
# starts Open vSwitch on the kernel datapath, runs the job from job.json in the output
# share, writes its exit status there, and powers off.
set -u
OUT=/mnt/eucalab-out
mark() { echo "eucalab-vm: mark $1"; }
finish() {
    echo "${1:-125}" >"$OUT/rc"
    sync
    echo o >/proc/sysrq-trigger
    sleep 30
}
trap 'finish 125' EXIT

mount -t proc proc /proc || echo "eucalab-vm: no /proc"
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# switch_root does not bring these: bash's process substitution needs /dev/fd.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
# A fresh /run: the host's /run/openvswitch must not show through. /tmp stays the overlay's
# (writes land in the guest's memory): a repository cloned under /tmp must be seen here.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mkdir -p /run/lock /var/run /run/netns
ip link set lo up
# ovs-ctl looks the host name up: give it one /etc/hosts knows.
hostname eucalab-vm
echo "127.0.1.1 eucalab-vm" >>/etc/hosts
mark boot

# What the lane is for (the same command as the CI recipe's), then what the testbed uses
# besides: veth pairs, tun (OVS internal ports), HTB, conntrack (the CC's NAT), bridge.
modprobe -a openvswitch sch_netem 8021q
# ip_gre and vxlan: the tunnels between servers when the VM serves as a second server.
modprobe -a veth tun sch_htb sch_tbf nf_conntrack bridge ip_gre vxlan || echo "eucalab-vm: a module failed to load"
# A fresh Open vSwitch database: the host's bridges must not appear in the guest.
rm -rf /etc/openvswitch/conf.db /etc/openvswitch/.conf.db.~lock~ /var/lib/openvswitch/*
mkdir -p /var/log/openvswitch /etc/openvswitch
/usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/tmp/ovs-ctl.log 2>&1 \
    || { cat /tmp/ovs-ctl.log; echo "eucalab-vm: ovs-ctl start failed"; finish 125; }
mark ovs

# A network card only when the job asked for one (the VM as a second server,
# experiments/testbed/vm.py serve()): the interface with the MAC from job.json gets its address.
nic=$(python3 -c 'import json, sys; n = json.load(open(sys.argv[1])).get("nic"); print(n["mac"], n["address"]) if n else None' "$OUT/job.json")
if [ -n "$nic" ]; then
    set -- $nic
    modprobe virtio_net
    dev=
    for _ in $(seq 100); do
        for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$1" ] && dev=${d##*/}; done
        [ -n "$dev" ] && break
        sleep 0.1
    done
    { [ -n "$dev" ] && ip addr add "$2" dev "$dev" && ip link set "$dev" up; } \
        || { echo "eucalab-vm: no network card with MAC $1"; finish 125; }
    mark nic
fi

# The job: argv, working directory and environment from the host.
python3 - "$OUT/job.json" >/tmp/job.sh <<'EOF'
import json, shlex, sys
job = json.load(open(sys.argv[1]))
for k, v in job["env"].items():
    print(f"export {k}={shlex.quote(v)}")
print(f"cd {shlex.quote(job['cwd'])} || exit 125")
print(" ".join(shlex.quote(a) for a in job["argv"]))
EOF
export HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
touch /run/eucalab-job-start
bash /tmp/job.sh </dev/null
rc=$?
mark job
# Run directories the job made in the repository's results/ (an experiment's, a bench's)
# live in the guest's memory: copy them to the share (regular files; sockets stay).
job_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' "$OUT/job.json" "$1"; }
cwd=$(job_field cwd) host_out=$(job_field out)
bash "$(dirname "$0")/vm_results.sh" "$cwd/results" "$OUT" "$host_out" /run/eucalab-job-start >/dev/null
/usr/share/openvswitch/scripts/ovs-ctl stop >/dev/null 2>&1
trap - EXIT
finish "$rc"
