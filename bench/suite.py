#!/usr/bin/env python3
"""Cairn's benchmark suite: Cairn and its anchors (restic, BorgBackup, rustic)
side by side on the same data, on this machine.

    bench/suite.py                       # everything, 3 repetitions
    bench/suite.py --datasets linux,db --reps 3 --tools cairn,restic,borg
    bench/suite.py --quick               # small datasets, 1 repetition (a smoke run)

For each dataset and repetition, every tool gets a fresh repository (local, on
the same disk, encryption on, each with its defaults; Borg with
repokey-blake2 and -C zstd,3) and the steps run interleaved, the order rotating
with each repetition (A B C, then B C A, C A B ...):

  first     backup of the dataset
  unchanged backup of the same, unchanged tree
  changed   backup after the dataset's edit (applied in place, once, to the
            tree all tools back up, so unchanged files keep inode and ctime)
  restore   full restore of the latest snapshot into a new, empty filesystem
            (like a restore Job into a fresh PVC), until the data is on disk:
            the timed command is the tool's restore followed by `sync` (Cairn
            syncs itself; restic, Borg and rustic leave dirty pages behind),
            then verified with `diff -r` against the tree (not timed)

Restore targets (--restore-into):
  volume    a fresh ext4 (mkfs defaults, with its journal) per restore: a sparse
            image on WORK's disk behind a loop device with direct I/O. Needs
            root, losetup and mkfs.ext4; the default when they are there.
  dir       an empty directory on WORK's filesystem. Measures that filesystem's
            state too: on ext4 without a journal, inodes freed in the last ~6
            minutes are skipped one by one when new ones are allocated, so a
            restore right after the previous tool's tree was deleted pays
            seconds to minutes of kernel time depending on its position.

Before every timed step, `sync` flushes what earlier steps left dirty.

Each step runs under /usr/bin/time (wall, user+sys CPU, peak RSS); repository
bytes are measured after each backup. Results are appended as JSON lines to
WORK/results.jsonl and summarised (median and min-max, ratios to each anchor)
into WORK/summary.md.

Datasets (prepared once under WORK/data, reproducible):
  linux   Debian's linux-source-6.1 (~1.3 GB, ~80k files); edit: 2 % of the
          files edited, 0.5 % deleted, 0.5 % added
  db      4 files of DB-like 8 KiB pages (2 GiB); edit: 1000 random pages
          rewritten in place
  insert  one 1 GiB file, half random, half text; edit: 100 small insertions
          at random offsets
  tiny    1 million files of 0-256 bytes in 1000 directories; edit: 1 % edited,
          0.5 % deleted, 0.5 % added

Anchors are installed by the suite when missing: restic (Debian package),
BorgBackup (PyPI, in a venv under WORK/tools), rustic (crates.io `rustic-rs`,
under WORK/tools). Not part of the test suite.
"""
import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password"
BORG_VERSION = "1.4.5"
ALL_TOOLS = ["cairn", "restic", "borg", "rustic"]
ALL_DATASETS = ["linux", "db", "insert", "tiny"]
STEPS = ["first", "unchanged", "changed", "restore"]


def log(msg):
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def have(cmd):
    return shutil.which(cmd) is not None


# --------------------------------------------------------------------------
# Tools


def apt_install(*pkgs):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    run(prefix + ["apt-get", "install", "-y", "-q", *pkgs], env=env, stdout=subprocess.DEVNULL)


