#!/usr/bin/env python3
"""A minimal SNTP server (RFC 4330) for the QEMU clock scenario.

Answers every client request on ADDRESS:PORT with the host's clock and prints one line per
answer, so the test can tell the gateway asked. iPXE's `ntp` always uses port 123, so the
suite runs this inside a network namespace of its own.

Usage: sntp.py ADDRESS PORT
"""
import socket
import struct
import sys
import time

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
MODE_CLIENT, MODE_SERVER = 3, 4


def timestamp(now: float) -> bytes:
    seconds = int(now) + NTP_EPOCH_OFFSET
    fraction = int((now % 1) * (1 << 32)) & 0xFFFFFFFF
    return struct.pack("!II", seconds, fraction)


def answer(request: bytes, now: float) -> bytes | None:
    """The server reply to one request, or None for anything that is not a client request."""
    if len(request) < 48:
        return None
    version = (request[0] >> 3) & 0x7
    if request[0] & 0x7 != MODE_CLIENT or version not in (1, 2, 3, 4):
        return None
    flags = (0 << 6) | (version << 3) | MODE_SERVER  # leap indicator 0: clock synchronised
    header = struct.pack("!BBbbII4s", flags, 2, request[2], -20, 0, 0, b"LOCL")
    # reference, originate (the client's transmit timestamp, echoed), receive, transmit
    return header + timestamp(now) + request[40:48] + timestamp(now) + timestamp(now)


def main() -> None:
    address, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    print(f"sntp listening on {address}:{port}", flush=True)
    while True:
        request, peer = sock.recvfrom(512)
        reply = answer(request, time.time())
        if reply is None:
            print(f"ignored {len(request)} bytes from {peer[0]}", flush=True)
            continue
        sock.sendto(reply, peer)
        print(f"answered {peer[0]} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", flush=True)


if __name__ == "__main__":
    main()
