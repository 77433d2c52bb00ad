#!/bin/bash
# The job of the kernel-lane VM serving as a second server (experiments/testbed/vm.py, serve()):
# sshd with this run's own keys, listening on the guest's address only. Open vSwitch
# already runs. The host ends the VM by killing qemu (the guest keeps nothing).
set -eu
ADDR=$1
KEYS=$EUCALAB_VM_OUT/ssh
install -d -m 700 /run/eucalab-ssh
install -m 600 "$KEYS/host_key" /run/eucalab-ssh/host_key
install -m 600 "$KEYS/client_key.pub" /run/eucalab-ssh/authorized_keys
mkdir -p /run/sshd
echo "eucalab-vm: mark sshd"
exec /usr/sbin/sshd -D -e -f /dev/null -h /run/eucalab-ssh/host_key -o "ListenAddress=$ADDR" \
    -o AuthorizedKeysFile=/run/eucalab-ssh/authorized_keys -o PermitRootLogin=prohibit-password \
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o UseDNS=no \
    -o PidFile=/run/eucalab-ssh/sshd.pid -o MaxStartups=200 -o MaxSessions=200
