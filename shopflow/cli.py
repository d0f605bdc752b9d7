"""Command line: `python -m shopflow <stage>` or `shopflow <stage>`; dvc.yaml calls these.

Errors caused by input print one clear message (no traceback) and exit non-zero: 2 for bad
input or params, 3 for failed data validation. `--debug` (or SHOPFLOW_DEBUG=1) shows the
traceback as well.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import importlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from shopflow.core import paths
from shopflow.core.config import Params, flatten, load_params, write_params
from shopflow.core.errors import ShopflowError, capped_lines
from shopflow.core.processes import die_with_parent
from shopflow.core.secrets import new_key
from shopflow.orchestration import runlog
from shopflow.orchestration.handover import RESTORE_ONLY_ENV

log = logging.getLogger("shopflow")


class StageCommand:
    """A stage command: import `pipelines.<stage>` only when run, then call its `run`.
    Its runs are recorded in the run log (`shopflow.orchestration.runlog`)."""

    def __init__(self, stage: str, options: tuple[str, ...] = ()) -> None:
        self.stage = stage
        self.options = options  # command-line options passed on to the stage's `run`

    def __call__(self, params: Params, args: argparse.Namespace) -> None:
        # A stage killed with its DVC (`dvc repro` SIGKILLed) must not go on writing into the
        # workspace while a retry starts: it gets SIGTERM when its parent dies.
        die_with_parent()
        given = {name: getattr(args, name) for name in self.options}
        importlib.import_module(f"pipelines.{self.stage}").run(params, **given)


def _show_params(params: Params | None, args: argparse.Namespace) -> None:
    if args.write:
        overrides = [*args.set, *getattr(args, "set_after", [])]
        written = write_params(args.params, overrides)
        print(f"{written}: composed from {paths.CONF}/ with {overrides or 'no overrides'}")
        return
    assert params is not None
    print(json.dumps(params.model_dump(mode="json", by_alias=True), indent=2))


def _bento_requirements(params: Params, args: argparse.Namespace) -> None:
    from shopflow.serving.bento_env import write_requirements

    print(write_requirements())


def _show_metrics(params: Params, args: argparse.Namespace) -> None:
    """One metric a line (DVC's table is one column per metric, too wide for a terminal)."""
    for path in sorted(paths.METRICS.glob("*.json")):
        print(f"{path}:")
        for key, value in flatten(json.loads(path.read_text())):
            print(f"  {key:<40} {value}")


def _save_model(params: Params, args: argparse.Namespace) -> None:
    from shopflow.serving.model_store import save_model

    print(save_model(params))


def _build_bento(params: Params, args: argparse.Namespace) -> None:
    from shopflow.serving.bento_build import build_bento
    from shopflow.serving.model_store import current_model

    print(build_bento(args.model or current_model(params)))


def _serve(params: Params, args: argparse.Namespace) -> None:
    from shopflow.release.deploy import serve_champion

    code = serve_champion(params, model=args.model, bento=args.bento, port=args.port)
    if code:
        raise SystemExit(code)


def _deploy(params: Params, args: argparse.Namespace) -> None:
    from shopflow.release.deploy import deploy_champion
    from shopflow.serving.local import stop_local

    if args.stop:
        stopped = stop_local(Path(params.deploy.state))
        print(json.dumps(stopped or {"stopped": False, "why": "no local service recorded"}))
        return
    print(json.dumps(deploy_champion(params)))


def _report(params: Params, args: argparse.Namespace) -> None:
    from shopflow.reporting.facts import runner_result
    from shopflow.reporting.pages import write

    runner = None if args.exit_code is None else runner_result(args.exit_code, args.output)
    print(write(params, run_id=args.run, runner=runner))


def _registry(params: Params, args: argparse.Namespace) -> None:
    from shopflow.release.registry_admin import administer

    print(administer(params, args.what))


def _rollback(params: Params, args: argparse.Namespace) -> None:
    from shopflow.release.rollback import rollback

    entry = rollback(params, to=args.to)
    print(f"champion is now #{entry.id}: {entry.version} (Bento {entry.bento_tag})")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name
        return f"uid {os.getuid()}"


COMMANDS: dict[str, tuple[str, Callable[[Params, argparse.Namespace], None]]] = {
    "ingest": (
        "read the source for the window and write the data contract",
        StageCommand("ingest"),
    ),
    "validate": ("Great Expectations gate over the ingested tables", StageCommand("validate")),
    "prepare": ("splits and training examples", StageCommand("prepare")),
    "baselines": (
        "tuned BM25F, the zero-shot encoder and the recommend baselines (popularity, buy "
        "again, EASE, item-kNN), with their test numbers",
        StageCommand("baselines"),
    ),
    "pretrain": (
        "domain-adaptive masked-LM pretraining of the base encoder",
        StageCommand("pretrain"),
    ),
    "retriever": (
        "fine-tune the two-tower retriever (search; its user tower recommends)",
        StageCommand("retriever"),
    ),
    "reranker": (
        "fine-tune the cross-encoder reranker (grades + debiased clicks)",
        StageCommand("reranker"),
    ),
    "recommender": (
        "choose what /recommend serves: the best baseline or a LightGBM mix of the sources",
        StageCommand("recommender"),
    ),
    "drift": (
        "Evidently drift check of the latest day against the champion's training window",
        StageCommand("drift"),
    ),
    "evaluate": (
        "A/B evaluation of the challenger against the champion; writes the gate's decision",
        StageCommand("evaluate"),
    ),
    "online": (
        "read the running online experiment's logs: advance, promote or stop it (docs/online.md)",
        StageCommand("online"),
    ),
    "promote": (
        "on a promote verdict (or --force): save, build and smoke-test the Bento, then move "
        "the champion",
        StageCommand("promote", options=("force", "reason", "by")),
    ),
    "report": (
        "write the HTML report of a run (default: the latest) and the runs' index; print its path",
        _report,
    ),
    "registry": (
        "the champion (`registry show`), the promotion log (`registry history`), "
        "`registry init` (a new shop), `registry upgrade` (seal an old registry) or "
        "`registry rekey` (seal under SHOPFLOW_REGISTRY_KEY_NEW)",
        lambda params, args: _registry(params, args),
    ),
    "rollback": (
        "re-point the champion to an earlier model (default: the one before)",
        lambda params, args: _rollback(params, args),
    ),
    "save-model": (
        "save the current models, catalogue and users as a BentoML model; print its tag",
        _save_model,
    ),
    "build-bento": (
        "build a Bento (service + model; default: the current outputs); print its tag",
        _build_bento,
    ),
    "deploy": (
        "deploy the champion's Bento (params deploy.target: local serve or BentoCloud); "
        "--stop stops the local one",
        _deploy,
    ),
    "serve": (
        "serve the champion's Bento on 127.0.0.1 (or, explicitly, --bento / --model)",
        _serve,
    ),
    "bento-requirements": (
        "write bento/requirements.txt: the service's packages and all they need, pinned",
        _bento_requirements,
    ),
    "keys": ("`keys new`: a random key (docs/security.md)", lambda p, a: print(new_key())),
    "params": (
        "print the effective params; --write: compose conf/ with the -S overrides into "
        "params.yaml, as `dvc exp run -S` does",
        _show_params,
    ),
    "metrics": ("print metrics/*.json one metric a line", _show_metrics),
}


def _common_options(parser: argparse.ArgumentParser, default: object = None) -> None:
    """Options accepted before or after the command (`shopflow ingest -S a=b` reads naturally)."""
    parser.add_argument("--params", type=Path, default=default or paths.PARAMS, help="params file")
    parser.add_argument(
        "-S",
        "--set",
        action="append",
        default=default or [],
        metavar="KEY=VALUE",
        dest="set_after" if default is argparse.SUPPRESS else "set",
        help="compose conf/ with this override, as `dvc exp run -S` does (the last one wins), "
        "e.g. -S profile=tiny -S ingest.window.days=7",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default or False, help="debug logging"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default or False,
        help="show tracebacks of input errors",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shopflow", description=__doc__.splitlines()[0])
    _common_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, _) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text)
        _common_options(cmd, default=argparse.SUPPRESS)  # keep values given before the command
        if name == "params":
            cmd.add_argument(
                "--write", action="store_true", help="write params.yaml (then `dvc repro`)"
            )
        if name == "keys":
            cmd.add_argument("what", choices=["new"], help="new: print a fresh 64-hex key")
        if name == "registry":
            cmd.add_argument(
                "what",
                choices=["show", "history", "init", "upgrade", "rekey"],
                nargs="?",
                default="show",
                help="init: create a new shop's registry; upgrade: seal a format-1 registry",
            )
        if name == "rollback":
            cmd.add_argument(
                "--to",
                default=None,
                help="entry id (#3) or model version; default: the model before",
            )
        if name == "report":
            cmd.add_argument("--run", default=None, help="run id (default: the latest run)")
            cmd.add_argument(
                "--exit-code",
                type=int,
                default=None,
                help="exit code of the command that ran the stages (dvc repro)",
            )
            cmd.add_argument(
                "--output",
                type=Path,
                default=None,
                help="that command's output, for its error lines",
            )
        if name == "promote":
            cmd.add_argument(
                "--force",
                action="store_true",
                help="promote the current outputs whatever the gate said (still smoke-tested)",
            )
            cmd.add_argument("--reason", default=None, help="why (required with --force)")
            cmd.add_argument("--by", default=_user(), help="who forces it (default: this user)")
        if name == "deploy":
            cmd.add_argument("--stop", action="store_true", help="stop the local deployment")
        if name in ("serve", "build-bento"):
            cmd.add_argument(
                "--model",
                default=None,
                help="BentoML model tag (shopflow:...); serve: `current` for this workspace's "
                "latest outputs (ungated)",
            )
        if name == "serve":
            cmd.add_argument("--bento", default=None, help="a built Bento's tag")
            cmd.add_argument("--port", type=int, default=None, help="default: serving.port")
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in (
        "great_expectations",
        "urllib3",
        "numba",
        "filelock",
        "fsspec",
        "bm25s",
        "sentence_transformers",
        "httpx",
        "huggingface_hub",
        "matplotlib",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    debug = args.debug or os.environ.get("SHOPFLOW_DEBUG") == "1"
    command = COMMANDS[args.command][1]
    if isinstance(command, StageCommand) and os.environ.get(RESTORE_ONLY_ENV):
        print(
            f"shopflow {args.command}: error: not run here: this worker was restoring the stage "
            "from the DVC remote's run cache, which has no run of it for these inputs (its "
            "Airflow task has not run and pushed for this night: clear it with this task)",
            file=sys.stderr,
        )
        return ShopflowError.exit_code
    # a stage's record includes failures to read its params: the run report names them
    recorded = runlog.recorded(args.command) if isinstance(command, StageCommand) else None
    try:
        with recorded or contextlib.nullcontext():
            if command is _show_params and args.write:  # composes conf/ afresh: an
                _show_params(None, args)  # outdated params.yaml is what it replaces
            else:
                params = load_params(args.params, [*args.set, *getattr(args, "set_after", [])])
                command(params, args)
    except ShopflowError as exc:
        if debug:
            traceback.print_exc()
        print(f"shopflow {args.command}: error: {capped_lines(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            f"shopflow {args.command}: interrupted; outputs were left as they were", file=sys.stderr
        )
        return 130
    return 0
