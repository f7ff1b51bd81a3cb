"""CLI: poses (capture ingest and pose estimation).

    nerfserve poses INPUT [INPUT ...] --out DIR [--matcher auto|exhaustive|sequential|spatial]
                    [--max-image-size 1600]

INPUT: image files, folders of images, zips, videos (MP4/MOV), or a folder with transforms.json or a
COLMAP model (known poses: SfM is skipped). Writes DIR/ingest/ (clean images), DIR/transforms.json,
DIR/colmap/sparse/0, DIR/sfm_report.json and DIR/images/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.options import POSES_OPTIONS, add_spec_options, spec_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("poses", help="estimate camera poses (COLMAP SfM) for photos, a zip or a video")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="images, folders, zips, videos, or a capture with transforms.json / a COLMAP model")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    add_spec_options(p, POSES_OPTIONS)
    p.add_argument("--camera-model", default="SIMPLE_RADIAL",
                   choices=["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"],
                   help="COLMAP camera model (default: SIMPLE_RADIAL)")
    p.add_argument("--max-features", type=int, default=8192, help="SIFT features per image (default: 8192)")
    p.add_argument("--min-registered", type=float, default=0.5,
                   help="fail when fewer than this fraction of the images register (default: 0.5)")
    p.add_argument("--video-frames", type=int, default=150, help="frames to take from each video (default: 150)")
    p.add_argument("--threads", type=int, default=-1, help="CPU threads (default: -1, all)")
    p.set_defaults(func=cmd_poses)


def _print_progress(event) -> None:
    print(f"[{event.stage} {100 * event.fraction:5.1f}%] {event.message}", file=sys.stderr, flush=True)


def cmd_poses(args: argparse.Namespace) -> int:
    from core.dataparsers.ingest import IngestConfig, ingest
    from core.dataparsers.sfm import SfmConfig, estimate_poses

    ingested = ingest(list(args.inputs), args.out / "ingest",
                      IngestConfig(video_target_frames=args.video_frames), _print_progress)
    for name, reason in ingested.rejected:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    for dropped, kept in ingested.duplicates:
        print(f"skipped {dropped}: exact duplicate of {kept}", file=sys.stderr)
    spec = spec_from_args(args, POSES_OPTIONS)
    config = SfmConfig(matcher=spec.matcher, max_image_size=spec.max_image_size, camera_model=args.camera_model,
                       max_num_features=args.max_features, min_registered_fraction=args.min_registered,
                       num_threads=args.threads)
    result = estimate_poses(ingested, args.out, config, _print_progress)
    r = result.report
    print(f"registered {r['registered']}/{r['images']} images; frame: {r['frame']['description']}")
    for item in r.get("unregistered", []):
        print(f"  not registered: {item['name']}: {item['reason']}")
    if "mean_reprojection_error_px" in r:
        print(f"mean reprojection error {r['mean_reprojection_error_px']:.3f} px, {r['points3d']} points, "
              f"mean track length {r['mean_track_length']:.2f}")
    print(f"wrote {args.out / 'transforms.json'}, {args.out / 'colmap' / 'sparse' / '0'}, "
          f"{args.out / 'sfm_report.json'}")
    return 0
