"""Requests/s against replicas on a multi-node Ray cluster on this machine (docs/benchmark.md, "Scale").

    python loadtests/scale.py                         # 3 worker nodes, 1..3 replicas, null + unet-shapes
    python loadtests/scale.py --replicas 1,2 --duration-s 10

``ray.cluster_utils.Cluster``: a head node that runs no replica (HAProxy only, ``HeadOnly``) and
``--nodes`` worker nodes with one CPU and one logical GPU each; the fused topology's ingress replicas
(which run the models, on the CPU: this machine has no GPU) ask for one of each, so they land one per
worker node, as on a GPU cluster. For each replica count the app is
redeployed and a closed loop measures requests/s at one concurrency. On a machine with fewer cores than
worker nodes, throughput grows with replicas until the cores are full, then stays: the table says where.

Three models: the null model (the request path alone), ``null-device`` (the null model waiting
``--device-ms`` per image without computing, as a replica waits on its GPU: each replica bounds it to
1000 / ms images/s, so it shows replicas adding capacity until the cores running the request path
are full) and ``--model`` (the CPU does the model's work too).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEVICE_NULL = "null-device"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--replicas", default="1,2,3")
    p.add_argument("--model", default="unet-shapes")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--duration-s", type=float, default=12.0)
    p.add_argument("--warmup-s", type=float, default=4.0)
    p.add_argument("--device-ms", type=float, default=20.0, help="null-device's wait per image")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.replicas.split(",")]
    if max(counts) > args.nodes:
        p.error("more replicas than worker nodes")

    import ray
    import ray._private.utils
    from ray import serve
    from ray.cluster_utils import Cluster

    from loadtests import closed_loop
    from loadtests.common import DEFAULT_REPOSITORY
    from loadtests.images import make_images
    from loadtests.local_service import wait_ready
    from loadtests.repository import edit_repository, null_entry, write_repository
    from service.app import build_app
    from service.local import free_port, local_ray_env

    os.environ.update(local_ray_env())
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray._private.utils.write_ray_address = lambda *a, **k: None  # another session must not join this one
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 << 20})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80 << 20)
    ray.init(
        address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}
    )
    tmp = ROOT / "loadtests" / "results" / "tmp" / f"scale-{os.getpid()}"
    repository, null = write_repository(DEFAULT_REPOSITORY, [args.model], True, tmp)
    edit_repository(
        repository,
        lambda entries: entries.append(
            null_entry(next(e for e in entries if e["name"] == null), DEVICE_NULL, args.device_ms)
        ),
    )
    models = [null, DEVICE_NULL, args.model]
    images = make_images((256, 256), seed=0, synthetic=8)
    port = free_port()
    rows = []
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        for n in counts:
            ingress = {"num_replicas": n, "num_cpus": 1, "num_gpus": 1, "torch_threads": 1}
            app = build_app({"repository": str(repository), "topology": "fused", "ingress": ingress})
            serve.run(app, name="scale", route_prefix="/")
            wait_ready(url)
            points = [closed_loop.PointSpec("http", m, args.concurrency) for m in models]
            measured = closed_loop.measure(
                points, images, url=url, warmup_s=args.warmup_s, duration_s=args.duration_s, timeout_s=60
            )
            rows.append((n, *(r["throughput_rps"] for r in measured)))
            print(
                f"{n} replicas: "
                + ", ".join(f"{r['model']} {r['throughput_rps']:.1f} req/s" for r in measured)
            )
        serve.delete("scale")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print("\n| ingress replicas (one per worker node) | " + " | ".join(f"{m} req/s" for m in models) + " |")
    print("|---:|" + "---:|" * len(models))
    for n, *rps in rows:
        print(f"| {n} | " + " | ".join(f"{r:.1f}" for r in rps) + " |")
    print(
        f"\n{os.cpu_count()} cores on this machine; c={args.concurrency}, {args.duration_s:g} s per point; "
        f"{DEVICE_NULL} waits {args.device_ms:g} ms per image "
        f"({1000 / args.device_ms:.0f} images/s per replica)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
