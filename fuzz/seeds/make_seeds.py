#!/usr/bin/env python3
"""Writes the seed corpora: the captured Linux frames of
src/wire/tests/captured.rs (parse_frame), their option bytes
(tcp_options), and a few engine scripts in the op encoding of
fuzz/harness.rs::engine (a handshake, data both ways, loss, timers).
Run from the repository root: python3 fuzz/seeds/make_seeds.py"""
import os, re, struct

src = open("src/wire/tests/captured.rs").read()
frames = {}
for name, body in re.findall(r'const (\w+): &\[&str\] = &\[(.*?)\];', src, re.S):
    frames[name] = bytes.fromhex("".join(re.findall(r'"([0-9a-f]+)"', body)))

def put(target, name, data):
    d = f"fuzz/corpus/{target}"
    os.makedirs(d, exist_ok=True)
    open(f"{d}/seed-{name}", "wb").write(data)

for name, f in frames.items():
    put("parse_frame", name.lower(), f)
    off = (f[46] >> 4) * 4
    put("tcp_options", name.lower(), f[54:34 + off])
put("tcp_options", "sack3_ts", bytes([1, 1, 8, 10]) + bytes(8) + bytes([1, 1, 5, 26]) + bytes(24))
put("tcp_options", "mss_sack3_ts_40", bytes([2, 4, 5, 0xb4, 8, 10]) + bytes(8) + bytes([5, 26]) + bytes(24))

u8 = lambda v: bytes([v & 0xff])
u16 = lambda v: struct.pack("<H", v & 0xffff)
u32 = lambda v: struct.pack("<I", v & 0xffffffff)
SYN, DATA, RXMT, ACK, GARBAGE, SEND, READ, TICK, COLLECT, END = 0, 1, 3, 4, 5, 6, 7, 8, 9, 11

def head(recv=7, send=7, ts=1, sack=1, delack=0, irs=0xfffff000):
    return u8(recv) + u8(send) + u8(ts) + u8(sack) + u8(delack) + u32(irs)

def syn(opts=0x0f, ws=7, mss=1460, window=64240):
    b = u8(SYN) + u8(opts)
    if opts & 1: b += u8(ws)
    if opts & 2: b += u16(mss - 88)
    return b + u16(window)

def ack(window=0xffff, delta=0, sack=True):
    # The SACK byte is read only when the peer offered SACK-permitted.
    return u8(ACK) + u8(delta) + u8(0) + u16(window) + (u8(0) if sack else b"")

collect = lambda loss=255: u8(COLLECT) + u8(loss)
send = lambda n: u8(SEND) + u16(n)
data = lambda n, fin=1, window=0xffff: u8(DATA) + u16(n) + u8(fin) + u16(window)
tick = lambda ms, big=1: u8(TICK) + u16(ms) + u8(big)

hs = head() + syn() + collect() + ack()
put("engine", "handshake", hs)
put("engine", "echo", hs + data(1000) + collect() + u8(READ) + send(3000) + collect() + ack() + tick(50) + collect())
bulk = hs + send(19000) + collect(3)
for _ in range(8):
    bulk += ack(window=2000) + tick(5) + collect(5) + send(19000) + collect()
bulk += tick(300) + collect() + ack() + tick(1200) + collect()
put("engine", "bulk_loss", bulk)
put("engine", "zero_window", hs + send(8000) + collect() + ack(window=0) + tick(1000) + collect() + tick(3000, 16) + collect() + ack() + collect())
put("engine", "peer_fin", hs + data(10, fin=0) + collect() + u8(READ) + u8(END) + u8(0) + collect() + tick(40) + collect())
put("engine", "no_options", head(ts=0, sack=0, irs=1) + syn(opts=0, window=1000) + collect() + ack(window=500, sack=False) + send(5000) + collect() + ack(sack=False) + collect())
