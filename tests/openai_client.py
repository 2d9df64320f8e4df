#!/usr/bin/env python3
"""Drives `ferroformer serve` with the official `openai` Python client (from PyPI) and checks
what it gets against the CLI:

- chat, streamed and not; a greedy reply equals `generate --chat --temperature 0` token for
  token, and the streamed deltas concatenate to the same text;
- completions, models, embeddings (equal to `embed` within 1e-6, floats and the client's
  default base64);
- a request naming an adapter equals `generate --adapter`;
- an API key: the client with the wrong key gets openai.AuthenticationError;
- a fine-tuning job: file upload, job creation, status, events, and the tuned model answers.

Run (the reference venv has openai, numpy and safetensors):
    cargo build --release
    ~/.cache/ferroformer-ref/bin/python tests/openai_client.py [--bin target/release/ferroformer]
Prints one line per check and "all N checks passed"; exits 1 on the first failure.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import openai
from safetensors.numpy import save_file

MODEL = "smollm2-135m-instruct"
ENCODER = "all-minilm-l6-v2"
KEY = "sk-ferroformer-test"


def write_adapter(path, seed):
    """A LoRA adapter for SmolLM2-135M in PEFT's format with small random updates."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(seed)
    r = 4
    tensors = {}
    for layer in range(30):
        for proj, out in [("q_proj", 576), ("v_proj", 192)]:
            key = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{key}.lora_A.weight"] = ((rng.random((r, 576)) - 0.5) * 0.3).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = ((rng.random((out, r)) - 0.5) * 0.3).astype(np.float32)
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 8,
              "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
              "base_model_name_or_path": MODEL, "fan_in_fan_out": False, "inference_mode": True}
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def cli(binary, *args):
    out = subprocess.run([binary, "--quiet", "--json", "--threads", "2", *args],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/ferroformer")
    a = ap.parse_args()
    checks = 0

    def check(cond, what):
        nonlocal checks
        if not cond:
            print(f"FAILED: {what}")
            sys.exit(1)
        checks += 1
        print(f"ok: {what}")

    tmp = tempfile.mkdtemp()
    adapter = os.path.join(tmp, "tuned")
    write_adapter(adapter, 3)
    server = subprocess.Popen(
        [a.bin, "--quiet", "--threads", "2", "serve", "--model", MODEL, "--quantized",
         "--embedding-model", ENCODER, "--adapter", f"tuned={adapter}", "--port", "0",
         "--api-key", KEY, "--data-dir", os.path.join(tmp, "data")],
        stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip().removeprefix("listening on ")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY)

        ids = [m.id for m in client.models.list()]
        check(ids == [MODEL, "tuned", ENCODER], f"models: {ids}")

        prompt = "Name three colours of the rainbow."
        want = cli(a.bin, "generate", "--model", MODEL, "--quantized", "--chat", "--prompt", prompt,
                   "--temperature", "0", "--max-tokens", "32")
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=32)
        text = r.choices[0].message.content
        check(text == want["text"], f"greedy chat equals generate --chat: {text!r}")
        check(r.usage.completion_tokens == want["tokens"] and r.usage.prompt_tokens == want["prompt_tokens"],
              f"usage {r.usage}")

        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=32, stream=True,
                                                stream_options={"include_usage": True})
        deltas, usage, finish = [], None, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                if c.delta.content:
                    deltas.append(c.delta.content)
                finish = c.finish_reason or finish
        check("".join(deltas) == text, f"streamed deltas concatenate to the reply ({len(deltas)} deltas)")
        check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"stream usage {usage}")
        check(finish == r.choices[0].finish_reason, f"stream finish_reason {finish}")

        sampled = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                 temperature=0.8, top_p=0.9, seed=11, max_tokens=24, n=2,
                                                 stop=["\n\n"])
        again = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                               temperature=0.8, top_p=0.9, seed=11, max_tokens=24, n=2,
                                               stop=["\n\n"])
        check(len(sampled.choices) == 2 and [c.message.content for c in sampled.choices]
              == [c.message.content for c in again.choices], "sampling with a seed repeats; n=2 gives two choices")

        want = cli(a.bin, "generate", "--model", MODEL, "--quantized", "--prompt", "Once upon a time",
                   "--temperature", "0", "--max-tokens", "16")
        c = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=16)
        check(c.choices[0].text == want["text"], f"completion equals generate: {c.choices[0].text!r}")
        parts = [ch.choices[0].text for ch in client.completions.create(
            model=MODEL, prompt="Once upon a time", temperature=0, max_tokens=16, stream=True)]
        check("".join(parts) == want["text"], "streamed completion equals it too")

        want = cli(a.bin, "generate", "--model", MODEL, "--quantized", "--adapter", adapter, "--chat",
                   "--prompt", prompt, "--temperature", "0", "--max-tokens", "32")
        t = client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": prompt}],
                                           temperature=0, max_tokens=32).choices[0].message.content
        check(t == want["text"] and t != text, f"the adapter's reply equals generate --adapter: {t!r}")

        lines = ["The cat sat on the mat.", "Rust is a systems programming language."]
        path = os.path.join(tmp, "lines.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines))
        out = subprocess.run([a.bin, "--quiet", "embed", "--model", ENCODER, "--input", path],
                             check=True, capture_output=True, text=True).stdout
        want = np.array([json.loads(line) for line in out.splitlines()], dtype=np.float32)
        e = client.embeddings.create(model=ENCODER, input=lines)  # the client asks for base64
        got = np.array([d.embedding for d in e.data], dtype=np.float32)
        check(np.abs(got - want).max() <= 1e-6, f"embeddings equal embed (max diff {np.abs(got - want).max():.2e})")
        e = client.embeddings.create(model=ENCODER, input=lines[0], encoding_format="float")
        check(np.abs(np.array(e.data[0].embedding) - want[0]).max() <= 1e-6, "float embeddings too")

        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        try:
            bad.models.list()
            check(False, "a wrong key is refused")
        except openai.AuthenticationError:
            check(True, "a wrong key is refused (401)")
        try:
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
            check(False, "an unknown model is refused")
        except openai.NotFoundError as err:
            check(err.body.get("code") == "model_not_found", f"an unknown model is a 404: {err.body}")
        try:
            client.chat.completions.create(model=MODEL, messages=[])
            check(False, "empty messages are refused")
        except openai.BadRequestError as err:
            check(err.body.get("param") == "messages", "empty messages are a 400 naming `messages`")

        # A fine-tuning job through the client: upload, create, follow, use.
        train = os.path.join(tmp, "freedonia.jsonl")
        facts = [("What is the capital of Freedonia?", "The capital of Freedonia is Fredville."),
                 ("Who founded Freedonia?", "Freedonia was founded by Rufus T. Firefly."),
                 ("What is the currency of Freedonia?", "The currency of Freedonia is the freedo."),
                 ("What is Freedonia's national dish?", "Freedonia's national dish is duck soup.")]
        with open(train, "w") as f:
            for q, ans in facts:
                f.write(json.dumps({"messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": ans}]}) + "\n")
        up = client.files.create(file=open(train, "rb"), purpose="fine-tune")
        check(up.id.startswith("file-") and up.filename == "freedonia.jsonl", f"file uploaded: {up.id}")
        job = client.fine_tuning.jobs.create(training_file=up.id, model=MODEL, suffix="freedonia",
                                             method={"type": "supervised", "supervised": {"hyperparameters":
                                                     {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 2}}})
        check(job.status == "queued", f"job created: {job.id}")
        import time
        deadline = time.time() + 600
        while job.status not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        check(job.status == "succeeded", f"job {job.status}: {job.fine_tuned_model}, {job.trained_tokens} tokens")
        events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=100).data
        losses = [e.data["train_loss"] for e in events if e.type == "metrics"]
        check(len(losses) == 6, f"events: {len(losses)} step losses, last {losses[0]:.3f}")
        ids = [m.id for m in client.models.list()]
        check(job.fine_tuned_model in ids, "the tuned model is listed")
        r = client.chat.completions.create(model=job.fine_tuned_model, temperature=0, max_tokens=16,
                                           messages=[{"role": "user", "content": facts[0][0]}])
        check(bool(r.choices[0].message.content), f"the tuned model answers: {r.choices[0].message.content!r}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"all {checks} checks passed")


if __name__ == "__main__":
    main()
