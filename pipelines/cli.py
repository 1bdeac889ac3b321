"""`pipelines` command line: the local stack, the main job and day-to-day operations.

Exit codes: 0 success, 1 a run or check failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from pipelines.settings import Settings, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Handler] = {}


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import stack

    stack.up(settings, with_airflow=not args.no_airflow)
    print(f"\nAirflow UI : {settings.airflow_url}  (login {settings.airflow_admin_user} / "
          f"{settings.airflow_admin_password})")  # fmt: skip
    print(f"MLflow UI  : {settings.tracking_uri}")
    print(f"Weaviate   : {settings.weaviate_http_url}  (gRPC 127.0.0.1:{settings.weaviate_grpc_port})")
    print(f"State      : {settings.state_dir}\nStop with  : make down")
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import stack

    stack.down(settings)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines import stack

    for name, pid in stack.status(settings).items():
        print(f"{name:24s} {'running (pid %d)' % pid if pid else 'stopped'}")
    return 0


def _reindex(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.knowledge.reindex import run_reindex

    report = run_reindex(settings, full_rebuild=args.full_rebuild)
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.accepted else 1


def _search(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.knowledge.retrieval import search

    groups = args.groups.split(",") if args.groups else []
    for hit in search(settings, args.query, k=args.k, alpha=args.alpha, user_groups=groups):
        print(f"{hit.score:.3f}  {hit.doc_id}#{hit.position}  {hit.title[:60]}")
        print(f"       {hit.text[:160]!r}")
    return 0


def _rollback_index(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.knowledge.index import connect, rollback_alias

    with connect(settings) as client:
        target = rollback_alias(client, settings.collection_alias, args.collection)
    print(f"alias {settings.collection_alias} -> {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Weaviate, MLflow and Airflow on 127.0.0.1 (idempotent)")
    p.add_argument("--no-airflow", action="store_true", help="start only Weaviate and MLflow")
    COMMANDS["up"] = _up
    sub.add_parser("down", help="stop exactly what `up` started")
    COMMANDS["down"] = _down
    sub.add_parser("status", help="show which services of the local stack run")
    COMMANDS["status"] = _status

    p = sub.add_parser("reindex", help="validate, version and incrementally re-index the documents")
    p.add_argument("--full-rebuild", action="store_true", help="build a new collection and swap the alias")
    COMMANDS["reindex"] = _reindex

    p = sub.add_parser("search", help="query the live index (hybrid BM25 + vector)")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--alpha", type=float, default=None, help="0 = BM25 only, 1 = vector only")
    p.add_argument("--groups", default="", help="comma-separated groups of the caller (ACL)")
    COMMANDS["search"] = _search

    p = sub.add_parser("rollback-index", help="re-point the collection alias to an earlier collection")
    p.add_argument("--collection", default=None, help="target collection (default: the previous one)")
    COMMANDS["rollback-index"] = _rollback_index
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pipelines` command."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args, get_settings())


if __name__ == "__main__":
    sys.exit(main())
