"""`xal`: the one command. xal serve | worker | migrate | create-user | token | import."""
import argparse
import logging
import os
import secrets
import subprocess
import sys
from pathlib import Path


def _serve(args) -> None:
    import uvicorn
    from sqlalchemy import func, select

    from backend.db.migrate import upgrade_database
    from backend.db.models import User
    from backend.db.session import new_session
    from backend.services.users import create_user, issue_token
    from backend.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database()
    with new_session() as session:
        if not session.scalar(select(func.count(User.id))):
            password = secrets.token_urlsafe(12)
            admin = create_user(session, "admin", "admin", password)
            _, token = issue_token(session, admin, "first start")
            session.commit()
            print(f"First start: created user 'admin' with password {password}\nAPI token: {token}", flush=True)
    worker = None
    if not args.no_worker:
        worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=os.environ.copy())
    print(f"XAL on http://{args.host}:{args.port}/  (API docs: /api/docs; database: "
          f"{settings.resolved_database_url.split('@')[-1]}; broker: {settings.resolved_broker_url.split('@')[-1]})", flush=True)
    try:
        uvicorn.run("backend.api.app:create_app", factory=True, host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


def _worker(args) -> None:
    from backend.settings import get_settings
    from worker.celery_app import celery_app

    argv = ["worker", "--loglevel", args.loglevel, "-Q", get_settings().queue, "--hostname", f"xal-{os.getpid()}@%h"]
    # one training job already uses every core; several processes only pay off with many cores or GPUs
    argv += ["--pool", "solo"] if args.concurrency == 1 else ["--concurrency", str(args.concurrency)]
    celery_app.worker_main(argv)


def _migrate(_args) -> None:
    from backend.db.migrate import upgrade_database

    upgrade_database()
    print("database is at the latest schema")


def _create_user(args) -> None:
    from backend.db.migrate import upgrade_database
    from backend.db.session import new_session
    from backend.services.users import create_user, issue_token

    upgrade_database()
    with new_session() as session:
        user = create_user(session, args.username, args.role, args.password)
        _, token = issue_token(session, user, "cli")
        session.commit()
    print(token)


def _token(args) -> None:
    from sqlalchemy import select

    from backend.db.models import User
    from backend.db.session import new_session
    from backend.services.users import issue_token

    with new_session() as session:
        user = session.scalar(select(User).where(User.username == args.username))
        if user is None:
            sys.exit(f"no user {args.username!r}")
        _, token = issue_token(session, user, args.name)
        session.commit()
    print(token)


def _roar(args) -> None:
    from backend.settings import get_settings
    from worker.ml.training import resolve_device
    from worker.roar import RoarSettings, run_roar

    settings = RoarSettings(
        data=str(Path(args.data).resolve()), labels=str(Path(args.labels).resolve()) if args.labels else None,
        train_size=args.train_size, test_size=args.test_size, max_epochs=args.max_epochs, seed=args.seed,
    )
    methods = [m for m in args.methods.split(",") if m]
    fractions = [int(x) for x in args.fractions.split(",") if x]
    recommendation = run_roar(settings, Path(args.out), methods, fractions, resolve_device(get_settings().device))
    print(f"recommended relevance method: {recommendation['method']}; roar.csv, roar_kar.png in {args.out}")


def _import(args) -> None:
    from backend.cli_import import run_import

    report = run_import(
        args.project, Path(args.folder), Path(args.labels) if args.labels else None, args.split,
        "skip" if args.skip_duplicates else "error", "skip" if args.skip_invalid else "error",
    )
    print(f"imported {len(report.image_ids)} images into the {args.split} split; "
          f"{len(report.duplicates)} duplicates and {len(report.invalid)} invalid files skipped")
    for item in report.invalid[:20]:
        print(f"  invalid: {item['filename']}: {item['error']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate the database, start a worker and serve the API and UI")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="workers run elsewhere")
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="run a Celery worker that computes rounds")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(run=_worker)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(run=_migrate)

    user = sub.add_parser("create-user", help="create a user and print an API token for it")
    user.add_argument("username")
    user.add_argument("--role", choices=["admin", "annotator", "client"], required=True)
    user.add_argument("--password")
    user.set_defaults(run=_create_user)

    token = sub.add_parser("token", help="print a new API token for a user")
    token.add_argument("username")
    token.add_argument("--name", default="cli")
    token.set_defaults(run=_token)

    roar = sub.add_parser("roar", help="rank the relevance methods by remove-and-retrain / keep-and-retrain "
                                       "on a labeled folder (resumable)")
    roar.add_argument("--data", required=True, help="labeled folder (a labels.csv, or one folder per class)")
    roar.add_argument("--labels", help="CSV with an image-path column and a class column")
    roar.add_argument("--out", required=True, help="results folder; a rerun into it skips finished rows")
    roar.add_argument("--methods", default="random,gradient,lrp-epsilon,deeptaylor", help="comma-separated")
    roar.add_argument("--fractions", default="0,10,20,30,40,50,60,70,80", help="%% of pixels replaced, comma-separated")
    roar.add_argument("--train-size", type=int, default=1000, help="cells, a stratified sample")
    roar.add_argument("--test-size", type=int, default=500, help="cells, a stratified sample")
    roar.add_argument("--max-epochs", type=int, default=10, help="of every (re)training")
    roar.add_argument("--seed", type=int, default=0)
    roar.set_defaults(run=_roar)

    imp = sub.add_parser("import", help="import a folder of cell images into a project")
    imp.add_argument("project", help="project id or name")
    imp.add_argument("folder")
    imp.add_argument("--labels", help="CSV with an image-path column and a class column")
    imp.add_argument("--split", choices=["pool", "test"], default="pool")
    imp.add_argument("--skip-duplicates", action="store_true")
    imp.add_argument("--skip-invalid", action="store_true")
    imp.set_defaults(run=_import)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from backend.errors import DomainError

    try:
        args.run(args)
    except DomainError as error:
        sys.exit(f"xal {args.command}: {error.message}")


if __name__ == "__main__":
    main()
