"""`pipelines` command line: the local stack, the main job and day-to-day operations.

Exit codes: 0 success, 1 a run or check failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pipelines.settings import Settings, get_settings

if TYPE_CHECKING:  # the CLI imports heavy modules only in the command that needs them
    from pipelines.behaviour.answering import Answer
    from pipelines.orchestration.api import FinishedRun

Handler = Callable[[argparse.Namespace, Settings], int]
COMMANDS: dict[str, Handler] = {}


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.devstack import stack

    stack.up(settings, with_airflow=not args.no_airflow, with_serve=not args.no_serve)
    print(
        f"\nAirflow UI : {settings.airflow_url}  (login {settings.airflow_admin_user} / "
        f"{settings.airflow_admin_password})"
    )
    print(f"MLflow UI  : {settings.tracking_uri}")
    print(f"Weaviate   : {settings.weaviate_http_url}  (gRPC 127.0.0.1:{settings.weaviate_grpc_port})")
    if not args.no_serve:
        url = f"http://{settings.serve_host}:{settings.serve_port}"
        print(f"Answering  : {url}  (API docs {url}/docs; a key: pipelines keys create --name me --groups hr)")
    print(f"State      : {settings.state_dir}\nStop with  : make down")
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.devstack import stack

    stack.down(settings)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.devstack import stack

    for name, pid in stack.status(settings).items():
        print(f"{name:24s} {f'running (pid {pid})' if pid else 'stopped'}")
    return 0


def _reindex(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.knowledge.reindex import run_reindex

    report = run_reindex(settings, full_rebuild=args.full_rebuild, allow_mass_change=args.allow_mass_change)
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.accepted else 1


def _pin_reference(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.knowledge.reindex import pin_reference

    print(f"retrieval gate reference run: {pin_reference(settings, args.run)}")
    return 0


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


def _retrain(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.behaviour.retrain import RetrainRequest, run_retrain

    overrides = {
        "steps": args.steps,
        "epochs": args.epochs,
        "lora_rank": args.lora_rank,
        "promotion_policy": args.policy,
        "base_model": args.base_model,
    }
    outcome = run_retrain(settings, RetrainRequest.from_settings(settings, overrides))
    print(f"run {outcome.run_id}: version {outcome.version}, gate {outcome.decision.summary()}")
    return 0 if outcome.decision.passed else 1


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    from pipelines.behaviour.registry import promote
    from pipelines.failures import PromotionRejected

    actor = f"{getpass.getuser()} via CLI"
    try:
        move = promote(settings, str(args.version), actor, args.reason, alias=args.alias, override=args.override)
    except PromotionRejected as err:
        print(f"pipelines promote: {err}", file=sys.stderr)
        return 1
    print(
        f"{settings.registered_model}@{move.alias}: {move.previous} -> {move.version}"
        f"{' (gate overridden: ' + move.reason + ')' if move.override else ''}"
    )
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    from pipelines.behaviour.registry import rollback

    move = rollback(settings, f"{getpass.getuser()} via CLI", args.reason)
    print(f"{settings.registered_model}@champion: {move.previous} -> {move.version}")
    return 0


def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.behaviour.answering import ask
    from pipelines.failures import IntegrityError

    groups = args.groups.split(",") if args.groups else []
    try:
        answer = ask(settings, args.question, k=args.k, user_groups=groups)
    except IntegrityError as err:  # a tampered or corrupt adapter: refuse to answer with it
        print(f"pipelines ask: {err}", file=sys.stderr)
        return 1
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(answer), indent=2, ensure_ascii=False))
        return 0 if answer.follows_format and answer.grounded else 1
    print(render_answer(answer))
    t = answer.timings
    print(
        f"model {answer.model} | retrieval {t.retrieval_s * 1000:.0f} ms, generation {t.generation_s * 1000:.0f} ms"
        f" (model load {t.model_load_s:.1f} s)"
    )
    if answer.abstained:
        print("(the retrieved sources do not answer this question)", file=sys.stderr)
    elif not answer.grounded:
        print("(not supported by any retrieved source: do not rely on this answer)", file=sys.stderr)
    elif answer.relabelled:
        print(f"(sources corrected: the model wrote {answer.raw.rsplit('Sources:', 1)[-1].strip()})")
    return 0 if answer.follows_format and answer.grounded else 1


def render_answer(answer: Answer) -> str:
    """The answer for a reader: its sentences with their source numbers, then the numbered sources with titles."""
    import textwrap

    numbers: dict[str, int] = {}  # chunk id -> source number, in order of first use
    for chunk_id in [s.chunk_id for s in answer.sentences if s.chunk_id] + [c.chunk_id for c in answer.citations]:
        numbers.setdefault(chunk_id, len(numbers) + 1)
    if answer.sentences and not answer.abstained:
        parts = []
        for s in answer.sentences:
            if s.text in answer.dropped:
                continue
            mark = f" [{numbers[s.chunk_id]}]" if s.supported and s.chunk_id else " [unsupported]"
            parts.append(s.text + mark)
        body = " ".join(parts) or answer.text
    else:
        body = answer.text
    lines = ["Answer:", textwrap.indent(textwrap.fill(body, 100), "  ")]
    if answer.dropped:
        lines.append(f"  ({len(answer.dropped)} unsupported sentence(s) left out: STRICT_GROUNDING)")
    if answer.below_floor:
        lines.append(f"  (no retrieved source is close enough to the question: relevance {answer.relevance:.2f}, below")
        lines.append("   ANSWER_RELEVANCE_FLOOR; the model was not asked)")
    shown = {c.chunk_id: c for c in answer.contexts}
    titles = {c.chunk_id: (c.title, c.source_url) for c in answer.citations}
    if numbers:
        lines += ["", "Sources:"]
        for chunk_id, n in numbers.items():
            title, url = titles.get(chunk_id, (shown[chunk_id].title if chunk_id in shown else chunk_id, ""))
            lines.append(f"  {n}. {' '.join(title.split())[:90]}" + (f"  <{url}>" if url else ""))
            spans = [s.span for s in answer.sentences if s.chunk_id == chunk_id and s.supported and s.span]
            for span in spans[:1]:
                lines.append(textwrap.indent(textwrap.fill(f"“{span}”", 96), "     "))
    return "\n".join(lines)


def _drop(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from pipelines import drops

    target = drops.drop_target(settings, args.kind)
    paths = [Path(p) for p in args.paths]
    if args.via_drop_folder:
        names = drops.place(target, paths)
        print(
            f"placed {len(names)} file(s) in {target.drop_dir}; the ingest_drops DAG moves them into "
            f"{target.data_dir} and updates the {target.asset['name']} asset"
        )
        return 0
    names = drops.publish(target, paths)
    print(f"copied {len(names)} file(s) into {target.data_dir}")
    event = drops.emit_asset_event(settings, target.asset, drops.event_extra(target, names, "pipelines drop"))
    print(f"asset event {event} on {target.asset['name']}: DAGs scheduled on it start now ({settings.airflow_url})")
    return 0


DEMO_QUESTION = "How can AI agents transform retail banking operations?"


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    """The main job, through the running Airflow: re-index, retrain, promote, answer; then a summary."""
    import time

    from pipelines.orchestration.api import AirflowApi

    started = time.monotonic()
    api = AirflowApi(settings)
    steps = args.steps or settings.lora_steps
    lora = f"train a LoRA adapter ({steps} steps), evaluate, register, promote (auto)"
    plan: list[tuple[str, dict[str, object], float, str]] = [
        ("reindex_documents", {"full_rebuild": False}, 1800, "validate, version, index and evaluate the documents"),
        ("retrain_lora", {"steps": steps, "promotion_policy": "auto"}, 3600, lora),
    ]
    runs: list[FinishedRun] = []
    for number, (dag_id, conf, timeout_s, what) in enumerate(plan, start=1):
        print(f"{number}/3 {dag_id}: {what}")
        runs.append(api.run_and_wait(dag_id, conf, timeout_s=timeout_s))
        if runs[-1].state != "success":  # nothing downstream runs on a failed step
            _print_demo_summary(settings, runs, None, time.monotonic() - started)
            return 1
    print(f"3/3 ask: {args.question}")
    from pipelines.behaviour.answering import ask

    answer = ask(settings, args.question)
    _print_demo_summary(settings, runs, answer, time.monotonic() - started)
    return 0


def _print_demo_summary(settings: Settings, runs: list[FinishedRun], answer: Answer | None, elapsed_s: float) -> None:
    """What ran (run ids, states, times), where to look at it, and the answer."""

    def minutes(seconds: float) -> str:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"

    print(f"\n== Demo summary: {minutes(elapsed_s)} wall time ==")
    for run in runs:
        print(f"{run.dag_id:18s} {run.state:8s} {minutes(run.duration_s):>12s}  run {run.run_id}")
        print(f"    Airflow run: {run.url}")
        print(f"    {run.note or f'MLflow run: not noted; see experiment {run.dag_id} in the MLflow UI'}")
    if answer is not None:
        print(f"\nQuestion ({answer.model}): {answer.question}")
        print(render_answer(answer))
        print('(the same with every field as JSON: pipelines ask --json "<question>")\n')
    login = f"login {settings.airflow_admin_user} / {settings.airflow_admin_password}"
    print(f"Airflow UI : {settings.airflow_url}  ({login}) - DAG runs and task logs")
    print(
        f"MLflow UI  : {settings.tracking_uri}  - experiments reindex_documents, retrain_lora; "
        f"model {settings.registered_model} @champion"
    )


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    import re

    from pipelines.serving.auth import KeyStore

    store = KeyStore(settings.api_keys_path)
    if args.keys_command == "create":
        groups = [g.strip() for g in args.groups.split(",") if g.strip()]
        bad = [g for g in groups if not re.match(settings.acl_group_pattern, g)]
        if bad:
            print(f"pipelines keys create: invalid group names {bad} (ACL_GROUP_PATTERN)", file=sys.stderr)
            return 2
        record, key = store.create(args.name, groups)
        print(f"key id {record.key_id} ({record.name}), groups {list(record.groups) or ['public only']}")
        print(f"{key}\n(shown once; only its sha256 is stored in {settings.api_keys_path})")
    elif args.keys_command == "list":
        for r in store.records():
            state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
            print(f"{r.key_id}  {r.name:20s} {','.join(r.groups) or '-':24s} created {r.created_at}  {state}")
    else:
        try:
            store.revoke(args.key_id)
        except KeyError:
            print(f"pipelines keys revoke: no key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
    return 0


def _feedback(args: argparse.Namespace, settings: Settings) -> int:
    import getpass

    from pipelines.serving.feedback import FeedbackStore, export_corrections, feedback_records_json

    store = FeedbackStore(settings.feedback_url)
    if args.feedback_command == "list":
        print(feedback_records_json(store.list(reviewed=False if args.unreviewed else None)), end="")
    elif args.feedback_command == "review":
        try:
            record = store.review(args.feedback_id, f"{getpass.getuser()} via CLI")
        except KeyError as err:
            print(f"pipelines feedback review: {err.args[0]}", file=sys.stderr)
            return 1
        print(
            f"feedback {record.id} reviewed by {record.reviewed_by}"
            f"{'' if record.correction else ' (no correction: nothing to export)'}"
        )
    else:
        report = export_corrections(store, settings)
        for feedback_id, reason in report.held_back.items():
            print(f"held back feedback {feedback_id}: {reason}", file=sys.stderr)
        if report.path is None:
            print("no reviewed corrections to export")
        else:
            print(
                f"exported {len(report.exported)} correction(s) {report.exported} into {report.path}; "
                "the training drop validates them before any retraining"
            )
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    import uvicorn

    # Every authentication decision is logged (INFO: allowed, WARNING: denied), never the token.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pipelines.serving").setLevel(logging.INFO)
    uvicorn.run("pipelines.serving.app:app_from_env", factory=True, host=settings.serve_host, port=settings.serve_port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipelines", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start Weaviate, MLflow and Airflow on 127.0.0.1 (idempotent)")
    p.add_argument("--no-airflow", action="store_true", help="start only Weaviate and MLflow")
    p.add_argument("--no-serve", action="store_true", help="do not start the answering service")
    COMMANDS["up"] = _up
    sub.add_parser("down", help="stop exactly what `up` started")
    COMMANDS["down"] = _down
    sub.add_parser("status", help="show which services of the local stack run")
    COMMANDS["status"] = _status

    p = sub.add_parser("reindex", help="validate, version and incrementally re-index the documents")
    p.add_argument("--full-rebuild", action="store_true", help="build a new collection and swap the alias")
    p.add_argument(
        "--allow-mass-change",
        action="store_true",
        help="let this run delete or rewrite more than MAX_CHANGE_SHARE of the live documents",
    )
    COMMANDS["reindex"] = _reindex

    p = sub.add_parser("pin-reference", help="pin the run the retrieval gate must never fall below")
    p.add_argument("--run", default=None, help="an accepted reindex run id (default: the last accepted run)")
    COMMANDS["pin-reference"] = _pin_reference

    p = sub.add_parser("search", help="query the live index (hybrid BM25 + vector)")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--alpha", type=float, default=None, help="0 = BM25 only, 1 = vector only")
    p.add_argument("--groups", default="", help="comma-separated groups of the caller (ACL)")
    COMMANDS["search"] = _search

    p = sub.add_parser("rollback-index", help="re-point the collection alias to an earlier collection")
    p.add_argument("--collection", default=None, help="target collection (default: the previous one)")
    COMMANDS["rollback-index"] = _rollback_index

    p = sub.add_parser("retrain", help="validate training data, train a LoRA adapter, evaluate, register, gate")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--epochs", type=float, default=None, help="whole passes over the data (overrides --steps)")
    p.add_argument("--lora-rank", type=int, default=None)
    p.add_argument("--base-model", default=None, help="HF id or local folder (default: bundled SmolLM2-135M)")
    p.add_argument("--policy", choices=["auto", "manual"], default=None, help="promotion policy")
    COMMANDS["retrain"] = _retrain

    p = sub.add_parser("promote", help="point a registered model alias (default champion) at a version")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--alias", default="champion")
    p.add_argument("--reason", default="manual promotion", help="why; recorded on the version (needed with --override)")
    p.add_argument(
        "--override",
        action="store_true",
        help="promote to champion although the version's gate did not pass (needs --reason)",
    )
    COMMANDS["promote"] = _promote

    p = sub.add_parser("rollback", help="point champion back at its previous version")
    p.add_argument("--reason", default="manual rollback")
    COMMANDS["rollback"] = _rollback

    p = sub.add_parser("ask", help="answer a question: retrieve, generate with the champion adapter, cite")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=None, help="chunks to retrieve (default ANSWER_CONTEXTS)")
    p.add_argument("--groups", default="", help="comma-separated groups of the caller (ACL)")
    p.add_argument("--json", action="store_true", help="print the whole answer (sentences, spans, timings) as JSON")
    COMMANDS["ask"] = _ask
    p = sub.add_parser("drop", help="add documents or training data and start the DAG that consumes them")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders whose files are dropped")
    p.add_argument("--kind", choices=["documents", "training"], default="documents")
    p.add_argument(
        "--via-drop-folder",
        action="store_true",
        help="only place the files (with .done markers) for the ingest_drops DAG; no REST call",
    )
    COMMANDS["drop"] = _drop
    p = sub.add_parser("demo", help="main job via the running Airflow: re-index, retrain, promote, answer")
    p.add_argument("--steps", type=int, default=None, help="LoRA training steps (default: LORA_STEPS)")
    p.add_argument("--question", default=DEMO_QUESTION)
    COMMANDS["demo"] = _demo

    p = sub.add_parser("keys", help="API keys of the answering service (stored as hashes, mapped to groups)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("create", help="make a key for some groups; prints it once")
    k.add_argument("--name", required=True, help="who or what holds the key")
    k.add_argument("--groups", default="", help="comma-separated groups (empty: public documents only)")
    keys.add_parser("list", help="every key: id, name, groups, state (never the key)")
    k = keys.add_parser("revoke", help="revoke a key at once")
    k.add_argument("key_id")
    COMMANDS["keys"] = _keys
    p = sub.add_parser("feedback", help="answer feedback: list, mark a correction reviewed, export to training")
    feedback = p.add_subparsers(dest="feedback_command", required=True)
    f = feedback.add_parser("list", help="stored feedback as JSON lines")
    f.add_argument("--unreviewed", action="store_true", help="only feedback nobody reviewed yet")
    f = feedback.add_parser("review", help="mark feedback reviewed: its correction may become training data")
    f.add_argument("feedback_id", type=int)
    feedback.add_parser("export", help="write reviewed corrections into the training drop (validated there)")
    COMMANDS["feedback"] = _feedback
    sub.add_parser("serve", help="run the answering service (SERVE_HOST:SERVE_PORT) in the foreground")
    COMMANDS["serve"] = _serve
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pipelines` command."""
    args = build_parser().parse_args(argv)
    from pipelines.drops import DropError

    try:
        return COMMANDS[args.command](args, get_settings())
    except DropError as err:
        print(f"pipelines {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
