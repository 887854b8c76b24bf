#!/usr/bin/env python3
"""Writes two dnsperf -B query files for the DNSSEC bench (bench/dnssec.sh): the same queries
for the dynamic names api.example.net (A) and geo.example.net (AAAA), each with an ECS
option from one of 512 client subnets spread over the address space, one file with DO set on
every query (signed answers) and one with DO clear (unsigned answers)."""
import ipaddress
import struct
import sys


def name_wire(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def query(name, qtype, subnet, do):
    msg = struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 1)
    msg += name_wire(name) + struct.pack(">HH", qtype, 1)
    net = ipaddress.ip_network(subnet)
    addr = net.network_address.packed[: (net.prefixlen + 7) // 8]
    body = struct.pack(">HBB", 1, net.prefixlen, 0) + addr
    options = struct.pack(">HH", 8, len(body)) + body
    flags = 0x8000 if do else 0
    msg += b"\x00" + struct.pack(">HHBBHH", 41, 1232, 0, 0, flags, len(options)) + options
    return msg


def main():
    subnets = [f"{a}.{b}.0.0/16" for a in range(1, 224, 7) for b in range(0, 256, 16)][:512]
    for path, do in ((sys.argv[1], True), (sys.argv[2], False)):
        with open(path, "wb") as f:
            for i, s in enumerate(subnets):
                for name, qtype in (("api.example.net", 1), ("geo.example.net", 28)):
                    m = query(name, qtype, s, do)
                    f.write(struct.pack(">H", len(m)) + m)
    print(f"{len(subnets) * 2} queries per file, {len(subnets)} subnets")


if __name__ == "__main__":
    main()
