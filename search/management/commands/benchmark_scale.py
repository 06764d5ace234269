import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from django.core.management.base import CommandError

from ...engine.index import load_index
from ...engine.local_scale_benchmark import measure_fine, synthetic_local_store
from ...engine.scale_benchmark import measure_backends, synthetic_vectors
from ..base import EngineCommand, StageBars


class Command(EngineCommand):
    help = ("Benchmark the coarse stage's scaling: for each size, a seeded synthetic collection shaped like real "
            "global features (stored as float16, as FAISS builds store them), the FAISS and BallTree backends built "
            "and queried one query at a time at k = --n, against an exact scan: build time, p50/p95 query time, "
            "recall of the exact n nearest, disk per image, resident memory. With --index, the same on a real "
            "index's vectors. With --local-features, also a synthetic local-feature store of each size, and the "
            "time to read and verify n candidates from it, from disk and from the page cache. Prints figures; "
            "asserts nothing (timings belong here, not in tests).")

    def add_arguments(self, parser):
        parser.add_argument("--sizes", default="10000,100000", help="synthetic collection sizes, e.g. 10000,100000,1000000")
        parser.add_argument("--dim", type=int, default=2560, help="vector size (2,560: the default hybrid variant)")
        parser.add_argument("--n", type=int, default=4000, help="candidates asked of the coarse stage")
        parser.add_argument("--queries", type=int, default=50)
        parser.add_argument("--balltree-max", type=int, default=100_000,
                            help="build the BallTree only up to this size (it holds a float64 copy)")
        parser.add_argument("--coverages", default="",
                            help="FAISS list coverages to compare, e.g. 2,4,8 (default: the RETRIEVAL_FAISS_COVERAGE setting)")
        parser.add_argument("--parts", default="",
                            help="FAISS search parts (threads per query) to compare, e.g. 1,2,1,2 "
                                 "(default: the RETRIEVAL_FAISS_PARTS setting)")
        parser.add_argument("--local-features", action="store_true",
                            help="also write a synthetic local-feature store of each size (84 bytes a keypoint on "
                                 "disk, LOCAL_MAX_KEYPOINTS per image, in --workdir) and time reading and "
                                 "verifying n candidates from it")
        parser.add_argument("--read-threads", default="",
                            help="with --local-features: threads reading the candidates to compare, e.g. 1,16 "
                                 "(default: the RETRIEVAL_LOCAL_READ_THREADS setting)")
        parser.add_argument("--index", type=Path, help="also measure this index (root or build)")
        parser.add_argument("--variant", default="hybrid", help="the variant measured with --index")
        parser.add_argument("--workdir", type=Path, help="where the synthetic vectors are written (default: a temp dir)")
        parser.add_argument("--out", type=Path, help="JSON to write (default: <data dir>/reports/benchmark_scale.json)")

    def handle(self, *args, sizes, dim, n, queries, balltree_max, coverages, parts, local_features, read_threads,
               index, variant, workdir, out, **options):
        config = self.config(options)
        settings = config.coarse_settings()
        coverages = tuple(float(c) for c in coverages.split(",") if c.strip())
        parts = tuple(int(p) for p in parts.split(",") if p.strip())
        read_threads = tuple(int(t) for t in read_threads.split(",") if t.strip())
        rows, fine_rows = [], []
        with tempfile.TemporaryDirectory(dir=workdir) as tmp, StageBars() as bars:
            tmp = Path(tmp)
            if index is not None:
                real = load_index(index)
                if variant not in real.vectors:
                    raise CommandError(f"{real.path} has no '{variant}' variant (it has {', '.join(real.vectors)})")
                vectors = real.vectors[variant]
                asked = synthetic_vectors(queries, vectors.shape[1], seed=1, near=vectors)
                # a variant stored inside another's (coarse_backends.Share) has no file of its own to serve
                own_file = None if getattr(vectors, "share", None) else vectors.path
                for row in measure_backends(vectors, asked, min(n, len(vectors) // 2), settings, tmp,
                                            balltree_max, coverages, bars, own_file, parts):
                    rows.append(self.show(dict(asdict(row), data=f"{real.path.name} ({variant})")))
            for size in [int(s) for s in sizes.split(",") if s.strip()]:
                file = tmp / f"vectors-{size}.npy"
                vectors = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(size, dim))
                synthetic_vectors(size, dim, seed=0, out=vectors)
                vectors.flush()
                vectors = np.load(file, mmap_mode="r")
                asked = synthetic_vectors(queries, dim, seed=1, near=vectors)
                for row in measure_backends(vectors, asked, n, settings, tmp, balltree_max, coverages, bars, file,
                                            parts):
                    rows.append(self.show(dict(asdict(row), data="synthetic")))
                del vectors
                file.unlink()
                if local_features:
                    store = tmp / f"local-{size}"
                    query = synthetic_local_store(store, size, config.local_max_keypoints, config.local_pca_dim,
                                                  progress=bars)
                    for threads in read_threads or (config.local_read_threads,):
                        for row in measure_fine(store, query, n, queries, config.verify_settings(),
                                                config.min_inliers, threads, progress=bars):
                            fine_rows.append(self.show_fine(asdict(row)))
                    shutil.rmtree(store)
        out = out or config.reports_dir / "benchmark_scale.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"n": n, "queries": queries, "settings": asdict(settings), "rows": rows,
                                   "fine": fine_rows, "verify_settings": str(config.verify_settings())}, indent=2))
        self.stdout.write(f"wrote {out}")

    def show_fine(self, row: dict) -> dict:
        self.stdout.write(
            f"{'synthetic local store':>24} {row['size']:>9,} images, {row['disk_bytes_per_image'] / 1024:.1f} KiB/image, "
            f"{row['n']:,} candidates, {row['phase']}, {row['read_threads']} reading: read p50 {row['read_p50_ms']:8.1f} ms, verify p50 "
            f"{row['verify_p50_ms']:8.1f} ms, both {row['total_p50_ms']:8.1f} ms ({row['per_candidate_ms']:.3f} ms per "
            f"candidate); {row['with_min_inliers']:.1f} per query with MIN_INLIERS")
        return row

    def show(self, row: dict) -> dict:
        """Print a row as soon as it is measured (a million-image run takes a while)."""
        self.stdout.write(
            f"{row['data']:>24} {row['size']:>9,} x {row['dim']:<5} {row['backend']:>10}: build {row['build_s']:7.1f} s, "
            f"query p50 {row['p50_ms']:8.1f} ms p95 {row['p95_ms']:8.1f} ms, recall@{row['depth']} {row['recall']:.3f}, "
            f"{row['disk_bytes_per_image'] / 1024:.1f} KiB/image, RSS {row['resident_mib']:,.0f} MiB  "
            f"[{row['detail']}]")
        worker = row.get("worker")
        if worker:
            self.stdout.write(
                f"{'':>24} served alone by a fresh process: {worker['anon_mib']:,.0f} MiB its own + "
                f"{worker['file_mib']:,.0f} MiB mapped file pages (shared, reclaimable) after the queries, "
                f"{worker['before_rss_mib']:,.0f} MiB before loading ({worker['before_anon_mib']:,.0f} its own); "
                f"peak {worker['peak_mib']:,.0f} MiB"
                f"{'; float16 store mapped' if worker['mapped'] else ''}")
        return row
