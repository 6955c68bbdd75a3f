#!/usr/bin/env python3
"""littlefs peer for the notafs-core benches (small_commit, random_overwrite).

Runs the littlefs C library (through the littlefs-python binding) on a
preallocated image file, the same file kind and directory as the notafs
image: block size 4096, read/prog size 512, no erase (a disk needs none),
and `sync` = fdatasync of the image. A littlefs commit is lfs_file_sync.

    littlefs_peer.py IMAGE MODE EVERY FILE_BYTES SEED DIRECT

Formats, mounts and prepares (untimed), prints READY, then serves lines
from stdin (the bench interleaves slices of every contender):

    RUN K BUDGET_S  ->  DONE ops secs bytes syncs

MODE append: K x (4 KiB append + lfs_file_sync); the file starts with one
4 KiB block synced before READY. MODE random: a FILE_BYTES file is written
and synced before READY; each RUN does K random 4 KiB-aligned overwrites
(splitmix64 from SEED, the sequence the Rust contenders use) with an
lfs_file_sync after every EVERY-th write overall, stopping early once
BUDGET_S seconds have passed (littlefs rewrites a file from the written
block to its end, so random overwrites of a large file take seconds each).
bytes = bytes littlefs programmed, syncs = device syncs, both during the
RUN. The Python callbacks (read/prog/sync) add a few microseconds per
device request to littlefs's own cost.
"""
import mmap
import os
import sys
import time

import littlefs
from littlefs import lfs

BS = 4096
IO = 512


class Ctx(littlefs.UserContext):
    def __init__(self, path, direct):
        flags = os.O_RDWR | (os.O_DIRECT if direct else 0)
        self.fd = os.open(path, flags)
        self.direct = direct
        self.buf = mmap.mmap(-1, 1 << 20)  # page-aligned, for O_DIRECT
        self.view = memoryview(self.buf)
        self.bytes = 0
        self.syncs = 0

    def read(self, cfg, block, off, size):
        pos = block * BS + off
        if self.direct:
            n = os.preadv(self.fd, [self.view[:size]], pos)
            return bytearray(self.view[:n])
        return bytearray(os.pread(self.fd, size, pos))

    def prog(self, cfg, block, off, data):
        pos = block * BS + off
        n = len(data)
        if self.direct:
            self.view[:n] = data
            os.pwrite(self.fd, self.view[:n], pos)
        else:
            os.pwrite(self.fd, data, pos)
        self.bytes += n
        return 0

    def erase(self, cfg, block):
        return 0

    def sync(self, cfg):
        os.fdatasync(self.fd)
        self.syncs += 1
        return 0


def splitmix(state):
    m = (1 << 64) - 1
    while True:
        state = (state + 0x9E3779B97F4A7C15) & m
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        yield z ^ (z >> 31)


def main():
    image, mode, every, file_bytes, seed, direct = sys.argv[1:7]
    every, file_bytes, seed = int(every), int(file_bytes), int(seed)
    direct = direct == "1"
    blocks = os.path.getsize(image) // BS
    ctx = Ctx(image, direct)
    fs = littlefs.LittleFS(
        context=ctx,
        mount=False,
        block_size=BS,
        block_count=blocks,
        read_size=IO,
        prog_size=IO,
        cache_size=BS,
        lookahead_size=min(blocks // 8 // 8 * 8, 8192),
        block_cycles=-1,
    )
    fs.format()
    fs.mount()
    F = lfs.LFSFileFlag
    rec = bytes([0x5A]) * BS
    if mode == "append":
        fh = lfs.file_open(fs.fs, "data", F.wronly | F.creat | F.append)
        lfs.file_write(fs.fs, fh, bytes([1]) * BS)
        lfs.file_sync(fs.fs, fh)
    elif mode == "random":
        fh = lfs.file_open(fs.fs, "data", F.rdwr | F.creat)
        chunk = bytes([0xA5]) * (1 << 20)
        for _ in range(file_bytes >> 20):
            lfs.file_write(fs.fs, fh, chunk)
        lfs.file_sync(fs.fs, fh)
        rng = splitmix(seed)
        nblocks = file_bytes // BS
    else:
        sys.exit(f"unknown mode {mode}")
    print("READY", flush=True)
    i = 0
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "RUN":
            break
        k, budget = int(cmd[1]), float(cmd[2])
        b0, s0 = ctx.bytes, ctx.syncs
        t = time.perf_counter()
        done = 0
        if mode == "append":
            for _ in range(k):
                lfs.file_write(fs.fs, fh, rec)
                lfs.file_sync(fs.fs, fh)
                done += 1
        else:
            for _ in range(k):
                lfs.file_seek(fs.fs, fh, (next(rng) % nblocks) * BS, 0)
                lfs.file_write(fs.fs, fh, rec)
                done += 1
                i += 1
                if i % every == 0:
                    lfs.file_sync(fs.fs, fh)
                if time.perf_counter() - t > budget:
                    if i % every != 0:
                        lfs.file_sync(fs.fs, fh)
                    break
        secs = time.perf_counter() - t
        print(f"DONE {done} {secs:.6f} {ctx.bytes - b0} {ctx.syncs - s0}", flush=True)
    lfs.file_close(fs.fs, fh)
    fs.unmount()


if __name__ == "__main__":
    main()