def ensure_tools(work, tools):
    """Install what is missing; return {tool: (binary, version)}."""
    found = {}
    tdir = work / "tools"
    tdir.mkdir(parents=True, exist_ok=True)
    if "cairn" in tools:
        log("building cairn (release)")
        run(["cargo", "build", "--release", "--locked", "-q", "-p", "cairn-agent"], cwd=ROOT)
        b = str(ROOT / "target/release/cairn")
        found["cairn"] = (b, subprocess.run([b, "--version"], capture_output=True, text=True).stdout.strip())
    if "restic" in tools:
        if not have("restic"):
            log("installing restic (Debian)")
            apt_install("restic")
        v = subprocess.run(["restic", "version"], capture_output=True, text=True).stdout.split()[1]
        found["restic"] = ("restic", f"restic {v}")
    if "borg" in tools:
        borg = tdir / "borg-venv/bin/borg"
        if not borg.exists():
            log(f"installing borgbackup {BORG_VERSION} (PyPI) and its build dependencies")
            apt_install("pkg-config", "libacl1-dev", "liblz4-dev", "libzstd-dev",
                        "libxxhash-dev", "libssl-dev")
            run([sys.executable, "-m", "venv", str(tdir / "borg-venv")])
            run([str(tdir / "borg-venv/bin/pip"), "install", "-q", f"borgbackup=={BORG_VERSION}"])
        v = subprocess.run([str(borg), "--version"], capture_output=True, text=True).stdout.strip()
        found["borg"] = (str(borg), v)
    if "rustic" in tools:
        rustic = tdir / "bin/rustic"
        if not rustic.exists():
            log("installing rustic (cargo install rustic-rs; a long build)")
            run(["cargo", "install", "-q", "--locked", "rustic-rs", "--root", str(tdir)])
        v = subprocess.run([str(rustic), "--version"], capture_output=True, text=True).stdout.strip()
        found["rustic"] = (str(rustic), v)
    return found


