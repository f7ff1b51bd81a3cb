"""CLI: serve, submit, keys, reconstruct."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli.options import ALL_OPTIONS, add_spec_options, given, spec_from_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the API and a worker (embedded mode without REDIS_URL/DATABASE_URL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes beside the API (0: API only)")
    p.add_argument("--queues", default="cpu,gpu", help="queues the workers take (default: both)")
    p.add_argument("--broker", choices=("auto", "redis", "filesystem"), default="auto",
                   help="without REDIS_URL: a redis-server child (auto, if on the PATH) or kombu's filesystem "
                        "transport")
    p.add_argument("--data-dir", type=Path, default=None, help="default: NERFSERVE_DATA_DIR or ./data")
    p.set_defaults(func=_serve)

    p = sub.add_parser("submit", help="upload photos, a folder, a zip or a video; follow the job; download")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--server", default=None, help="default: NERFSERVE_SERVER or http://127.0.0.1:8000")
    p.add_argument("--key", default=None, help="API key (default: NERFSERVE_API_KEY or DATA_DIR/api_key)")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends")
    p.add_argument("--download", type=Path, default=None, help="download the artifacts here (implies --wait)")
    p.add_argument("--options", default=None, help="options as a JSON object (flags below override it)")
    p.add_argument("--part-mb", type=int, default=8, help="upload part size in MiB (default: 8)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_spec_options(p, (*ALL_OPTIONS, "webhook_url"))
    p.set_defaults(func=_submit)

    p = sub.add_parser("keys", help="create, revoke and list API keys (admin; talks to the database)")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key and print its token once")
    c.add_argument("name")
    c.set_defaults(func=_keys_create)
    c = ks.add_parser("revoke", help="revoke a key by name or id")
    c.add_argument("name")
    c.set_defaults(func=_keys_revoke)
    c = ks.add_parser("list", help="list keys (never their tokens)")
    c.set_defaults(func=_keys_list)

    p = sub.add_parser("reconstruct", help="run every stage locally, no service: inputs -> poses, scene, exports")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="job folder (inputs/, sfm/, outputs/, ...)")
    add_spec_options(p, ALL_OPTIONS)
    p.set_defaults(func=_reconstruct)


def _settings(args: argparse.Namespace):
    from service.settings import Settings

    over = {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}
    return Settings(**over)


def _serve(args: argparse.Namespace) -> int:
    import logging

    from cli.embedded import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serve(_settings(args), args.host, args.port, args.workers, args.queues, args.broker)
    return 0


def _submit_options(args: argparse.Namespace) -> dict:
    """The options to send: --options (JSON) with the flags given over it, checked here against the job spec
    (the server fills in the defaults)."""
    from core.errors import UserInputError

    try:
        opts = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as e:
        raise UserInputError("bad_options", f"--options is not JSON: {e}", "e.g. --options '{\"matcher\": "
                             "\"sequential\"}'") from None
    if not isinstance(opts, dict):
        raise UserInputError("bad_options", "--options must be a JSON object", "e.g. --options '{\"steps\": 500}'")
    names = (*ALL_OPTIONS, "webhook_url")
    opts.update(given(args, names))
    spec_from_args(args, (), base=opts)           # refuse bad options before uploading anything
    return opts


def _submit(args: argparse.Namespace) -> int:
    import os

    import httpx

    from cli.client import ClientError, default_key, submit

    server = args.server or os.environ.get("NERFSERVE_SERVER", "http://127.0.0.1:8000")
    try:
        job = submit(args.inputs, server, args.key or default_key(), _submit_options(args),
                     wait=args.wait or args.download is not None, download=args.download,
                     part_bytes=args.part_mb * 1024 * 1024, quiet=args.quiet)
    except ClientError as e:
        print(f"error [{e.code}]: {e.message}" + (f"\nhint: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    except httpx.TransportError as e:
        print(f"error [server_unreachable]: cannot reach {server}: {e}\nhint: start one with `nerfserve serve`, "
              "or pass --server URL (or set NERFSERVE_SERVER)", file=sys.stderr)
        return 2
    print(json.dumps({"id": job["id"], "state": job["state"], "url": job["urls"]["self"]}))
    return 0


def _db():
    from service.db import Database
    from service.settings import Settings

    db = Database(Settings().db_url)
    db.upgrade()
    return db


def _keys_create(args: argparse.Namespace) -> int:
    from service.keys import create_key

    row, token = create_key(_db(), args.name)
    print(f"created key {row.name!r} (id {row.id}); the token is shown only now:", file=sys.stderr)
    print(token)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    from service.keys import revoke_key

    row = revoke_key(_db(), args.name)
    print(f"revoked key {row.name!r} (id {row.id})")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from service.keys import list_keys

    for k in list_keys(_db()):
        state = "revoked" if k.revoked_at else "active"
        print(f"{k.id}  {k.name:20s}  {k.prefix}...  {state}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    import shutil

    from tqdm import tqdm

    from core.errors import UserInputError
    from core.pipeline import STAGES, JobDirs, run_stage
    from core.stages import PIPELINE

    dirs = JobDirs(args.out)
    dirs.inputs.mkdir(parents=True, exist_ok=True)
    for p in args.inputs:
        if not p.exists():
            raise UserInputError("no_such_file", f"{p} does not exist", "check the path")
        dest = dirs.inputs / p.name
        if not dest.exists():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, dest)
    opts = spec_from_args(args, ALL_OPTIONS)
    for stage in STAGES:
        with tqdm(total=100, desc=stage, unit="%") as bar:
            def progress(ev, bar=bar):
                bar.n = round(100 * ev.fraction)
                bar.refresh()

            metrics = run_stage(PIPELINE, stage, dirs, opts, progress)
            bar.n = 100
            bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in list(metrics.items())[:4]))
    print(f"done: {dirs.outputs}")
    return 0
