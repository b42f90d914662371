"""Command line: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunesmith.errors import Interrupted, TunesmithError


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunesmith")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    # --debug works before or after the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    p = argparse.ArgumentParser(prog="tunesmith", description="Fine-tune pretrained models.", parents=[common])
    p.add_argument("--version", action="version", version=f"tunesmith {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a run from a YAML config", parents=[common], **_example(
        "tunesmith train my.yaml --set train.epochs=1 --out runs/first\n"
        "  tunesmith train rt-minilm-full          # a shipped config, by name (`tunesmith configs`)\n"
        "  tunesmith train --resume runs/first     # continue a killed or paused run"))
    t.add_argument("config", nargs="?", help="YAML config file, or the name of a shipped one (optional with "
                                             "--resume: the run's own is used)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set train.epochs=2 (repeatable)")
    t.add_argument("--out", help="run directory (default runs/<config name>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or failed run in --out")

    e = sub.add_parser("eval", help="evaluate a finished run on a labelled file (or, for reward and preference "
                       "runs, a file of pairs)", parents=[common],
                       **_example("tunesmith eval runs/first --data new.csv --out predictions.jsonl"))
    e.add_argument("run_dir")
    e.add_argument("--data", required=True, help=".jsonl/.csv/.tsv/.parquet with text (or image path) and label "
                                                 "columns; for image runs also a folder with one subfolder per class; "
                                                 "for reward, DPO-family and KTO runs, preference rows (prompt, chosen, "
                                                 "rejected)")
    e.add_argument("--text-field", help="the text column (image runs: the image path column)")
    e.add_argument("--label-field", help="the label column")
    e.add_argument("--skip-bad-rows", action="store_true", help="count and skip bad rows instead of stopping")
    e.add_argument("--out", help="write every example's prediction here (JSON lines)")

    pr = sub.add_parser("predict", help="predict labels with a finished run", parents=[common],
                        **_example('tunesmith predict runs/first "a gorgeous, witty film" "two hours I want back"\n'
                                   "  tunesmith predict runs/first --file texts.csv --json"))
    pr.add_argument("run_dir")
    pr.add_argument("texts", nargs="*", help="texts to classify (image runs: image files)")
    pr.add_argument("--file", help="a .txt file (one text or image path per line), or .jsonl/.csv/.tsv/.parquet "
                                   "(the run's text or image-path column, or --field)")
    pr.add_argument("--field", help="the column to read from a .jsonl/.csv/.tsv/.parquet --file")
    pr.add_argument("--top-k", type=int, default=3, help="image runs: how many classes to show")
    pr.add_argument("--json", action="store_true", help="print JSON lines")

    g = sub.add_parser("generate", help="generate text with a language-model run (or a model name/dir)",
                       parents=[common], **_example('tunesmith generate runs/sft "Is this review fresh or rotten? '
                                                    'A delight." --max-new-tokens 8'))
    g.add_argument("run_dir", help="a causal_lm run directory, a built-in model name or a local HF directory")
    g.add_argument("prompts", nargs="*")
    g.add_argument("--file", help="a text file, one prompt per line")
    g.add_argument("--system", help="a system message before each prompt (chat models)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    chat = g.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None,
                      help="apply the chat template (default for a run: as it was trained; else where the model has one)")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="plain prompts, no chat template")
    g.add_argument("--json", action="store_true", help="print JSON lines {prompt, completion}")

    sc = sub.add_parser("score", help="rewards of texts from a reward-model run", parents=[common],
                        **_example('tunesmith score runs/reward "fresh" "rotten" --prompt "Fresh or rotten? A delight."\n'
                                   "  tunesmith score runs/reward --file pairs.jsonl"))
    sc.add_argument("run_dir")
    sc.add_argument("texts", nargs="*", help="completions (with --prompt) or whole texts to score")
    sc.add_argument("--prompt", help="the prompt the texts answer (rendered as in training)")
    sc.add_argument("--file", help="a .txt file (one text per line), or .jsonl/.csv/.tsv/.parquet read by its columns: "
                                   "pairs (prompt, chosen, rejected) get both rewards, the margin and the accuracy; "
                                   "other rows the reward of --field (text; or completion, with its prompt)")
    sc.add_argument("--field", help="the column to score in a table --file")
    sc.add_argument("--json", action="store_true", help="print JSON lines")

    pa = sub.add_parser("pairs", help="preference pairs from a model's own samples, judged by a run (AI feedback)",
                        parents=[common], **_example("tunesmith pairs --model smollm2-135m --judge runs/reward "
                                                     "--prompts prompts.txt --out pairs.jsonl"))
    pa.add_argument("--model", required=True, help="the model that answers: a causal_lm run, a built-in name or an HF dir")
    pa.add_argument("--judge", required=True, help="a reward run, or a classification run (with --prefer)")
    pa.add_argument("--prompts", required=True, help="a text file, one prompt per line")
    pa.add_argument("--out", required=True, help="the pairs, as JSON lines {prompt, chosen, rejected, scores}")
    pa.add_argument("--prefer", help="classification judge: the label whose probability is the score")
    pa.add_argument("--k", type=int, default=4, help="samples per prompt; the best and the worst make the pair")
    pa.add_argument("--max-new-tokens", type=int, default=48)
    pa.add_argument("--temperature", type=float, default=1.0)
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    pchat = pa.add_mutually_exclusive_group()
    pchat.add_argument("--chat", dest="chat", action="store_true", default=None,
                       help="prompt the model through its chat template (default: as its run was trained)")
    pchat.add_argument("--no-chat", dest="chat", action="store_false", help="plain prompts, no chat template")

    sa = sub.add_parser("sample", help="images from a diffusion run, a built-in diffusion model or a diffusers folder",
                        parents=[common], **_example("tunesmith sample runs/digits-lora --class 3 --num 8 --out samples"))
    sa.add_argument("run_dir", help="a diffusion run directory, a built-in diffusion model or a local diffusers folder")
    sa.add_argument("--class", dest="classes", action="append", help="a class to draw (repeat it; default: every class)")
    sa.add_argument("--prompt", dest="prompts", action="append",
                    help="a caption to draw (caption-conditioned models; repeat it: a grid row each)")
    sa.add_argument("--guidance", type=float, default=1.0,
                    help="classifier-free guidance scale with --prompt (1: none; e.g. 7.5)")
    sa.add_argument("--num", type=int, default=8, help="images per class")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--steps", type=int, default=50, help="denoising steps")
    sa.add_argument("--sampler", choices=("ddim", "model"), default="ddim",
                    help="ddim, or the model's own scheduler (e.g. DDPM)")
    sa.add_argument("--condition-from", action="append", metavar="IMAGE",
                    help="ControlLoRA-style runs: an image to make the condition from, as in training (repeat it)")
    sa.add_argument("--out", required=True, help="the folder for the PNGs and grid.png")

    mg = sub.add_parser("merge", help="merge a LoRA run's adapter into its base: a plain HF model", parents=[common],
                        **_example("tunesmith merge runs/lora merged-model"))
    mg.add_argument("run_dir")
    mg.add_argument("out_dir")
    mg.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    c = sub.add_parser("compare", help="several strategies x seeds on the same data, in one report", parents=[common],
                       **_example("tunesmith compare compare-20ng --seeds 2 --strategies linear-probe,full"))
    c.add_argument("config", help="a compare config (base run config + strategies; see tunesmith/compare.py)")
    c.add_argument("--out", help="output directory (default runs/compare-<config name>)")
    c.add_argument("--seeds", type=int, help="runs per strategy (overrides the config's seeds)")
    c.add_argument("--vary", choices=("init", "data", "both"), help="which seeds differ between runs")
    c.add_argument("--early-discard", type=float, metavar="FRACTION",
                   help="train every seed to this fraction of its steps, then continue only the best --keep")
    c.add_argument("--keep", type=int, default=1, help="seeds per strategy that continue after --early-discard")
    c.add_argument("--strategies", help="comma-separated subset of the config's strategies")

    ws = sub.add_parser("weak-stats", help="labeling functions of a weak-supervision config: coverage, overlap, "
                        "conflict, dev accuracy, label model", parents=[common],
                        **_example("tunesmith weak-stats rt-weak-cosine"))
    ws.add_argument("config", help="a run config with objective: weak")
    ws.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field (repeatable)")
    ws.add_argument("--out", help="where lf_stats.json and lf_stats.png go (default runs/weak-stats-<config name>)")

    x = sub.add_parser("export", help="a run as a GGUF file (llama.cpp, Ollama, LM Studio) or a plain HF folder",
                       parents=[common], **_example("tunesmith export runs/sft sft.gguf --dtype q8_0\n"
                                                    "  tunesmith export runs/first first-hf --format hf"))
    x.add_argument("run_dir")
    x.add_argument("out", help="the .gguf file (format gguf) or folder (format hf) to write")
    x.add_argument("--format", choices=("gguf", "hf"), default="gguf",
                   help="gguf: causal-LM runs of Llama-family models (LoRA merged first); hf: any run")
    x.add_argument("--dtype", choices=("f32", "f16", "q8_0"), help="gguf tensor type (default f16); --format hf "
                   "writes the weights as the run holds them")
    x.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    ck = sub.add_parser("check", help="every check a run does before loading its model; prints the resolved config",
                        parents=[common], **_example("tunesmith check my.yaml --set data.train=my.csv"))
    ck.add_argument("config", help="YAML config file, or the name of a shipped one")
    ck.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a config field (repeatable)")
    ck.add_argument("--no-data", action="store_true", help="check the config only, without reading the data")

    it = sub.add_parser("init", help="write a commented starter config for an objective", parents=[common],
                        **_example("tunesmith init classify --out my.yaml\n"
                                   "  tunesmith init dpo --model /models/my-llama --out dpo.yaml"))
    it.add_argument("objective", help="one of `tunesmith objectives`")
    it.add_argument("--model", help="a built-in model name or a local HF directory (default: a built-in one)")
    it.add_argument("--out", help="the file to write (default OBJECTIVE.yaml; - prints it)")
    it.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    cf = sub.add_parser("configs", help="list the configs shipped with tunesmith, or print one", parents=[common],
                        **_example("tunesmith configs\n  tunesmith configs rt-minilm-full > my.yaml"))
    cf.add_argument("name", nargs="?", help="print this shipped config")

    for name, what in (("models", "built-in models"), ("datasets", "built-in data sets"),
                       ("methods", "fine-tuning methods (what learns)"), ("objectives", "objectives (what a run learns)")):
        sub.add_parser(name, help=f"list {what}", parents=[common], **_example(f"tunesmith {name}"))
    return p


def _example(text: str) -> dict:
    return {"epilog": f"example:\n  {text}", "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Options may come before, between or after the texts of predict and generate."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        positional = {"predict": "texts", "generate": "prompts", "score": "texts"}.get(args.command)
        if positional is None or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, positional, getattr(args, positional) + extra)
    args.debug = getattr(args, "debug", False)
    return args


def _train(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.run import run
    from tunesmith.shipped import resolve_config_path

    if args.config:
        args.config = str(resolve_config_path(args.config))
    cfg = load_config(args.config, args.overrides) if args.config else None
    if cfg is None and not args.resume:
        raise TunesmithError("train: give a config file (or --resume RUN_DIR)")
    if args.overrides and not args.config:
        raise TunesmithError("train: --set needs a config file; a resumed run keeps its own config")
    run_dir = args.resume or args.out or f"runs/{Path(args.config).stem}"
    if args.resume and args.out and Path(args.out) != Path(args.resume):
        raise TunesmithError("train: --resume RUN_DIR already names the run directory; drop --out")
    summary = run(cfg, run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    if summary.get("world_size", 1) == 1 or os.environ.get("RANK", "0") == "0":
        if summary.get("paused"):
            print(json.dumps({"run_dir": str(run_dir), "paused": summary}, indent=2))
        else:
            print(json.dumps({"run_dir": str(run_dir), "final": summary["final"]}, indent=2))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from tunesmith.compare import compare, load_compare_config
    from tunesmith.shipped import resolve_config_path

    args.config = str(resolve_config_path(args.config))
    cfg = load_compare_config(args.config, args.seeds, args.vary)
    out = Path(args.out or f"runs/compare-{Path(args.config).stem}")
    if args.keep < 1:
        raise TunesmithError("compare: --keep must be >= 1")
    chosen = args.strategies.split(",") if args.strategies else None
    unknown = [s for s in chosen or [] if s not in cfg.strategies]
    if unknown:
        raise TunesmithError(f"compare: no strategy {unknown[0]!r} in {args.config} "
                             f"(it has {', '.join(cfg.strategies)})")
    compare(cfg, out, args.early_discard, args.keep, chosen, log=lambda m: print(m, file=sys.stderr, flush=True))
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'} and {out / 'report.html'}", file=sys.stderr)
    return 0


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _listing(command: str) -> int:
    if command == "models":
        from tunesmith.models import MODELS

        rows = [("name", "kind", "params", "license", "what it is")]
        rows += [(m.name, m.kind, m.params, m.license, m.description) for m in MODELS.values()]
        print(_table(rows) + "\n\nAny local Hugging Face-format directory works too: model.name: /path/to/dir; "
              "or your own torch image model: model.name: package.module:factory + model.weights")
    elif command == "datasets":
        from tunesmith.data import DATASETS

        rows = [("name", "task", "license", "what it is")]
        rows += [(d.name, d.task, d.license, d.description) for d in DATASETS.values()]
        print(_table(rows) + "\n\nYour own files: data.train / data.validation / data.test (.jsonl .json .csv .tsv .parquet; "
              "images: a folder with one subfolder per class, or a file of path,label); data.eval_sets for more")
    elif command == "objectives":
        from tunesmith.objectives import OBJECTIVES

        rows = [("name", "models", "finished runs answer", "what it learns")]
        rows += [(name, o.model_kind or "text or causal-lm", o.command, o.description) for name, o in OBJECTIVES.items()]
        print(_table(rows) + "\n\nA starter config for one: tunesmith init NAME; its options: docs/config.md")
    else:
        from tunesmith.methods import METHODS

        print(_table([("name", "what learns")] + [(name, m.description) for name, m in METHODS.items()]))
    return 0


def _configs(args: argparse.Namespace) -> int:
    from tunesmith.shipped import resolve_config_path, shipped_configs

    if args.name:
        sys.stdout.write(resolve_config_path(args.name).read_text(encoding="utf-8"))
        return 0
    rows = [("name", "kind", "objective", "model", "what it does")]
    rows += [(c.name, c.kind, c.objective, c.model, c.about) for c in shipped_configs()]
    print(_table(rows) + "\n\nRun one by name: tunesmith train NAME (compare configs: tunesmith compare NAME); "
          "print one to start your own: tunesmith configs NAME > my.yaml")
    return 0


def _init(args: argparse.Namespace) -> int:
    from tunesmith.scaffold import starter_config

    text = starter_config(args.objective, args.model)
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out or f"{args.objective}.yaml")
    if out.exists() and not args.overwrite:
        raise TunesmithError(f"init: {out} already exists; pass --overwrite to replace it, or --out another file")
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}; check it with: tunesmith check {out}   then train: tunesmith train {out}")
    return 0


def _check(args: argparse.Namespace) -> int:
    import yaml

    from tunesmith.config import config_to_dict, load_config
    from tunesmith.objectives import build_objective
    from tunesmith.shipped import resolve_config_path

    path = resolve_config_path(args.config)
    cfg = load_config(path, args.overrides)
    print(f"# {path}: the config is valid; resolved, with every default:")
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, width=110).rstrip())
    if not args.no_data:
        data = build_objective(cfg).load_data(cfg)
        print("# data: read and checked")
        for line in data.report.lines():
            print(f"#   {line}")
    print("# ok: no model was loaded; train it with: tunesmith train "
          f"{args.config}{''.join(f' --set {o}' for o in args.overrides)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from tunesmith.export import export_run

    written = export_run(args.run_dir, args.out, format=args.format, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported to {written}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tunesmith.infer import evaluate_file

    result = evaluate_file(args.run_dir, args.data, args.text_field, args.label_field,
                           skip_bad_rows=args.skip_bad_rows, out=args.out)
    print(json.dumps(result, indent=2))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from tunesmith.infer import merge_run

    print(f"merged model written to {merge_run(args.run_dir, args.out_dir, overwrite=args.overwrite)}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from tunesmith.infer import score, score_file

    if args.file and _is_table(args.file):
        if args.texts or args.prompt:
            raise TunesmithError("score: a table --file brings its own rows (and prompts); give texts and --prompt "
                                 "without it")
        rows, summary = score_file(args.run_dir, args.file, args.field)
        for row in rows:
            if args.json:
                print(json.dumps(row))
            elif "margin" in row:
                print(f"{row['chosen_reward']:.4f}\t{row['rejected_reward']:.4f}\t{row['margin']:+.4f}\t{row['where']}")
            else:
                print(f"{row['reward']:.4f}\t{row['text'][:100]}")
        if "pairs" in summary:
            print(json.dumps(summary) if args.json else
                  f"{summary['pairs']:,} pairs: accuracy {summary['accuracy']:.4f} (chosen scored above rejected), "
                  f"mean margin {summary['mean_margin']:+.4f}")
        return 0
    if args.field:
        raise TunesmithError("score: --field is for a .jsonl/.csv/.tsv/.parquet --file")
    texts = list(args.texts) + (_read_lines(args.file) if args.file else [])
    if not texts:
        raise TunesmithError("score: give texts as arguments or --file texts.txt (or a .jsonl of pairs)")
    for text, value in zip(texts, score(args.run_dir, texts, args.prompt), strict=True):
        print(json.dumps({"text": text, "reward": value}) if args.json else f"{value:.4f}\t{text[:100]}")
    return 0


def _is_table(path: str) -> bool:
    from tunesmith.data.sources import detect_format
    from tunesmith.errors import DataError

    try:
        detect_format(path)
        return True
    except DataError:
        return False


def _pairs(args: argparse.Namespace) -> int:
    from tunesmith.feedback import make_pairs

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TunesmithError(f"{out} already exists; pass --overwrite to replace it")
    report = make_pairs(args.model, _read_lines(args.prompts), args.judge, out, k=args.k, prefer=args.prefer,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                        chat=args.chat)
    print(json.dumps(report, indent=2))
    return 0


def _weak_stats(args: argparse.Namespace) -> int:
    from tunesmith.config import load_config
    from tunesmith.objectives.weak import weak_stats
    from tunesmith.shipped import resolve_config_path

    args.config = str(resolve_config_path(args.config))
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"runs/weak-stats-{Path(args.config).stem}")
    lines, written = weak_stats(cfg, out)
    print("\n".join(lines))
    print(f"written: {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


COMMANDS = {"train": _train, "eval": _eval, "compare": _compare, "merge": _merge, "score": _score, "pairs": _pairs,
            "weak-stats": _weak_stats, "configs": _configs, "init": _init, "check": _check, "export": _export}


def _sample(args: argparse.Namespace) -> int:
    from tunesmith.sampling import sample_to_folder

    written = sample_to_folder(args.run_dir, args.out, args.classes, args.prompts, args.num, args.seed, args.steps,
                               args.sampler, args.condition_from, args.guidance)
    print(f"{len(written) - 1} images and {written[-1]} written", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    # the command line owns its process: no hub at run time (a local directory is all it reads), and
    # none of transformers' advice meant for its own API users. `import tunesmith` sets nothing.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = _parse(argv)
    try:
        if args.command in ("models", "datasets", "methods", "objectives"):
            return _listing(args.command)
        handler = COMMANDS.get(args.command) or {"predict": _predict, "generate": _generate, "sample": _sample}[args.command]
        return handler(args)
    except Interrupted as e:  # asked for (Ctrl-C, a scheduler's SIGTERM): not an error, so no "error:"
        print(str(e), file=sys.stderr)
        return e.exit_code
    except TunesmithError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tunesmith predict ... | head`: the reader left; nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _predict(args: argparse.Namespace) -> int:
    from tunesmith.infer import predict, read_inputs

    inputs = list(args.texts) + (read_inputs(args.run_dir, args.file, args.field) if args.file else [])
    if not inputs:
        raise TunesmithError("predict: give texts as arguments or --file texts.txt")
    rows, objective = predict(args.run_dir, inputs, args.top_k)
    for row in rows:
        print(json.dumps(row) if args.json else objective.describe_prediction(row), flush=False)
    return 0


def _read_lines(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TunesmithError(f"{path}: cannot read: {e}") from None
    return [line for line in lines if line.strip()]


def _generate(args: argparse.Namespace) -> int:
    from tunesmith.generate import GenerationConfig, chat_for, describe_prompt_format, generate
    from tunesmith.infer import open_generator

    prompts = list(args.prompts) + (_read_lines(args.file) if args.file else [])
    if not prompts:
        raise TunesmithError("generate: give prompts as arguments or --file prompts.txt")
    model, tokenizer, prompt_format = open_generator(args.run_dir, "generate")
    chat, why = chat_for(prompt_format, tokenizer, args.chat)
    if args.system and not chat:
        raise TunesmithError(f"generate: --system needs the chat template, and prompts are plain text here, as {why}; "
                             "pass --chat, or put the instruction in the prompt")
    print(describe_prompt_format("chat" if chat else "plain", why), file=sys.stderr, flush=True)
    cfg = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    texts = generate(model, tokenizer, prompts, cfg, chat=chat, system=args.system)
    for prompt, text in zip(prompts, texts, strict=True):
        print(json.dumps({"prompt": prompt, "completion": text}) if args.json else f">>> {prompt}\n{text}\n")
    return 0