class Tool:
    """How to init, back up and restore with one tool (its defaults)."""

    def __init__(self, name, binary, work):
        self.name, self.bin, self.work = name, binary, work
        self.count = 0
        self.env = dict(os.environ,
                        CAIRN_PASSWORD=PASSWORD, RESTIC_PASSWORD=PASSWORD,
                        BORG_PASSPHRASE=PASSWORD, RUSTIC_PASSWORD=PASSWORD,
                        BORG_BASE_DIR=str(work / "borg-base"),
                        RESTIC_CACHE_DIR=str(work / "cache/restic"),
                        XDG_CACHE_HOME=str(work / "cache"))

    def init(self, repo):
        self.count = 0
        b = self.bin
        cmd = {
            "cairn": [b, "--repo", repo, "init"],
            "restic": [b, "-r", repo, "init"],
            "borg": [b, "init", "-e", "repokey-blake2", repo],
            "rustic": [b, "-r", repo, "init"],
        }[self.name]
        run(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def backup(self, repo, src):
        self.count += 1
        b = self.bin
        return {
            "cairn": [b, "--repo", repo, "backup", src],
            "restic": [b, "-r", repo, "backup", src],
            "borg": [b, "create", "-C", "zstd,3", f"{repo}::b{self.count}", src],
            "rustic": [b, "-r", repo, "backup", src],
        }[self.name]

    def restore(self, repo, target):
        b = self.bin
        return {
            "cairn": [b, "--repo", repo, "restore", "latest", "--target", target],
            "restic": [b, "-r", repo, "restore", "latest", "--target", target],
            "borg": ["sh", "-c", f'cd "$1" && exec "$2" extract "$3::b{self.count}"', "sh",
                     target, b, repo],
            "rustic": [b, "-r", repo, "restore", "latest", target],
        }[self.name]


# --------------------------------------------------------------------------
# Datasets

WORDS = (b"backup restore snapshot chunk index pack blob tree key repository "
         b"kubernetes volume claim schedule retention prune check copy object "
         b"storage bucket encrypt compress dedup select insert update where "
         b"from table row page commit the a of and to in is for on").split()


def text_corpus(rng, size):
    out = bytearray()
    while len(out) < size:
        line = b" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
        out += line + b" %d\n" % rng.randint(0, 10**9)
    return bytes(out[:size])


def prepare_linux(dest, quick):
    dl = dest.parent / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    debs = list(dl.glob("linux-source-6.1_*.deb"))
    if not debs:
        log("downloading Debian's linux-source-6.1")
        run(["apt-get", "download", "-q", "linux-source-6.1"], cwd=dl, stdout=subprocess.DEVNULL)
        debs = list(dl.glob("linux-source-6.1_*.deb"))
    ex = dl / "deb"
    if not ex.exists():
        run(["dpkg-deb", "-x", str(debs[0]), str(ex)])
    tarball = next((ex / "usr/src").glob("linux-source-6.1.tar.*"))
    tmp = dest.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    members = ["linux-source-6.1/fs"] if quick else []
    run(["tar", "xf", str(tarball), "-C", str(tmp), *members])
    (tmp / "linux-source-6.1").rename(dest)
    shutil.rmtree(tmp)


def prepare_db(dest, quick):
    rng = random.Random(11)
    corpus = text_corpus(rng, 16 << 20)
    files, size = (2, 64 << 20) if quick else (4, 512 << 20)
    dest.mkdir(parents=True)
    for i in range(files):
        with open(dest / f"table-{i}.db", "wb") as f:
            for page in range(size // 8192):
                f.write(db_page(rng, corpus, i, page, 0))


def db_page(rng, corpus, fileno, page, version):
    # A page: header, ~3 KiB of incompressible payload (hashes, packed
    # numbers), ~5 KiB of row text: compresses about 1.6x, like a busy table.
    header = b"PAGE%08d%08d%08d" % (fileno, page, version)
    off = rng.randrange(len(corpus) - 5200)
    body = rng.randbytes(3000) + corpus[off:off + 8192 - 3000 - len(header)]
    return header + body


def prepare_insert(dest, quick):
    rng = random.Random(13)
    half = (32 << 20) if quick else (512 << 20)
    dest.mkdir(parents=True)
    corpus = text_corpus(rng, 64 << 20)
    with open(dest / "big.img", "wb") as f:
        left = half
        while left:
            n = min(left, 8 << 20)
            f.write(rng.randbytes(n))
            left -= n
        left = half
        while left:
            n = min(left, len(corpus))
            f.write(corpus[:n])
            left -= n
            corpus = corpus[1:] + corpus[:1]  # shift so repeats are not identical


def prepare_tiny(dest, quick):
    rng = random.Random(17)
    corpus = text_corpus(rng, 4 << 20)
    dirs, per = (100, 200) if quick else (1000, 1000)
    dest.mkdir(parents=True)
    for d in range(dirs):
        dd = dest / f"d{d:04d}"
        dd.mkdir()
        for i in range(per):
            n = rng.randrange(257)
            off = rng.randrange(len(corpus) - 300)
            data = corpus[off:off + n] if i % 2 else rng.randbytes(n)
            with open(dd / f"f{i:05d}", "wb") as f:
                f.write(data)


def edit_files(root, seed, edit_pct, delete_pct, add_pct, corpus_size=4 << 20):
    """Edit, delete and add files in place (deterministic for a tree and seed)."""
    rng = random.Random(seed)
    corpus = text_corpus(rng, corpus_size)
    files = sorted(str(Path(d) / f) for d, _, fs in os.walk(root) for f in fs)
    dirs = sorted({str(Path(f).parent) for f in files})
    rng.shuffle(files)
    n_edit = int(len(files) * edit_pct / 100)
    n_del = int(len(files) * delete_pct / 100)
    n_add = int(len(files) * add_pct / 100)
    for path in files[:n_edit]:
        if os.path.islink(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        pos = rng.randrange(len(data) + 1)
        off = rng.randrange(len(corpus) - 100)
        with open(path, "wb") as f:  # in place: same inode, new content
            f.write(data[:pos] + corpus[off:off + rng.randint(1, 80)] + data[pos:])
    for path in files[n_edit:n_edit + n_del]:
        os.unlink(path)
    for i in range(n_add):
        d = rng.choice(dirs)
        off = rng.randrange(len(corpus) - 20000)
        with open(Path(d) / f"bench-added-{seed}-{i}", "wb") as f:
            f.write(corpus[off:off + rng.randint(0, 16384)])


def edit_db(root, seed):
    rng = random.Random(seed)
    corpus = text_corpus(rng, 16 << 20)
    files = sorted(root.glob("*.db"))
    for _ in range(1000):
        i = rng.randrange(len(files))
        pages = os.path.getsize(files[i]) // 8192
        page = rng.randrange(pages)
        with open(files[i], "r+b") as f:
            f.seek(page * 8192)
            f.write(db_page(rng, corpus, i, page, seed))


def edit_insert(root, seed):
    rng = random.Random(seed)
    path = root / "big.img"
    size = os.path.getsize(path)
    offsets = sorted(rng.randrange(size) for _ in range(100))
    tmp = root / "big.img.tmp"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        pos = 0
        for off in offsets:
            dst.write(src.read(off - pos))
            dst.write(rng.randbytes(rng.randint(1, 64)))
            pos = off
        shutil.copyfileobj(src, dst, 8 << 20)
    os.replace(tmp, path)


DATASETS = {
    "linux": (prepare_linux, lambda p, s: edit_files(p, s, 2, 0.5, 0.5)),
    "db": (prepare_db, edit_db),
    "insert": (prepare_insert, edit_insert),
    "tiny": (prepare_tiny, lambda p, s: edit_files(p, s, 1, 0.5, 0.5)),
}


def pristine(work, name, quick):
    dest = work / "data" / (name + ("-quick" if quick else ""))
    if not dest.exists():
        log(f"preparing dataset {name}")
        DATASETS[name][0](dest, quick)
    return dest


def tree_stats(path):
    files, size = 0, 0
    for d, _, fs in os.walk(path):
        for f in fs:
            files += 1
            try:
                size += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return files, size


def du(path):
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


# --------------------------------------------------------------------------
# Running


def measure(cmd, env, out):
    os.sync()
    tfile = out / "time.txt"
    with open(out / "stderr.txt", "wb") as err:
        p = subprocess.run(["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(tfile), *cmd],
                           env=env, stdout=subprocess.DEVNULL, stderr=err)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}): "
                           + (out / "stderr.txt").read_text(errors="replace")[-2000:])
    wall, user, sys_, rss = tfile.read_text().split()[-4:]
    return {"wall": float(wall), "cpu": float(user) + float(sys_), "rss_mib": int(rss) / 1024}


class FreshVolume:
    """A new ext4 filesystem for one restore, mounted at WORK/restore/TOOL:
    a sparse image (twice the data, 5 KiB per file, plus 1 GiB; at least
    4 GiB; one inode per source file plus headroom) on a loop device with direct I/O, so the page
    cache holds the restored files once."""

    def __init__(self, work, name, files, size):
        self.img = work / f"restore-{name}.img"
        self.mnt = work / "restore" / name
        self.files, self.size = files, size
        self.dev = None

    def __enter__(self):
        self.img.unlink(missing_ok=True)
        with open(self.img, "wb") as f:
            # Every non-empty file takes at least one 4 KiB block.
            f.truncate(max(4 << 30, 2 * self.size + self.files * 5120 + (1 << 30)))
        inodes = int(self.files * 1.25) + 65536
        run(["mkfs.ext4", "-q", "-F", "-N", str(inodes),
             "-E", "lazy_itable_init=1,lazy_journal_init=1", str(self.img)])
        self.dev = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", str(self.img)],
                                  capture_output=True, text=True, check=True).stdout.strip()
        shutil.rmtree(self.mnt, ignore_errors=True)
        self.mnt.mkdir(parents=True)
        # noinit_itable: the image is sparse (reads as zeros), no background zeroing.
        run(["mount", "-o", "noinit_itable", self.dev, str(self.mnt)])
        return self.mnt

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.mnt)], check=False)
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
        self.img.unlink(missing_ok=True)
        shutil.rmtree(self.mnt, ignore_errors=True)


