#!/usr/bin/env python3
"""Writes the seed corpora of the wire_* fuzz targets (fuzz/seeds/wire_*/).

Frames are built from docs/bridge-protocol.md; run from fuzz/:
    python3 seeds/wire_seeds.py
The handshake and session targets build their situations from the input
bytes themselves, so their seeds are short op sequences.
"""
import os
import struct

def frame(code, body):
    return b"SB" + bytes([code, 0]) + struct.pack("<I", len(body)) + body

def s16(s):
    b = s.encode()
    return struct.pack("<H", len(b)) + b

HELLO = frame(1, struct.pack("<QHI", int.from_bytes(b"shmbusBR", "little"), 3, 1) + bytes(range(32)) + s16("robot-1"))
ANNOUNCE = frame(4, struct.pack("<IQQQI", 3, 0xFEED, 1 << 16, 4096, 2) + s16("imu") + s16("p-1") + s16("Imu"))
SUBSCRIBE = frame(5, struct.pack("<IQQ", 3, 0, 1 << 15))
DATA_PAYLOAD = bytes(range(64))
DATA = b"SB\x06\x00" + struct.pack("<I", 16 + len(DATA_PAYLOAD)) + struct.pack("<IQI", 3, 0, len(DATA_PAYLOAD)) + DATA_PAYLOAD
ACK = frame(7, struct.pack("<IQ", 3, 64))
GAP = frame(8, struct.pack("<IQQQ", 3, 64, 128, 9))
HEARTBEAT = frame(9, struct.pack("<H", 2) + struct.pack("<IQ", 3, 64) + struct.pack("<IQ", 4, 0))
ERROR = frame(10, struct.pack("<H", 4) + s16("unexpected frame"))
END = frame(11, struct.pack("<IQ", 3, 128))
NOISE = frame(12, bytes(range(96)))
CREDIT = frame(13, struct.pack("<IQ", 3, 1 << 16))
ALL = [HELLO, ANNOUNCE, SUBSCRIBE, DATA, ACK, GAP, HEARTBEAT, ERROR, END, NOISE, CREDIT]
NAMES = ["hello", "announce", "subscribe", "data", "ack", "gap", "heartbeat", "error", "end", "noise", "credit"]

def write(target, name, data):
    d = os.path.join("seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

for n, f in zip(NAMES, ALL):
    write("wire_frame_decode", n, f)

# wire_frame_reader: mode, flip_at u16, flip_mask, cuts, sizes, then frames.
stream = ANNOUNCE + DATA + ACK + HEARTBEAT + DATA + END
write("wire_frame_reader", "auth_whole", bytes([0, 0, 0, 0, 0]) + stream)
write("wire_frame_reader", "encrypt_cut", bytes([1 | 8, 0, 0, 0, 2]) + struct.pack("<HH", 5, 31) + stream)
write("wire_frame_reader", "flip", bytes([2, 40, 0, 0x10, 1]) + struct.pack("<H", 7) + stream)
write("wire_frame_reader", "skip_rest", bytes([4, 0, 0, 0, 1]) + struct.pack("<H", 3) + stream + b"SB\x07\x00")

CONFIG = {
    "minimal": 'node_name = "robot-1"\n',
    "full": '''node_name = "robot-1"
bus = "default"
root = "/dev/shm/shmbus"
listen = "127.0.0.1:7878"
protection = "encrypt"
handshake_timeout_ms = 3000
max_pending_handshakes = 64
heartbeat_interval_ms = 1000
peer_timeout_ms = 5000
chunk_bytes = 262144
notsent_lowat = 131072
pin_deadline_ms = 250
rescan_interval_ms = 2000
metrics_listen = "127.0.0.1:9465"

[[peer]]
name = "base-station"
address = "10.0.0.2:7878"

[[export]]
topics = "imu*"
mode = "untethered"
retention_bytes = 67108864

[[export]]
topics = "commands"
mode = "tethered"

[[import]]
topics = "?mu.*"
''',
    "remote": 'node_name = "n"\nlisten = "[::]:7878"\nallow_non_loopback_listen = true\n[[peer]]\nname = "peer-a"\naddress = "[fd00::2]:7878"\n',
    "bad_value": 'node_name = "robot 1"\nchunk_bytes = 1\n',
}
for n, t in CONFIG.items():
    write("wire_config", n, t.encode())

# wire_handshake: mode, setup, then edits (op, at u16, value) or bytes.
def edit_op(op, at, value):
    return bytes([op]) + struct.pack("<H", at) + bytes([value])

HS = {
    "m1_genuine": bytes([0, 0]),
    "m1_encrypt_flip": bytes([0, 8]) + edit_op(0, 70, 1),
    "m1_raw": bytes([1, 0]) + frame(1, struct.pack("<QHI", int.from_bytes(b"shmbusBR", "little"), 3, 7) + bytes(32) + s16("init-node")) + NOISE,
    "m1_old_version": bytes([1, 0]) + frame(1, struct.pack("<QHI", int.from_bytes(b"shmbusBR", "little"), 1, 7) + bytes(32) + s16("old")) + NOISE,
    "m2_genuine": bytes([2, 16]),
    "m2_cut": bytes([2, 0]) + edit_op(1, 40, 0),
    "confirm_genuine": bytes([3, 0]),
    "confirm_insert": bytes([3, 0]) + edit_op(2, 9, 0x41),
    "sealed_frames": bytes([4, 8, 3, 4]) + b"abcd" + bytes([0, 17]) + b"an error message!" + edit_op(3, 30, 0),
}
for n, d in HS.items():
    write("wire_handshake", n, d)

# wire_session: machine byte (even import, odd export), then (op, stream, args).
u16 = lambda v: struct.pack("<H", v)
u32 = lambda v: struct.pack("<I", v)
SESSION = {
    "import_oldest": bytes([0]) + bytes([0, 0]) + bytes([3, 0, 10, 1, 0])
        + bytes([4, 0, 0, 0, 3]) + u32(4096) + bytes([4, 0, 0, 1]) + u16(8) + u32(100)
        + bytes([5, 0, 0, 0]) + u16(2) + u16(40) + u32(64) + bytes([7, 0, 0]),
    "import_at": bytes([2]) + bytes([0, 1, 0, 2]) + bytes([2, 2, 3, 1, 6, 1, 1]) + u32(4) + u32(64)
        + bytes([1, 1]) + bytes([4, 1, 0, 0, 1]) + u32(0) + bytes([8, 1]) + u32(60000)
        + bytes([5, 1, 0, 0]) + u16(5000) + u16(7) + bytes([6, 1]) + u32(9) + bytes([7, 1, 0]),
    "export_tethered": bytes([1, 15, 3]) + bytes([0, 0, 0]) + bytes([5, 0, 8]) + bytes([1, 0, 0, 0]) + u16(64) + bytes([1])
        + bytes([4, 0]) + bytes([7, 0]) + u16(0) + bytes([2, 0, 0]) + bytes([6, 0]) + bytes([4, 0, 4, 0]) + bytes([2, 0, 0]) + bytes([10, 0]),
    "export_untethered_lapped": bytes([3, 1, 0]) + bytes([0, 1, 3]) + bytes([5, 1, 200]) + bytes([1, 1, 1, 0]) + u16(2) + bytes([1, 5])
        + bytes([4, 1]) + bytes([5, 1, 255]) + bytes([5, 1, 255]) + bytes([4, 1, 4, 1]) + bytes([8, 1]) + u32(100000) + bytes([3, 1, 1, 50]) + bytes([9, 1]) + bytes([0, 1, 3]),
}
for n, d in SESSION.items():
    write("wire_session", n, d)
