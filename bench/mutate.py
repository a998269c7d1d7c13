#!/usr/bin/env python3
"""Change a generated tree the way a busy volume changes between backups:
mutate.py DIR ROUND [PERCENT]

About PERCENT % (default 5) of the bytes change: some files are rewritten,
some get data appended or a region overwritten in place, a few are deleted
and new ones are added. The same DIR state and ROUND give the same result.
"""
import os
import random
import sys


def main():
    root, rnd = sys.argv[1], int(sys.argv[2])
    pct = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
    rng = random.Random(rnd * 7919)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    total = sum(os.path.getsize(f) for f in files)
    budget = int(total * pct / 100)
    rng.shuffle(files)
    changed = 0
    for path in files:
        if changed >= budget:
            break
        size = os.path.getsize(path)
        action = rng.random()
        if action < 0.3:  # rewrite
            with open(path, "wb") as f:
                f.write(rng.randbytes(size))
            changed += size
        elif action < 0.6:  # append
            n = max(1, size // 10)
            with open(path, "ab") as f:
                f.write(rng.randbytes(n))
            changed += n
        elif action < 0.9:  # overwrite a region in place
            n = max(1, size // 20)
            with open(path, "r+b") as f:
                f.seek(rng.randint(0, max(0, size - n)))
                f.write(rng.randbytes(n))
            changed += n
        else:  # delete, and add a new file of the same size elsewhere
            os.remove(path)
            with open(path + ".new%d" % rnd, "wb") as f:
                f.write(rng.randbytes(size))
            changed += size


if __name__ == "__main__":
    main()
