"""lm-evaluation-harness on the same Story Cloze task, model and machine as `ferroformer eval
fewshot`: the speed and accuracy reference for bench/RESULTS.md.

    ~/.cache/ferroformer-ref/bin/python bench/fewshot_lmeval.py --shots 0 --limit 200 \
        [--threads 2] [--batch-size 1] [--json bench/fewshot_lmeval.json]

SmolLM2-135M-Instruct as transformers loads it from the GGUF asset (float32), wrapped in lm-eval
0.4.13's HFLM; the task is tests/fixtures/fewshot's YAML (lm-eval's storycloze_2016 with the TSV
column names) over the asset's TSVs. Prints one JSON line: task, shots, n, acc, acc_norm,
seconds (simple_evaluate only, model loading excluded), tokens per second of the contexts.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "fixtures", "fewshot"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import make_fewshot_fixtures as fx  # noqa: E402


def main():
    cache = os.environ.get("FERROFORMER_CACHE", os.path.expanduser("~/.cache/ferroformer"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.join(cache, "smollm2-135m-instruct",
                                                   "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--storycloze", default=os.path.join(cache, "storycloze"))
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix="ff_lmeval_bench_")
    try:
        data_dir, task_dir = os.path.join(tmp, "data"), os.path.join(tmp, "tasks")
        os.makedirs(data_dir)
        os.makedirs(task_dir)
        os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, "hf_datasets_cache")
        for split, name in [("validation", "val"), ("test", "test")]:
            rows = fx.read_storycloze(os.path.join(a.storycloze, f"cloze_test_spring2016_{name}.tsv"))
            fx.write_jsonl(rows, os.path.join(data_dir, f"{split}.jsonl"))
        yaml = fx.YAML_TEMPLATE.format(task=fx.TASK, fewshot_split="validation")
        with open(os.path.join(task_dir, fx.TASK + ".yaml"), "w") as f:
            f.write(yaml.replace("@DATA_DIR@", data_dir))
        tm = TaskManager(include_path=task_dir)
        tok, model = fx.load_smollm2(a.gguf)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=a.batch_size)
        t0 = time.time()
        res = simple_evaluate(model=lm, tasks=[fx.TASK], num_fewshot=a.shots, limit=a.limit,
                              task_manager=tm, bootstrap_iters=0)
        seconds = time.time() - t0
        r = res["results"][fx.TASK]
        out = {"task": "storycloze", "shots": a.shots, "n": a.limit,
               "acc": float(r["acc,none"]), "acc_norm": float(r["acc_norm,none"]),
               "seconds": seconds, "threads": a.threads, "batch_size": a.batch_size,
               "lm_eval": fx.versions().get("lm_eval")}
        print(json.dumps(out))
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(out) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
