#!/usr/bin/env python3
"""Load on an OpenAI-compatible server: N concurrent streaming chat clients for a fixed time,
each sending request after request (128 new tokens, sampled, a different seed each), against
`ferroformer serve` and, beside it, llama.cpp's own server (llama-cpp-python[server]) on the
same GGUF, machine and threads. Traffic goes to 127.0.0.1 only and stops by itself.

Reports per server and stream count: the aggregate generated tokens/s (content chunks of the
streams, one per token), requests finished, errors, and streams that ended without
`finish_reason` and `[DONE]` (lost); ferroformer's counts are checked against the usage it
reports.

    bench/serve_load.py [--streams 1,4,16] [--seconds 120] [--servers ferroformer,llama.cpp]

Needs: a release build, and in the reference venv openai/httpx and llama-cpp-python[server].
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx

PROMPTS = [
    "Tell me a story about a lighthouse keeper.",
    "Explain how rain forms, step by step.",
    "Write a short poem about the sea.",
    "Describe a busy market in the morning.",
    "What should I pack for a week of hiking?",
    "Give me three ideas for a birthday party.",
    "Explain what a compiler does.",
    "Describe the life cycle of a butterfly.",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server, gguf, threads, ff, py):
    port = free_port()
    if server == "ferroformer":
        cmd = [ff, "--quiet", "--threads", str(threads), "serve", "--model", gguf, "--quantized",
               "--served-model-name", "m", "--port", str(port)]
    else:
        cmd = [py, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "m", "--n_threads",
               str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096", "--port", str(port),
               "--host", "127.0.0.1", "--verbose", "False",
               # Queue concurrent requests (its default interrupts the running one).
               "--interrupt_requests", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{server} did not start")


async def client(http, url, k, deadline, stats, max_tokens):
    i = 0
    while time.time() < deadline:
        body = {"model": "m", "stream": True, "max_tokens": max_tokens, "temperature": 0.8,
                "seed": 1000 * k + i, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": PROMPTS[(k + i) % len(PROMPTS)]}]}
        i += 1
        chunks, finished, done, usage = 0, False, False, None
        try:
            async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    stats["errors"] += 1
                    await r.aread()
                    continue
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    c = json.loads(data)
                    if "error" in c:
                        stats["errors"] += 1
                        break
                    if c.get("usage"):
                        usage = c["usage"]["completion_tokens"]
                    for ch in c.get("choices", []):
                        if ch.get("delta", {}).get("content"):
                            chunks += 1
                        finished = finished or ch.get("finish_reason") is not None
        except httpx.HTTPError:
            stats["errors"] += 1
            continue
        if time.time() > deadline + 60:
            break
        stats["tokens"] += chunks
        if finished and done:
            stats["requests"] += 1
            if usage is not None:
                stats["usage_tokens"] += usage
                stats["with_usage"] += 1
        else:
            stats["lost"] += 1


async def run(url, streams, seconds, max_tokens):
    stats = dict(tokens=0, requests=0, errors=0, lost=0, usage_tokens=0, with_usage=0)
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:
        start = time.time()
        deadline = start + seconds
        await asyncio.gather(*(client(http, url, k, deadline, stats, max_tokens) for k in range(streams)))
        stats["seconds"] = time.time() - start
    return stats


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--servers", default="ferroformer,llama.cpp")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--bin", default="target/release/ferroformer")
    a = ap.parse_args()
    py = sys.executable
    gguf = a.gguf or os.path.join(subprocess.run([a.bin, "--quiet", "fetch", "smollm2-135m-instruct"],
                                                 check=True, capture_output=True, text=True).stdout.strip(),
                                  "SmolLM2-135M-Instruct.Q4_1.gguf")
    results = []
    for server in a.servers.split(","):
        proc, url = start(server, gguf, a.threads, a.bin, py)
        try:
            for n in [int(x) for x in a.streams.split(",")]:
                s = asyncio.run(run(url, n, a.seconds, a.max_tokens))
                s.update(server=server, streams=n, tokens_per_s=s["tokens"] / s["seconds"])
                print(json.dumps(s), flush=True)
                results.append(s)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\n{'server':12} {'streams':>7} {'tok/s':>8} {'vs 1 stream':>11} {'requests':>8} {'errors':>6} {'lost':>5}")
    for r in results:
        one = next(x for x in results if x["server"] == r["server"] and x["streams"] == 1) \
            if any(x["server"] == r["server"] and x["streams"] == 1 for x in results) else r
        print(f"{r['server']:12} {r['streams']:7} {r['tokens_per_s']:8.1f} {r['tokens_per_s'] / one['tokens_per_s']:10.2f}x"
              f" {r['requests']:8} {r['errors']:6} {r['lost']:5}")


if __name__ == "__main__":
    main()
