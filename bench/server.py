"""`nightingale serve` over HTTP against the model in-process.

    python -m bench.server [--model synthetic] [--runs 10] [--clients 1,4,8] [--json]

1. Time to first audio: the first chunk of `TTS.stream()` in this process, against the first body
   byte of `POST /v1/audio/speech` (pcm, streamed) from a real server on 127.0.0.1, the same text,
   seeds and chunk sizes, one request at a time (target: HTTP <= 1.1x in-process).
2. Throughput with concurrent clients: C clients each sending requests back to back; the model
   serves one at a time, so audio seconds per second stay flat while waiting grows with C.
"""

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import machine

TEXT = "Hello there, this is a short benchmark sentence."


def in_process_ttfa(tts, seed, args) -> float:
    t0 = time.perf_counter()
    chunks = tts.stream(TEXT, seed=seed, max_new_tokens=args.max_new_tokens,
                        first_chunk_tokens=args.first_chunk_tokens, chunk_tokens=args.chunk_tokens)
    next(chunks)
    seconds = time.perf_counter() - t0
    chunks.close()
    return seconds


def http_request(http, url, seed, args):
    """(seconds to the first body byte, seconds to the end, audio seconds) of one streamed request."""
    body = {"input": TEXT, "response_format": "pcm", "seed": seed, "max_new_tokens": args.max_new_tokens}
    t0 = time.perf_counter()
    first, size = None, 0
    with http.stream("POST", url, json=body) as r:
        r.raise_for_status()
        for part in r.iter_raw():
            if first is None and part:
                first = time.perf_counter() - t0
            size += len(part)
    return first, time.perf_counter() - t0, size / 2 / 24000


def ttfa_pairs(tts, server, args) -> list:
    """(in-process, HTTP, the server's own first-chunk time) per seed, the two sides alternating so
    that drifts in the machine's load hit both alike."""
    import httpx

    pairs = []
    with httpx.Client(timeout=600) as http:
        for seed in range(args.runs):
            local = in_process_ttfa(tts, seed, args)
            first, _, _ = http_request(http, server.v1 + "/audio/speech", seed, args)
            job = server.wait_idle()["last_job"]
            pairs.append((local, first, job["first_chunk_s"]))
    return pairs


def throughput(server, clients: int, per_client: int, args) -> dict:
    import httpx

    results, lock = [], threading.Lock()

    def client(k):
        with httpx.Client(timeout=600) as http:
            for i in range(per_client):
                r = http_request(http, server.v1 + "/audio/speech", 1000 + k * per_client + i, args)
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    firsts = sorted(r[0] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": wall, "requests_per_s": len(results) / wall,
            "audio_s_per_s": sum(r[2] for r in results) / wall,
            "ttfa_p50_s": statistics.median(firsts), "ttfa_max_s": firsts[-1],
            "latency_mean_s": statistics.mean(r[1] for r in results)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="synthetic")
    p.add_argument("--runs", type=int, default=10, help="requests per time-to-first-audio side")
    p.add_argument("--clients", default="1,4,8")
    p.add_argument("--per-client", type=int, default=4, help="requests per client in the throughput runs")
    p.add_argument("--max-new-tokens", type=int, default=60, help="speech tokens per request (25 = 1 s)")
    p.add_argument("--first-chunk-tokens", type=int, default=12)
    p.add_argument("--chunk-tokens", type=int, default=25)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import nightingale_mlx as ng
    from tests.server_harness import Server

    tts = ng.load(args.model)
    for _ in tts.stream("Hello.", max_new_tokens=4, seed=0):  # the server warms up the same way
        pass
    with tempfile.TemporaryDirectory() as tmp:
        from nightingale_mlx.loader import cache_root

        server = Server(cache_root(), Path(tmp) / "server.log", "--queue-size", "64",
                        "--first-chunk-tokens", str(args.first_chunk_tokens), "--chunk-tokens", str(args.chunk_tokens),
                        model=args.model)
        try:
            pairs = ttfa_pairs(tts, server, args)
            loads = [throughput(server, int(c), args.per_client, args) for c in args.clients.split(",")]
        finally:
            server.stop()
    local, remote, model = ([p[i] for p in pairs] for i in range(3))
    result = {
        "machine": machine(), "model": args.model, "max_new_tokens": args.max_new_tokens,
        "chunks": [args.first_chunk_tokens, args.chunk_tokens],
        "ttfa_in_process_s": statistics.median(local), "ttfa_http_s": statistics.median(remote),
        "ttfa_ratio": statistics.median(remote) / statistics.median(local),
        "http_overhead_s": statistics.median(r - m for r, m in zip(remote, model)),
        "ttfa_in_process_all": local, "ttfa_http_all": remote, "throughput": loads,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"time to first audio (median of {args.runs}): in-process {result['ttfa_in_process_s'] * 1000:.0f} ms, "
          f"HTTP {result['ttfa_http_s'] * 1000:.0f} ms, ratio {result['ttfa_ratio']:.3f} (target <= 1.1); "
          f"HTTP beyond the server's own first chunk: {result['http_overhead_s'] * 1000:.1f} ms")
    print("clients  requests  req/s  audio s/s  TTFA p50  TTFA max  latency mean")
    for r in loads:
        print(f"{r['clients']:>7}  {r['requests']:>8}  {r['requests_per_s']:5.2f}  {r['audio_s_per_s']:9.2f}  "
              f"{r['ttfa_p50_s']:7.2f}s  {r['ttfa_max_s']:7.2f}s  {r['latency_mean_s']:11.2f}s")


if __name__ == "__main__":
    main()
