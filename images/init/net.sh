#!/bin/sh
# Run by images/init/disk-script: eth0 at 10.0.2.15/24, the host at 10.0.2.1.
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "net: eth0 $(cat /sys/class/net/eth0/address)"
ping -c 1 -W 10 10.0.2.1 >/dev/null && echo "net: the host answered a ping"
wget -q -O /fetched http://10.0.2.1:8000/hello.txt && echo "net: fetched: $(cat /fetched)"
echo "written in the guest on $(cat /sys/block/vda/serial)" > /written
sync
echo "net: wrote /written"
