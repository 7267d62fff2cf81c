"""`xal`: the one command. xal serve | worker | migrate | create-user | token | import | pretrain | simulate | roar."""

import argparse
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path


def _serve(args) -> None:
    import uvicorn

    from backend.core.db.migrate import upgrade_database
    from backend.core.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_database()
    announcement = _Announcement(
        f"XAL on http://{args.host}:{args.port}/  (API docs: /api/docs)",
        f"database: {settings.resolved_database_url.split('@')[-1]}; broker: {settings.resolved_broker_url.split('@')[-1]}",
        _first_start(),
    )
    worker, worker_ready = (None, None) if args.no_worker else _start_worker()
    server = uvicorn.Server(
        uvicorn.Config(
            "backend.api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            log_level="info",
            # uvloop's event loop and httptools' parser: the labeling routes are async and
            # spend a good part of their time in the loop and the HTTP parser
            loop="uvloop",
            http="httptools",
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: only from these
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=settings.trusted_proxies or None,
        )
    )
    threading.Thread(target=announcement.once_up, args=(server, worker_ready), daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        # where the lines were not said yet (the API did not start): a first start's password is not lost
        announcement.say("the API stopped" if server.started else "the API did not start (see above)")
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
    if not server.started:
        sys.exit(3)  # uvicorn's exit status for a failed start


def _first_start() -> list[str]:
    """Creates the user `admin` in an empty database and returns the lines that say how to sign in."""
    from sqlalchemy import func, select

    from backend.core.db.models import User
    from backend.core.db.session import new_session
    from backend.services.users import create_user, issue_token

    with new_session() as session:
        if session.scalar(select(func.count(User.id))):
            return []
        password = secrets.token_urlsafe(12)
        admin = create_user(session, "admin", "admin", password)
        _, token = issue_token(session, admin, "first start")
        session.commit()
    return [f"First start: created user 'admin' with password {password}", f"API token: {token}"]


def _start_worker() -> tuple[subprocess.Popen, int]:
    """`xal worker` beside the API, without its banner; it writes to the pipe returned once it
    takes tasks, by when it has printed its start-up lines."""
    ready_read, ready_write = os.pipe()
    worker = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "worker", "--quiet", "--ready-fd", str(ready_write)],
        env=os.environ.copy(),
        pass_fds=(ready_write,),
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    os.close(ready_write)
    return worker, ready_read


class _Announcement:
    """The project's own lines (address, settings, a first start's password and token), printed
    once, after what uvicorn and the worker print as they start, so that they are not lost among
    them."""

    WORKER_READY_TIMEOUT_S = 120

    def __init__(self, address: str, settings: str, first_start: list[str]):
        self.address, self.settings, self.first_start = address, settings, first_start
        self._lock = threading.Lock()
        self._said = False

    def once_up(self, server, worker_ready: int | None) -> None:
        """Waits for the API to listen and the worker to take tasks, then says the lines."""
        from select import select

        while not server.started:
            if server.should_exit:
                return
            time.sleep(0.1)
        if worker_ready is None:
            self.say("worker: none here (--no-worker)")
        elif not select([worker_ready], [], [], self.WORKER_READY_TIMEOUT_S)[0]:
            self.say(f"worker: not ready after {self.WORKER_READY_TIMEOUT_S} s (see above)")
        elif os.read(worker_ready, 1):
            self.say("worker: ready")
        else:  # the pipe closed: the worker ended
            self.say("worker: stopped (see above)")

    def say(self, status: str) -> None:
        with self._lock:
            if self._said:
                return
            self._said = True
        rule = "-" * 72
        lines = ["", rule, self.address, f"{self.settings}; {status}", *self.first_start, rule]
        print("\n".join(lines), flush=True)


