"""A multi-node Ray cluster on one machine: segmenter replicas on two worker nodes, one node lost under load.

Run by ``test_faults.py`` in a subprocess (the pytest process already owns a Ray), from the project
root: ``python tests/integration/multinode_scenario.py``. The last line of stdout is a JSON summary.

* ``ray.cluster_utils.Cluster``: a head node with 2 logical CPUs and no GPU, and two worker nodes with
  no CPU and one logical GPU each. The segmenter asks for ``num_gpus: 1`` (it runs on the CPU:
  ``device: cpu``), so its two replicas land one per worker node; the ingress and the codec (split
  topology, as on a GPU cluster) need CPU, so they stay on the head, with the only HTTP proxy
  (``proxy_location: HeadOnly``).
* Under load from the client library (retries on 503) and from raw HTTP calls (no retries), one worker
  node is removed (``Cluster.remove_node``: its processes get SIGTERM first, as a Kubernetes pod does on
  deletion). Serve marks its replica dead and keeps serving from the other; a new worker node is added
  and the replacement replica starts there.
* ``--crash`` removes the node without the graceful step (SIGKILL: a crashed machine). Requests in
  flight on it get 503 / unavailable within ~2 s, which the client library retries. (Before the split
  topology awaited the segmenter's answer in the ingress, a crash lost a request in 2 of 5 runs: the
  encode call chained onto the dead segmenter's result was retried by Ray 2.60's router, "Replica ...
  ImageCodec is temporarily unavailable", until the 30 s deadline, and the 504 is not retried.)
* ``--fused``: the CPU topology (no codec or segmenter deployments: the ingress replicas run the model,
  one per worker node, behind the head's HAProxy) instead of the GPU layout's split one.
* ``--default-detection``: Ray's default node health checks instead of 1 s ones.
* Summary: where the replicas ran, every raw status seen, how many client-library calls failed after
  their retries (must be 0), whether every served mask equals the direct model call, and the time from
  the node's loss to two running segmenter replicas again.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

APP = "segmentation"
MODEL = "unet-shapes"
# The deployment whose replicas run the model: its own segmenter (split) or the ingress itself (fused).
SEGMENTER = "Ingress" if "--fused" in sys.argv else f"Segmenter-{MODEL}"
TIMEOUT_S = 120
GRACEFUL = "--crash" not in sys.argv  # --crash: the node's processes are killed without notice
# The GPU layout (a codec deployment on the head, segmenters on the GPU workers) unless --fused.
TOPOLOGY = "fused" if "--fused" in sys.argv else "split"
FAST_DETECTION = "--default-detection" not in sys.argv
FAST_NODE_FAILURE_DETECTION = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}


def log(message: str) -> None:
    print(f"[multinode {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def replicas_by_node() -> dict[str, list[str]]:
    """Deployment name -> node ids of its alive replicas."""
    from ray._private import state

    found: dict[str, list[str]] = {}
    for info in state.actors(actor_state_name="ALIVE").values():
        name = info.get("ActorClassName", "")
        if name.startswith(f"ServeReplica:{APP}:"):
            found.setdefault(name.split(":", 2)[2], []).append(info["Address"]["NodeID"])
    return found


def main() -> dict:
    import httpx
    import ray
    import ray._private.utils
    from ray import serve
    from ray.cluster_utils import Cluster
    from segserve_client import ClientError, HttpClient, RetryPolicy

    from service.app import build_app
    from service.config import load_repository
    from service.local import free_port, local_ray_env
    from service.training.shapes import make_sample
    from tests.conftest import png_bytes
    from tests.integration.apps import (
        ClosedLoop,
        light_args,
        running_replicas,
        temp_repository,
        wait_for,
    )
    from tests.integration.helpers import direct_labels

    # Cluster writes its address to /tmp/ray/ray_current_cluster, where any plain `ray.init()` on this
    # machine (another test session) would find it and join this cluster instead of starting its own.
    ray._private.utils.write_ray_address = lambda *args, **kwargs: None

    # This cluster's own HAProxy files and ports (the test session that started us has its own).
    os.environ.update(local_ray_env())
    summary: dict = {}
    started = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "num_gpus": 0,
            "object_store_memory": 100 * 1024**2,
            # Declare a silent node dead after ~3 missed 1 s health checks (Ray's defaults take long
            # enough that requests in flight on it reach their deadline first: see the module docstring).
            "_system_config": FAST_NODE_FAILURE_DETECTION if FAST_DETECTION else {},
        },
    )
    worker_args = {"num_cpus": 0, "num_gpus": 1, "object_store_memory": 80 * 1024**2}
    workers = [cluster.add_node(**worker_args) for _ in range(2)]
    ray.init(
        address=cluster.address,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    head_id = ray.get_runtime_context().get_node_id()
    try:
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        with temp_repository(
            "multinode", deployment={"num_replicas": 2, "num_cpus": 0, "num_gpus": 1, "device": "cpu"}
        ) as repository_path:
            args = light_args(repository_path, topology=TOPOLOGY)
            args.pop("codec")  # the default needs CPU: it stays on the head node
            if TOPOLOGY == "fused":  # the ingress runs the model: two replicas, one per worker node
                args["ingress"] = {"num_replicas": 2, "num_cpus": 0, "num_gpus": 1}
            else:
                args.pop("ingress")  # the default needs CPU: it stays on the head node
            serve.run(build_app(args), name=APP, route_prefix="/", blocking=False)
            wait_for(
                lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, TIMEOUT_S, what="ready"
            )
            repository = load_repository(ROOT / repository_path)
        log(f"serving after {time.monotonic() - started:.0f}s")

        placement = replicas_by_node()
        worker_ids = {w.node_id for w in workers}
        summary["segmenter_nodes"] = sorted(placement[SEGMENTER])
        summary["spread_over_workers"] = (
            set(placement[SEGMENTER]) == worker_ids and len(placement[SEGMENTER]) == 2
        )
        summary["topology"] = TOPOLOGY
        summary["codec_deployed"] = "ImageCodec" in placement
        # Split: the ingress and codec on the head, only the segmenters on the workers. Fused: the head has
        # no replica at all, only HAProxy.
        front = placement["Ingress"] if TOPOLOGY == "split" else [head_id]
        summary["ingress_and_codec_on_head"] = front == [head_id] and placement.get(
            "ImageCodec", [head_id]
        ) == [head_id]

        bodies = [png_bytes(make_sample(300 + i, (96, 128)).image) for i in range(4)]
        expected = [direct_labels(repository, MODEL, b) for b in bodies]
        policy = RetryPolicy(retries=8, backoff_s=0.2, max_backoff_s=2.0, max_retry_after_s=2.0)
        client = HttpClient(url, timeout_s=120, retry_policy=policy)
        raw = httpx.Client(base_url=url, timeout=120)
        path = f"/v1/models/{MODEL}/segment"

        def via_client(i: int):
            try:
                return i % 4, client.segment(bodies[i % 4], model=MODEL).labels
            except ClientError as e:
                return i % 4, e

        def via_raw(i: int):
            t0 = time.monotonic()
            r = raw.post(path, content=bodies[i % 4], headers={"content-type": "image/png"})
            if r.status_code == 200:
                return 200, None, ""
            error = r.json()["error"]
            log(f"raw {r.status_code} after {time.monotonic() - t0:.1f}s: {error}")
            return r.status_code, r.headers.get("retry-after"), error["code"]

        with client, raw, ClosedLoop(via_client, 3) as load, ClosedLoop(via_raw, 2) as raw_load:
            time.sleep(3)
            victim = next(w for w in workers if w.node_id == placement[SEGMENTER][0])
            lost_at = time.monotonic()
            cluster.remove_node(victim, allow_graceful=GRACEFUL)
            log("worker node removed")
            wait_for(lambda: running_replicas(APP, SEGMENTER) == 1, TIMEOUT_S, what="dead replica noticed")
            summary["noticed_s"] = round(time.monotonic() - lost_at, 1)
            time.sleep(2)  # serving from the surviving replica alone
            replacement = cluster.add_node(**worker_args)
            wait_for(lambda: running_replicas(APP, SEGMENTER) == 2, TIMEOUT_S, what="replacement replica")
            summary["recovered_s"] = round(time.monotonic() - lost_at, 1)
            log(f"two segmenter replicas again after {summary['recovered_s']}s")
            time.sleep(2)
        served = [o for _, _, o in load.records]
        summary["client_calls"] = len(served)
        summary["client_failures"] = [repr(o)[:200] for _, o in served if isinstance(o, Exception)]
        summary["all_correct"] = all(
            (labels == expected[i]).all() for i, labels in served if not isinstance(labels, Exception)
        )
        outcomes = collections.Counter(
            str(o[0]) if isinstance(o, tuple) else repr(o) for _, _, o in raw_load.records
        )
        summary["raw_statuses"] = sorted(outcomes)
        summary["raw_counts"] = dict(outcomes)
        summary["raw_503_documented"] = all(
            o[1] == "1" and o[2] in ("unavailable", "overloaded")
            for _, _, o in raw_load.records
            if isinstance(o, tuple) and o[0] == 503
        )
        final = replicas_by_node()[SEGMENTER]
        summary["final_segmenter_nodes_ok"] = sorted(final) == sorted(
            [n for n in placement[SEGMENTER] if n != victim.node_id] + [replacement.node_id]
        )
        summary["ready_after"] = httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    result = main()
    print(json.dumps(result), flush=True)
