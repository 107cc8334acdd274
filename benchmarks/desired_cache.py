"""Loading N persons: the plain C loader, a cold load, and loads served by the parsed cache.

Runs by hand, in-process (no start-up, no targets), best of R runs, wall and CPU seconds:
    .venv/bin/python benchmarks/desired_cache.py [N] [--files F] [--photos] [--runs R]
With --files F the persons are split over F files of a directory, and the last row is a load
after an edit of one of them (only that file is parsed again).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from reconciler.core.records import Hasher
from reconciler.sources import yamlfile
from reconciler.sources.parsed import ParsedCache

JPG = b"\xff\xd8\xff\xe0" + b"\x00" * 28
HEADER = """\
version: 1
targets:
  lobby: {kind: nebula_pass, url: "http://127.0.0.1:1", username: admin, password: "${PW}"}
departments:
  - {id: HQ, name: Headquarters}
"""


def person(n: int, photos: bool) -> str:
    lines = [
        f'  - id: "{100000 + n}"',
        f"    name: 张三 {n}",
        f"    type: {'visitor' if n % 10 == 0 else 'staff'}",
        f'    job_number: "J{n:06d}"',
        f"    email: person{n}@example.com",
        f'    phone: "138{n:08d}"',
        "    department: HQ",
        f"    groups: [hq, floor{n % 7}]",
        f'    card: "{n:08d}"',
        f'    id_number: "11010119900101{n % 10000:04d}"',
        f'    pin: "{n % 10000:04d}"',
        f"    remark: employee number {n}",
        f"    labels: {{building: B{n % 3}}}",
    ]
    if n % 10 == 0:
        lines += [
            "    valid_from: 2026-11-01T09:00:00+08:00",
            "    valid_until: 2026-11-30T18:00:00+08:00",
        ]
    if photos:
        lines.append(f"    photo: photos/{n}.jpg")
    return "\n".join(lines) + "\n"


def generate(root: Path, count: int, files: int, photos: bool) -> Path:
    if photos:
        (root / "photos").mkdir()
        for n in range(count):
            (root / "photos" / f"{n}.jpg").write_bytes(JPG + n.to_bytes(4, "big"))
    if files <= 1:
        body = "".join(person(n, photos) for n in range(count))
        (root / "desired.yaml").write_text(HEADER + "persons:\n" + body, encoding="utf-8")
        return root / "desired.yaml"
    (root / "00-org.yaml").write_text(HEADER, encoding="utf-8")
    per = -(-count // files)
    for part in range(files):
        body = "".join(person(n, photos) for n in range(part * per, min(count, (part + 1) * per)))
        text = "version: 1\npersons:\n" + body
        (root / f"persons-{part:03d}.yaml").write_text(text, encoding="utf-8")
    return root


def best(runs: int, action: Callable[[], object], before: Callable[[], object] = object) -> str:
    wall = cpu = float("inf")
    for _ in range(runs):
        before()
        gc.collect()
        started, started_cpu = time.perf_counter(), time.process_time()
        action()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return f"{wall:8.2f} {cpu:8.2f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", nargs="?", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--photos", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="desired-cache-bench-"))
    try:
        path = generate(root, args.count, args.files, args.photos)
        if args.photos:
            # Photos written less than 2 s ago are re-read at every load (their stat could not
            # show a second write in the same timestamp tick); these are meant to be settled.
            time.sleep(2.1)
        state = root / "state"
        hasher = Hasher(b"bench")

        def load(cache: ParsedCache | None) -> object:
            return yamlfile.load(path, env={"PW": "pw"}, hasher=hasher, cache=cache)

        def cache() -> ParsedCache:
            return ParsedCache(state, path)

        def plain_c_loader() -> None:
            for name in yamlfile.desired_files(path):
                data = Path(name).read_bytes()
                gc.disable()
                try:
                    yaml.load(data, Loader=yaml.CSafeLoader)
                finally:
                    gc.enable()

        def forget() -> None:
            shutil.rmtree(state, ignore_errors=True)

        print(f"{args.count} persons, {args.files} file(s), photos: {args.photos}")
        print(f"{'':44} {'wall s':>8} {'cpu s':>8}")
        print(f"{'yaml.load, CSafeLoader, gc paused':44} {best(args.runs, plain_c_loader)}")
        print(f"{'load, no cache':44} {best(args.runs, lambda: load(None))}")
        cold = best(args.runs, lambda: load(cache()), before=forget)
        print(f"{'load, cold cache (parse and write)':44} {cold}")
        load(cache())
        print(f"{'load, warm cache':44} {best(args.runs, lambda: load(cache()))}")
        if args.files > 1:
            edited = root / "persons-000.yaml"
            original = edited.read_text(encoding="utf-8")

            def edit() -> None:
                load(cache())
                edited.write_text(original.replace("employee", "staff member"), encoding="utf-8")

            def revert() -> None:
                edited.write_text(original, encoding="utf-8")
                edit()

            label = f"load after an edit of 1 file of {args.files}"
            print(f"{label:44} {best(args.runs, lambda: load(cache()), before=revert)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