def _die_with_parent() -> None:
    """In the worker child: the kernel sends it SIGTERM when `xal serve` ends, however it ends
    (uvicorn re-raises the signal it stopped on, so a `finally` in the parent may never run)."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker(args) -> None:
    from backend.core.settings import get_settings
    from worker.celery_app import celery_app

    argv = ["worker", "--loglevel", args.loglevel, "-Q", get_settings().queue, "--hostname", f"xal-{os.getpid()}@%h"]
    # one training job already uses every core; several processes only pay off with many cores or GPUs
    argv += ["--pool", "solo"] if args.concurrency == 1 else ["--concurrency", str(args.concurrency)]
    if args.quiet:
        argv.insert(0, "--quiet")  # Celery's: no banner
    if args.ready_fd is not None:
        _tell_when_ready(args.ready_fd)
    celery_app.worker_main(argv)


def _tell_when_ready(fd: int) -> None:
    """Writes to the pipe `fd` (`xal serve`'s) once the worker takes tasks. Celery logs its
    "ready." line just after; `xal serve` says that itself, so the line is left out."""
    from celery.signals import worker_ready

    def ready(**_kwargs) -> None:
        worker_ready.disconnect(ready)  # sent again after a reconnection
        os.write(fd, b"1")
        os.close(fd)

    logging.getLogger("celery.apps.worker").setLevel(logging.WARNING)
    worker_ready.connect(ready, weak=False)


def _migrate(_args) -> None:
    from backend.core.db.migrate import upgrade_database

    upgrade_database()
    print("database is at the latest schema")


def _create_user(args) -> None:
    from backend.core.db.migrate import upgrade_database
    from backend.core.db.session import new_session
    from backend.services.members import add_member
    from backend.services.projects import find_project
    from backend.services.users import create_user, issue_token

    upgrade_database()
    with new_session() as session:
        projects = [find_project(session, ref) for ref in args.project]  # all found, or no user is made
        user = create_user(session, args.username, args.role, args.password)
        for project in projects:
            add_member(session, project, user.id)
        _, token = issue_token(session, user, "cli")
        session.commit()
    print(token)


def _token(args) -> None:
    from backend.core.db.session import new_session
    from backend.services.users import issue_token, user_named

    with new_session() as session:
        user = user_named(session, args.username)
        if user is None:
            sys.exit(f"no user {args.username!r}")
        _, token = issue_token(session, user, args.name)
        session.commit()
    print(token)


def _roar(args) -> None:
    from backend.core.settings import get_settings
    from worker.experiments.roar import RoarSettings, run_roar
    from worker.ml.training import resolve_device

    settings = RoarSettings(
        data=str(Path(args.data).resolve()),
        labels=str(Path(args.labels).resolve()) if args.labels else None,
        train_size=args.train_size,
        test_size=args.test_size,
        max_epochs=args.max_epochs,
        seed=args.seed,
    )
    methods = [m for m in args.methods.split(",") if m]
    fractions = [int(x) for x in args.fractions.split(",") if x]
    recommendation = run_roar(settings, Path(args.out), methods, fractions, resolve_device(get_settings().device))
    print(f"recommended relevance method: {recommendation['method']}; roar.csv, roar_kar.png in {args.out}")


def _import(args) -> None:
    from backend.cli_import import run_import

    report = run_import(
        args.project,
        Path(args.folder),
        Path(args.labels) if args.labels else None,
        args.split,
        "skip" if args.skip_duplicates else "error",
        "skip" if args.skip_invalid else "error",
    )
    splits = ", ".join(f"{count} into the {split} split" for split, count in sorted(report.imported_per_split.items()))
    print(
        f"imported {len(report.image_ids)} images ({splits or 'none'}); "
        f"{len(report.duplicates)} duplicates and {len(report.invalid)} invalid files skipped"
    )
    for item in report.invalid[:20]:
        print(f"  invalid: {item['filename']}: {item['error']}")


def _fast_precision() -> str:
    from backend.core.settings import get_settings
    from worker.ml.training import bf16_is_fast, resolve_device

    return "bf16" if bf16_is_fast(resolve_device(get_settings().device)) else "fp32"


def _simulate(args) -> None:
    from worker.experiments.per_budget import CASES, SimulationSettings, simulate

    def listed(values: list[str], convert=str) -> list:  # `--x a b`, `--x a,b` or a mix, as one list
        return [convert(item) for value in values for item in value.split(",") if item]

    if args.curve:
        from worker.experiments.curve import CURVE_CASES, CurveSettings, curve

        settings = CurveSettings(
            data=str(Path(args.data).resolve()),
            test_data=str(Path(args.test_data).resolve()) if args.test_data else None,
            test_fraction=args.test_fraction,
            validation_fraction=args.validation_fraction,
            max_epochs=args.max_epochs or 20,
            patience=args.patience or 4,
            batch_size=args.batch_size,
            precision=args.precision or _fast_precision(),
            class_weighting=args.class_weighting,
            pretext_epochs=args.pretext_epochs,
        )
        cases = listed(args.cases)
        curve(
            settings,
            Path(args.out),
            list(CURVE_CASES) if cases == ["all"] else cases,
            listed(args.seeds, int),
            args.to,
            Path(args.cache) if args.cache else None,
        )
        print(f"curves up to {args.to:g}% of the pool; tables and plot in {args.out}")
        return
    if args.test_data:
        raise SystemExit("--test-data is for --curve runs")

    settings = SimulationSettings(
        data=str(Path(args.data).resolve()),
        labels=str(Path(args.labels).resolve()) if args.labels else None,
        test_fraction=args.test_fraction,
        pool_size=args.pool_size,
        test_size=args.test_size,
        pretrain_size=args.pretrain_size,
        pretrain_exclude=args.pretrain_exclude,
        max_epochs=args.max_epochs or 30,
        single_training_epochs=args.single_training_epochs,
        patience=args.patience or 5,
        batch_size=args.batch_size,
    )
    cases = listed(args.cases)
    computed = simulate(
        settings,
        Path(args.out),
        list(CASES) if cases == ["all"] else cases,
        listed(args.budgets, float),
        listed(args.seeds, int),
        Path(args.cache) if args.cache else None,
    )
    print(f"{len(computed)} runs computed, the others were done already; tables and plots in {args.out}")


def _pretrain(args) -> None:
    import numpy as np

    from backend.core.blobs import get_blob_store
    from backend.core.db.migrate import upgrade_database
    from backend.core.db.models import ModelVersion
    from backend.core.db.session import new_session
    from backend.core.settings import get_settings
    from worker.experiments.cells import CHANNEL, read_labeled_folder, stratified_sample
    from worker.experiments.pretrain import pretrain
    from worker.ml.training import TrainingConfig, resolve_device
    from worker.rounds import load_cells

    upgrade_database()
    store = get_blob_store()
    cells = read_labeled_folder(Path(args.data), Path(args.labels) if args.labels else None, store)
    cells = cells.excluding(args.exclude_class)
    if args.limit:
        cells = cells.subset(np.sort(stratified_sample(cells.labels, args.limit, np.random.default_rng(args.seed))))
    config = TrainingConfig(max_epochs=args.max_epochs, seed=args.seed)
    trained = pretrain(
        load_cells(cells.hashes, CHANNEL), cells.labels, cells.class_names, config, resolve_device(get_settings().device)
    )
    with new_session() as session:
        model = ModelVersion(
            project_id=None,
            name=args.name,
            checkpoint_key=store.put(trained.checkpoint),
            class_names=trained.class_names,
            metrics=trained.metrics,
            training=trained.training,
        )
        session.add(model)
        session.commit()
    print(
        f"model version {model.id} ({args.name!r}): {len(cells.hashes)} cells of {', '.join(trained.class_names)}; "
        f"held-out accuracy {trained.metrics.get('aca', float('nan')):.3f}",
        file=sys.stderr,
    )
    print(model.id)


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
    worker.add_argument("--quiet", action="store_true", help="no banner")
    worker.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)  # xal serve's pipe
    worker.set_defaults(run=_worker)

    sub.add_parser("migrate", help="upgrade the database schema").set_defaults(run=_migrate)

    user = sub.add_parser("create-user", help="create a user and print an API token for it")
    user.add_argument("username")
    user.add_argument("--role", choices=["admin", "annotator", "client"], required=True)
    user.add_argument("--password")
    user.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="NAME_OR_ID",
        help="make the user a member of this project (repeatable); admins see every project",
    )
    user.set_defaults(run=_create_user)

    token = sub.add_parser("token", help="print a new API token for a user")
    token.add_argument("username")
    token.add_argument("--name", default="cli")
    token.set_defaults(run=_token)

    roar = sub.add_parser(
        "roar", help="rank the relevance methods by remove-and-retrain / keep-and-retrain on a labeled folder (resumable)"
    )
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
    imp.add_argument(
        "--labels", help="CSV with an image-path column, a class column and optionally a split column (train/pool, test)"
    )
    imp.add_argument(
        "--split", choices=["pool", "test"], default="pool", help="for images whose labels.csv row names no split"
    )
    imp.add_argument("--skip-duplicates", action="store_true")
    imp.add_argument("--skip-invalid", action="store_true")
    imp.set_defaults(run=_import)

    simulate = sub.add_parser(
        "simulate",
        help="replay the active-learning experiment on a labeled folder, the ground truth as the oracle (resumable)",
    )
    simulate.add_argument("--data", required=True, help="labeled folder (a labels.csv, or one folder per class)")
    simulate.add_argument("--labels", help="CSV with an image-path column and a class column")
    simulate.add_argument("--out", required=True, help="results folder; a rerun into it skips finished runs")
    simulate.add_argument("--cache", help="copies of the cells, checkpoints, pretrained models (default OUT/cache)")
    simulate.add_argument("--cases", nargs="+", default=["all"], help="names, space- or comma-separated; default all")
    simulate.add_argument("--budgets", nargs="+", default=["2,5,10,20,100"], help="%% of the pool")
    simulate.add_argument("--seeds", nargs="+", default=["0,1,2"])
    simulate.add_argument("--test-fraction", type=float, default=0.2)
    simulate.add_argument("--pool-size", type=int, help="stratified subsample of the pool (default: all of it)")
    simulate.add_argument("--test-size", type=int, help="stratified subsample of the test split (default: all of it)")
    simulate.add_argument("--max-epochs", type=int, help="default 30 (--curve: 20)")
    simulate.add_argument(
        "--single-training-epochs",
        type=int,
        help="max epochs of the pretraining and of the 100%% "
        "ceiling, trained once rather than round after round (default: --max-epochs)",
    )
    simulate.add_argument("--patience", type=int, help="default 5 (--curve: 4)")
    simulate.add_argument("--batch-size", type=int, default=128)
    simulate.add_argument("--pretrain-size", type=int, default=1000, help="cells of the in-* cases' pretraining part")
    simulate.add_argument(
        "--pretrain-exclude",
        nargs="*",
        default=["Golgi"],
        metavar="CLASS",
        help="classes the pretraining part leaves out (default Golgi)",
    )
    simulate.add_argument(
        "--curve",
        action="store_true",
        help="one run per case and seed, step by step up to --to %% of the pool (worker/experiments/curve.py); "
        "its own defaults: --max-epochs 20 --patience 4, bf16, class-balanced loss",
    )
    simulate.add_argument("--to", type=float, default=10.0, help="--curve: label up to this %% of the pool (at most 20)")
    simulate.add_argument("--test-data", help="--curve: a separate labeled folder as the test set")
    simulate.add_argument(
        "--validation-fraction",
        type=float,
        default=0.03,
        help="--curve: fixed validation cells, this share of each class by content hash",
    )
    simulate.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        help="--curve; default bf16 where the hardware computes in it (a GPU, a CPU with AVX512-BF16 or AMX), else fp32",
    )
    simulate.add_argument("--class-weighting", choices=["balanced", "none"], default="balanced", help="--curve")
    simulate.add_argument("--pretext-epochs", type=int, default=20, help="--curve: contrastive pretraining on the pool")
    simulate.set_defaults(run=_simulate)

    pretrain = sub.add_parser("pretrain", help="train a start model on a labeled folder and store it as a model version")
    pretrain.add_argument("--data", required=True, help="labeled folder (a labels.csv, or one folder per class)")
    pretrain.add_argument("--labels", help="CSV with an image-path column and a class column")
    pretrain.add_argument("--name", required=True)
    pretrain.add_argument("--exclude-class", nargs="+", action="extend", default=[], metavar="CLASS")
    pretrain.add_argument("--limit", type=int, help="at most this many cells, each class in proportion")
    pretrain.add_argument("--max-epochs", type=int, default=30)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.set_defaults(run=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # a line per plugin, every start
    args = build_parser().parse_args(argv)
    from backend.core.errors import DomainError

    try:
        args.run(args)
    except DomainError as error:
        sys.exit(f"xal {args.command}: {error.message}")


if __name__ == "__main__":
    main()
