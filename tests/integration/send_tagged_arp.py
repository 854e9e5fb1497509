"""Sends one broadcast ARP request carrying an 802.1Q header out of an interface, through a raw
packet socket: for test_networking, whose kernel has no VLAN devices to tag with.

usage: send_tagged_arp.py IFACE VLAN SRC_MAC SRC_IP TARGET_IP"""

import socket
import struct
import sys


def main():
    iface, vlan, mac, src_ip, target_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    if not 1 <= vlan <= 4094:
        raise SystemExit("VLAN must be 1-4094")
    src = bytes.fromhex(mac.replace(":", ""))
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, src, socket.inet_aton(src_ip),
                      b"\0" * 6, socket.inet_aton(target_ip))
    frame = b"\xff" * 6 + src + struct.pack("!HHH", 0x8100, vlan, 0x0806) + arp
    frame += b"\0" * max(0, 64 - len(frame))  # the 60-byte minimum plus the 4-byte tag
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        s.send(frame)


if __name__ == "__main__":
    main()