class EmptyDir:
    """An empty directory at WORK/restore/TOOL (see --restore-into dir)."""

    def __init__(self, work, name, files, size):
        self.path = work / "restore" / name

    def __enter__(self):
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        return self.path

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def volumes_available():
    return os.geteuid() == 0 and all(have(c) for c in ("losetup", "mkfs.ext4", "mount"))


def restored_root(target, src):
    """Where a tool put the restored tree (all restore the full source path)."""
    cand = target / str(src).lstrip("/")
    return cand if cand.exists() else target


def verify(restored, live):
    p = subprocess.run(["diff", "-r", "--no-dereference", "-q", str(live), str(restored)],
                       capture_output=True, text=True)
    return p.returncode == 0, p.stdout[-1000:]


def run_dataset(name, rep, tools, work, quick, results, target_kind):
    src_pristine = pristine(work, name, quick)
    live = work / "live" / name
    log(f"{name} rep {rep + 1}: copying the dataset to {live}")
    shutil.rmtree(live, ignore_errors=True)
    live.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", str(src_pristine), str(live)])
    files, size = tree_stats(live)
    repos = {}
    for t in tools:
        repo = work / "repos" / f"{name}-{t.name}"
        shutil.rmtree(repo, ignore_errors=True)
        repo.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / "cache", ignore_errors=True)
        t.init(str(repo))
        repos[t.name] = repo

    def record(step, t, m, **extra):
        row = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
               "dataset": name, "quick": quick, "rep": rep, "step": step, "tool": t.name,
               "files": files, "bytes": size, **m, **extra}
        results.append(row)
        with open(work / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"  {step:9} {t.name:7} {m['wall']:8.2f} s  {m['cpu']:8.2f} CPU-s  "
            f"{m['rss_mib']:7.1f} MiB  " + " ".join(f"{k}={v}" for k, v in extra.items()))

    # The order rotates with the repetition (A B C, B C A, C A B ...), so no tool
    # always runs first after the deletions and writes of the step before.
    shift = rep % len(tools)
    order = tools[shift:] + tools[:shift]
    for step in STEPS:
        if step == "changed":
            log(f"{name}: editing the tree in place")
            DATASETS[name][1](live, 1000 + rep)
            files, size = tree_stats(live)
        for t in order:
            repo = repos[t.name]
            if step == "restore":
                with target_kind(work, t.name, files, size) as target:
                    cmd = ["sh", "-c", '"$@" && sync', "sh", *t.restore(str(repo), str(target))]
                    m = measure(cmd, t.env, work)
                    ok, diff = verify(restored_root(target, live), live)
                if not ok:
                    log(f"  {t.name} RESTORE DIFFERS:\n{diff}")
                record(step, t, m, verified=ok,
                       into="volume" if target_kind is FreshVolume else "dir")
            else:
                m = measure(t.backup(str(repo), str(live)), t.env, work)
                record(step, t, m, repo_bytes=du(repo))
    for repo in repos.values():
        shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(live, ignore_errors=True)  # disk space: only the pristine copy stays


