#!/usr/bin/env python3
"""Generate a reproducible test tree: gentree.py DIR SIZE_MIB [SEED]

Half of the bytes are incompressible (random), half text-like (compressible
about 3-4x with zstd). File sizes follow a long-tailed distribution from a few
bytes to ~64 MiB, in nested directories of up to 100 entries. The same seed
always gives the same tree.
"""
import os
import random
import sys

WORDS = (b"backup restore snapshot chunk index pack blob tree key repository "
         b"kubernetes volume claim schedule retention prune check copy object "
         b"storage bucket encrypt compress dedup the a of and to in is for on").split()


def text_corpus(rng, size):
    out = bytearray()
    while len(out) < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
        out += line + b" %d\n" % rng.randint(0, 10**9)
    return bytes(out[:size])


def main():
    root, size_mib = sys.argv[1], int(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rng = random.Random(seed)
    corpus = text_corpus(rng, 8 << 20)
    target = size_mib << 20
    written, n = 0, 0
    while written < target:
        depth = rng.randint(0, 3)
        d = os.path.join(root, *("d%02d" % rng.randint(0, 9 if i else 24) for i in range(depth)))
        os.makedirs(d, exist_ok=True)
        size = min(int(rng.lognormvariate(9, 3)), 64 << 20, target - written)
        path = os.path.join(d, "f%07d.%s" % (n, "bin" if n % 2 else "txt"))
        with open(path, "wb") as f:
            if n % 2:
                f.write(rng.randbytes(size))
            else:
                left = size
                while left > 0:
                    start = rng.randrange(0, len(corpus) - 65536)
                    piece = corpus[start:start + min(left, 65536)]
                    f.write(piece)
                    left -= len(piece)
        written += size
        n += 1
    print(f"{n} files, {written >> 20} MiB in {root}")


if __name__ == "__main__":
    main()
