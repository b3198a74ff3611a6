"""``segserve-client``: ``segment``, ``models`` and ``stream`` against a running service.

Each command takes the parsed ``argparse.Namespace`` and returns an exit code (0 ok, 1 the service
answered with an error or a frame failed, 2 bad arguments). The client modules are imported inside
the commands, so ``--help`` starts at once.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

DEFAULT_HTTP = "http://127.0.0.1:8000"
DEFAULT_GRPC = "127.0.0.1:9000"
API_KEY_ENV = "SEGSERVE_API_KEY"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTRA = "pip install 'segserve-client[video]'"  # OpenCV, only to read video files


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segserve-client", description="Segment images with a running segserve service (HTTP or gRPC)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment one image with a running service (HTTP or gRPC)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--model", required=True)
    p.add_argument("--format", choices=["png", "rle", "raw"], default="png", help="mask encoding on the wire")
    p.add_argument("--out", help="write the mask PNG here (label map; COCO id PNG for panoptic models)")
    p.add_argument("--overlay", help="ask for an overlay and write it here (PNG)")
    p.add_argument("--json", help="write the result summary (classes, segments, timings) here")
    add_target_arguments(p)
    p.set_defaults(func=segment)

    p = sub.add_parser("models", help="list the models a running service serves, with their classes")
    add_target_arguments(p)
    p.set_defaults(func=models)

    p = sub.add_parser("stream", help="stream a video or a folder of images over gRPC; write masks")
    p.add_argument("source", metavar="VIDEO_OR_FOLDER")
    p.add_argument("--model", required=True)
    p.add_argument("--out-dir", help="write <frame_id>.png masks here")
    p.add_argument("--frame-format", choices=["jpeg", "png"], default="jpeg", help="video frame encoding")
    p.add_argument("--quiet", action="store_true", help="print only errors and the final fps line")
    add_target_arguments(p, grpc_only=True)
    p.set_defaults(func=stream)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segserve-client")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def add_target_arguments(parser: argparse.ArgumentParser, grpc_only: bool = False) -> None:
    """``--url`` / ``--grpc`` (which service, which protocol), ``--api-key``, ``--timeout``."""
    if grpc_only:
        parser.add_argument(
            "--grpc", default=DEFAULT_GRPC, metavar="HOST:PORT", help=f"gRPC target (default {DEFAULT_GRPC})"
        )
    else:
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--url", default=DEFAULT_HTTP, help=f"HTTP base URL (default {DEFAULT_HTTP})")
        target.add_argument(
            "--grpc",
            nargs="?",
            const=DEFAULT_GRPC,
            default=None,
            metavar="HOST:PORT",
            help=f"use gRPC instead of HTTP (target default {DEFAULT_GRPC})",
        )
    parser.add_argument(
        "--api-key", default=os.environ.get(API_KEY_ENV), help=f"bearer key (default: ${API_KEY_ENV})"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call, retries included")
    parser.add_argument("--retries", type=int, default=3, help="retries on 503/429/UNAVAILABLE")


def make_client(args: argparse.Namespace):
    kwargs = {"api_key": args.api_key, "timeout_s": args.timeout, "retries": args.retries}
    if getattr(args, "grpc", None):
        from segserve_client.grpc import GrpcClient

        return GrpcClient(args.grpc, **kwargs)
    from segserve_client.http import HttpClient

    return HttpClient(args.url, **kwargs)


def segment(args: argparse.Namespace) -> int:
    """Segment one image; write the mask, the overlay and a JSON summary; print a one-line summary."""
    from segserve_client.errors import ClientError

    try:
        with make_client(args) as client:
            start = time.perf_counter()
            result = client.segment(
                Path(args.image), model=args.model, format=args.format, overlay=args.overlay is not None
            )
            elapsed_ms = (time.perf_counter() - start) * 1000
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_bytes(result.mask_png_bytes())
    if args.overlay and result.overlay_png is not None:
        Path(args.overlay).write_bytes(result.overlay_png)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1))
    print(f"{result.summary()} | round trip {elapsed_ms:.1f} ms")
    return 0


def models(args: argparse.Namespace) -> int:
    """A table of the served models and their classes."""
    from segserve_client.errors import ClientError

    try:
        with make_client(args) as client:
            infos = client.list_models()
    except ClientError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_models(infos))
    return 0


def format_models(infos: list[dict]) -> str:
    rows = [("MODEL", "TASK", "VERSION", "INPUT", "CLASSES")]
    for m in infos:
        policy = m.get("input", {})
        classes = ", ".join(f"{c['id']}:{c['name']}" for c in m.get("classes", []))
        rows.append(
            (
                m["name"],
                m["task"],
                str(m.get("version", "")),
                f"{policy.get('mode', '')} {policy.get('size', '')}".strip(),
                classes,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([*(r[i].ljust(widths[i]) for i in range(4)), r[4]]).rstrip() for r in rows)


def stream(args: argparse.Namespace) -> int:
    """Stream a folder of images (sorted by name) or a video's frames over gRPC; write masks; print fps."""
    from segserve_client.errors import ClientError

    source = Path(args.source)
    if not source.exists():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    if source.is_file() and importlib.util.find_spec("cv2") is None:
        print(f"error: reading a video needs OpenCV: {VIDEO_EXTRA}, or stream a folder", file=sys.stderr)
        return 2
    out_dir = Path(args.out_dir) if args.out_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    count = failed = 0
    start = time.perf_counter()
    try:
        frames = iter_folder(source) if source.is_dir() else iter_video(source, args.frame_format)
        with make_client(args) as client:
            for result in client.stream(frames, model=args.model, format="png"):
                count += 1
                if result.error is not None:
                    failed += 1
                    print(result.summary(), file=sys.stderr)
                    continue
                if out_dir:
                    (out_dir / f"{result.frame_id}.png").write_bytes(result.mask_png_bytes())
                if not args.quiet:
                    print(result.summary())
    except (ClientError, OSError) as e:
        print(f"error after {count} frames: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    fps = count / elapsed if elapsed > 0 else 0.0
    print(f"{count} frames ({failed} failed) in {elapsed:.2f} s: {fps:.1f} fps")
    return 1 if failed else 0


def iter_folder(folder: Path) -> Iterator[tuple[str, bytes]]:
    """``(file stem, bytes)`` for each image file in ``folder``, sorted by name."""
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        yield path.stem, path.read_bytes()


def iter_video(path: Path, frame_format: str = "jpeg") -> Iterator[tuple[str, bytes]]:
    """``(zero-padded frame index, encoded frame)`` for each frame OpenCV reads from ``path``.

    OpenCV is this package's ``video`` extra. The file is opened here (an unreadable one raises
    ``OSError`` at once); frames are read lazily.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise OSError(f"OpenCV cannot read {path} as a video (nor is it a folder)")
    return _video_frames(capture, path, frame_format)


def _video_frames(capture, path: Path, frame_format: str) -> Iterator[tuple[str, bytes]]:
    import cv2

    if frame_format == "png":
        suffix, params = ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]
    else:
        suffix, params = ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]
    try:
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            ok, encoded = cv2.imencode(suffix, frame, params)  # frames are BGR; imencode expects BGR
            if not ok:
                raise OSError(f"could not encode frame {index} of {path}")
            yield f"{index:06d}", encoded.tobytes()
            index += 1
    finally:
        capture.release()
