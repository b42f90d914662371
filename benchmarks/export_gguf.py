"""A SmolLM2-135M LoRA run exported to GGUF at f32, f16 and q8_0: file size, export time, and how far the
file's model is from the run's own, read back by transformers' GGUF reader (and by llama.cpp when
llama-cpp-python is installed).

    .venv/bin/python -m benchmarks.export_gguf [--run RUN_DIR] [--train 64] [--new-tokens 24]
        [--out runs/bench-export]

Without --run it first trains one briefly (LoRA r=8 on q,k,v,o; --train conversations of the built-in
rotten-tomatoes-chat, 1 epoch). max |dlogit| is over every position of the fixed prompts below; greedy
agreement is the share of the run's own greedy tokens generated before the first one that differs (and
how many prompts match in full).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import torch

from benchmarks.results import machine_line, save_results
from tunesmith.config import config_from_dict
from tunesmith.export import GGUF_DTYPES, export_run
from tunesmith.infer import open_saved
from tunesmith.run import run

QUESTIONS = ["Is this review fresh or rotten? a gorgeous, heartfelt film with a wonderful cast",
             "Is this review fresh or rotten? two hours of my life I will never get back",
             "Write one sentence about the sea.",
             "What is 12 + 30?"]
PLAIN = ["The capital of France is", "def fibonacci(n):\n    "]


def train_run(out: Path, n_train: int) -> Path:
    cfg = {"model": {"name": "smollm2-135m", "max_length": 128},
           "method": {"name": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                         "o_proj"]}},
           "objective": {"name": "causal_lm", "exact_match": False},
           "data": {"builtin": "rotten-tomatoes-chat", "max_train_samples": n_train, "max_eval_samples": 16,
                    "split": {"validation": 0.01, "test": 0.01, "seed": 0}},
           "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "weight_decay": 0.0, "progress": False}}
    run(config_from_dict(cfg), out / "run", overwrite=True)
    return out / "run"


def prompts(tokenizer) -> list[list[int]]:
    from tunesmith.data.chat import chat_prefix  # how `tunesmith generate` renders a chat prompt

    chat = [chat_prefix(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    return chat + [tokenizer(p)["input_ids"] for p in PLAIN]


def hf_scores(model, ids: list[list[int]], new_tokens: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    """(logits at every prompt position, greedy continuation) per prompt."""
    logits, greedy = [], []
    with torch.no_grad():
        for p in ids:
            x = torch.tensor([p])
            logits.append(model(x).logits[0].float())
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=model.config.eos_token_id)
            greedy.append(out[0, len(p):].tolist())
    return logits, greedy


def llama_cpp_scores(path: Path, ids: list[list[int]], new_tokens: int):
    import llama_cpp
    import numpy as np

    # weights in plain buffers (llama.cpp's --no-repack): its AMX kernels for 8-bit weights crash on some
    # virtual machines, on llama.cpp's own files too
    default = llama_cpp.llama_cpp.llama_model_default_params

    def plain_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama_cpp.llama_model_default_params = plain_buffers
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=512, verbose=False, seed=0)
    logits, greedy = [], []
    for p in ids:
        llm.reset()
        llm.eval(p)
        logits.append(torch.from_numpy(np.array(llm.scores[: len(p)], dtype=np.float32)))
        tokens = []
        for t in llm.generate(p, temp=0.0, top_k=1, reset=True):
            if len(tokens) == new_tokens:
                break
            tokens.append(t)
        greedy.append(tokens)
    return logits, greedy


def compare(ref, got, eos: int) -> dict:
    """max |dlogit| over every prompt position; of the greedy tokens, the share generated before the first
    one that differs from the run's (after it the texts go separate ways), and the prompts fully equal."""
    (ref_logits, ref_greedy), (logits, greedy) = ref, got
    delta = max((a - b).abs().max().item() for a, b in zip(ref_logits, logits, strict=True))
    agree = total = full = 0
    for a, b in zip(ref_greedy, greedy, strict=True):
        a, b = _until_eos(a, eos), _until_eos(b, eos)
        prefix = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        agree += prefix
        total += max(len(a), len(b))
        full += a == b
    return {"max_dlogit": delta, "greedy_agree": agree / max(total, 1), "prompts_same": full, "greedy": greedy}


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def versions(with_llama: bool) -> str:
    from importlib.metadata import version

    import transformers

    found = f"transformers {transformers.__version__}, gguf {version('gguf')}"
    if with_llama:
        import llama_cpp

        found += f", llama-cpp-python {llama_cpp.__version__}"
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a finished causal-LM run to export (default: train one first)")
    p.add_argument("--train", type=int, default=64, help="training conversations when training the run here")
    p.add_argument("--new-tokens", type=int, default=24, help="greedy tokens generated per prompt")
    p.add_argument("--dtypes", default=",".join(GGUF_DTYPES))
    p.add_argument("--out", default="runs/bench-export")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(args.run) if args.run else train_run(out, args.train)

    from transformers import AutoModelForCausalLM

    opened = open_saved(run_dir)
    model = opened.method().merged(opened.model) if opened.method is not None else opened.model
    tokenizer = opened.tokenizer
    ids = prompts(tokenizer)
    ref = hf_scores(model, ids, args.new_tokens)
    try:
        import llama_cpp  # noqa: F401
        with_llama = True
    except ImportError:
        with_llama = False
    rows = []
    for dtype in args.dtypes.split(","):
        print(f"== {dtype}", file=sys.stderr, flush=True)
        path = out / f"smollm2-lora-{dtype}.gguf"
        start = time.perf_counter()
        export_run(run_dir, path, dtype=dtype, overwrite=True)
        seconds = time.perf_counter() - start
        read = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32).eval()
        row = {"dtype": dtype, "mib": path.stat().st_size / 2**20, "export_s": seconds,
               **compare(ref, hf_scores(read, ids, args.new_tokens), tokenizer.eos_token_id)}
        if with_llama:
            row["llama_cpp"] = compare(ref, llama_cpp_scores(path, ids, args.new_tokens), tokenizer.eos_token_id)
        rows.append(row)

    machine = machine_line()
    n = len(ids)
    lines = [f"GGUF export of a smollm2-135m LoRA run ({run_dir}), {date.today().isoformat()}; {n} prompts "
             f"({len(QUESTIONS)} chat, {len(PLAIN)} plain), {args.new_tokens} greedy tokens each",
             f"machine: {machine}; {versions(with_llama)}", "",
             "| dtype | file MiB | export s | max abs dlogit (transformers) | greedy agreement | prompts identical |"
             + (" max abs dlogit (llama.cpp) | greedy agreement (llama.cpp) | prompts identical (llama.cpp) |"
                if with_llama else ""),
             "|---|---|---|---|---|---|" + ("---|---|---|" if with_llama else "")]
    for r in rows:
        line = (f"| {r['dtype']} | {r['mib']:.1f} | {r['export_s']:.1f} | {r['max_dlogit']:.2e} | "
                f"{100 * r['greedy_agree']:.1f}% | {r['prompts_same']}/{n} |")
        if with_llama:
            c = r["llama_cpp"]
            line += f" {c['max_dlogit']:.2e} | {100 * c['greedy_agree']:.1f}% | {c['prompts_same']}/{n} |"
        lines.append(line)
    lines += ["", "dlogit: GGUF model minus the run's merged model, logits at every prompt position (they range "
              "about +-40 here); greedy agreement: share of the run's greedy tokens generated before the first that differs; "
              "export s: opening the run, merging the adapter and writing the file."]
    if not with_llama:
        lines.append("llama.cpp columns: install llama-cpp-python to add them.")
    save_results(out, "\n".join(lines), machine, args, rows, prompts=ids, run_greedy=ref[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
