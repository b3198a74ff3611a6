"""Run by tests/integration/test_client_package.py with the python of a clean venv that has only
segserve-client installed (``python -I``: neither this folder nor the checkout is on sys.path).

Calls the real service over HTTP and gRPC, writes the label maps it got as .npy files to OUT, and
prints one JSON line: what was called, what came back, and which modules ended up loaded.

    python -I client_in_venv.py HTTP_URL GRPC_TARGET MODEL IMAGE FRAMES_DIR OUT
"""

import json
import sys
from pathlib import Path

import numpy as np
import segserve_client
from segserve_client import ClientError, GrpcClient, HttpClient, connect

HEAVY = ("torch", "ray", "cv2", "pycocotools", "service")


def main(url: str, target: str, model: str, image: str, frames_dir: str, out: str) -> dict:
    out_dir = Path(out)
    report: dict = {"client_file": segserve_client.__file__}
    with connect(url, timeout_s=60) as http, connect(f"grpc://{target}", timeout_s=60) as grpc:
        assert isinstance(http, HttpClient) and isinstance(grpc, GrpcClient)
        report["ready"] = [http.ready(), grpc.ready()]
        report["models"] = [[m["name"] for m in c.list_models()] for c in (http, grpc)]
        for name, client, fmt in (
            ("http-png", http, "png"),
            ("grpc-rle", grpc, "rle"),
            ("grpc-raw", grpc, "raw"),
        ):
            result = client.segment(Path(image), model=model, format=fmt)
            np.save(out_dir / f"{name}.npy", result.labels)
            report[name] = {"format": result.format, "classes": [list(c) for c in result.classes]}
        frames = [(p.stem, p.read_bytes()) for p in sorted(Path(frames_dir).iterdir())]
        for result in grpc.stream(frames, model=model):
            np.save(out_dir / f"stream-{result.frame_id}.npy", result.raise_for_error().labels)
        try:
            http.segment(Path(image), model="no-such-model")
        except ClientError as e:
            report["unknown_model"] = [e.status, e.code]
    report["loaded"] = sorted({m.partition(".")[0] for m in sys.modules} & set(HEAVY))
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