def summarise(results, versions, work):
    lines = [f"# Benchmark results ({datetime.date.today()})", "",
             f"Machine: {os.cpu_count()} CPUs, "
             + subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                              capture_output=True, text=True).stdout.strip()
             + f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') >> 30} GiB RAM.",
             "Tools: " + "; ".join(versions.values()) + ".", ""]
    into = sorted({r.get("into", "dir") for r in results if r["step"] == "restore"})
    if into:
        lines[-1:] = ["Restores into: " + ", ".join(
            "a fresh ext4 volume each (loop device, direct I/O)" if i == "volume"
            else "an empty directory on the work filesystem" for i in into) + ".", ""]
    datasets = sorted({r["dataset"] for r in results}, key=lambda d: ALL_DATASETS.index(d))
    tools = [t for t in ALL_TOOLS if any(r["tool"] == t for r in results)]
    for ds in datasets:
        rows = [r for r in results if r["dataset"] == ds]
        reps = len({r["rep"] for r in rows})
        first = [r for r in rows if r["step"] == "first"]
        size, nfiles = first[0]["bytes"], first[0]["files"]
        lines += [f"## {ds}: {size / 2**20:.0f} MiB in {nfiles} files, {reps} repetition(s)", "",
                  "| step | tool | wall s (median, min-max) | MB/s | CPU s | peak RSS MiB | repo MiB | cairn speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
        for step in STEPS:
            med = {}
            for t in tools:
                rs = [r for r in rows if r["step"] == step and r["tool"] == t]
                if rs:
                    med[t] = statistics.median(r["wall"] for r in rs)
            for t in tools:
                rs = [r for r in rows if r["step"] == step and r["tool"] == t]
                if not rs:
                    continue
                w = [r["wall"] for r in rs]
                repo = (f"{statistics.median(r['repo_bytes'] for r in rs) / 2**20:.0f}"
                        if "repo_bytes" in rs[0] else
                        ("verified" if all(r.get("verified") for r in rs) else "**DIFFERS**"))
                speed = "" if t == "cairn" or "cairn" not in med else f"{med[t] / med['cairn']:.2f}x"
                lines.append(
                    f"| {step} | {t} | {statistics.median(w):.2f} ({min(w):.2f}-{max(w):.2f}) "
                    f"| {rs[0]['bytes'] / 1e6 / max(statistics.median(w), 1e-9):.0f} "
                    f"| {statistics.median(r['cpu'] for r in rs):.2f} "
                    f"| {max(r['rss_mib'] for r in rs):.0f} | {repo} | {speed} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (work / "summary.md").write_text(text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "bench/work"), help="work directory (datasets, repos, results)")
    ap.add_argument("--datasets", default=",".join(ALL_DATASETS))
    ap.add_argument("--tools", default=",".join(ALL_TOOLS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small datasets, one repetition")
    ap.add_argument("--summary-only", action="store_true", help="summarise WORK/results.jsonl")
    ap.add_argument("--prepare-only", action="store_true", help="prepare the datasets and stop")
    ap.add_argument("--restore-into", choices=["auto", "volume", "dir"], default="auto",
                    help="restore into a fresh loop-mounted ext4 per restore (volume, needs root) "
                         "or an empty directory (dir); auto: volume when possible")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    names = [d for d in a.datasets.split(",") if d]
    for d in names:
        if d not in DATASETS:
            sys.exit(f"unknown dataset {d}; choose from {', '.join(ALL_DATASETS)}")
    wanted = [t for t in a.tools.split(",") if t]
    if a.summary_only:
        results = [json.loads(l) for l in open(work / "results.jsonl")]
        results = [r for r in results if r["dataset"] in names and r["tool"] in wanted]
        print(summarise(results, {}, work))
        return
    if a.prepare_only:
        for d in names:
            p = pristine(work, d, a.quick)
            files, size = tree_stats(p)
            log(f"{d}: {p} ({files} files, {size / 2**20:.0f} MiB)")
        return
    versions = ensure_tools(work, wanted)
    tools = [Tool(n, versions[n][0], work) for n in wanted]
    reps = 1 if a.quick else a.reps
    into = a.restore_into
    if into == "auto":
        into = "volume" if volumes_available() else "dir"
    elif into == "volume" and not volumes_available():
        sys.exit("--restore-into volume needs root, losetup, mkfs.ext4 and mount")
    log(f"restores go into {'a fresh ext4 volume each' if into == 'volume' else 'an empty directory'}")
    target_kind = FreshVolume if into == "volume" else EmptyDir
    results = []
    for rep in range(reps):
        for d in names:
            run_dataset(d, rep, tools, work, a.quick, results, target_kind)
    print(summarise(results, {k: v[1] for k, v in versions.items()}, work))


if __name__ == "__main__":
    main()
