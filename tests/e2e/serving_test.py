#!/usr/bin/python3
"""End-to-end serving tests: switchyard-coordinator + switchyard-worker processes on 127.0.0.1,
driven through the `switchyard` CLI, checked against the single-process engine (switchyard-run).

  serving_test.py --bin-dir BUILD/bin --work-dir DIR --suite greedy --workers 2
  serving_test.py --bin-dir BUILD/bin --work-dir DIR --suite features
  serving_test.py --bin-dir BUILD/bin --work-dir DIR --suite overflow
  serving_test.py --bin-dir BUILD/bin --work-dir DIR --suite model     (only makes the checkpoint)

Exit status: 0 all checks passed, 1 a check failed, 77 skipped (a binary is not built).
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster import Cluster, ClusterError, http_get  # noqa: E402

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PYTHON = "/usr/bin/python3"
SKIP = 77

# gRPC status codes (the CLI exits with them).
OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED = 0, 1, 3, 4
RESOURCE_EXHAUSTED, UNAVAILABLE = 8, 14


class Checks:
    def __init__(self):
        self.failures = []

    def check(self, ok, name, detail=""):
        print(f"{'PASS' if ok else 'FAIL'} {name}" + ("" if ok else f": {detail}"), flush=True)
        if not ok:
            self.failures.append(name)
        return ok


class Env:
    def __init__(self, args):
        self.bin_dir = os.path.abspath(args.bin_dir)
        self.work_dir = os.path.abspath(args.work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        self.model_dir = os.path.join(self.work_dir, "model")
        self.cli_path = os.path.join(self.bin_dir, "switchyard")

    def missing_binaries(self):
        names = ["switchyard", "switchyard-coordinator", "switchyard-worker", "switchyard-run",
                 "switchyard-make-model"]
        return [n for n in names if not os.access(os.path.join(self.bin_dir, n), os.X_OK)]

    def ensure_model(self, fresh=False):
        """Makes the shared checkpoint; `fresh` (the fixture that runs before every suite) remakes
        it, so a build with a changed model maker never tests against an old checkpoint."""
        exists = os.path.exists(os.path.join(self.model_dir, "config.json"))
        if exists and not fresh:
            return
        tmp = tempfile.mkdtemp(dir=self.work_dir, prefix="model-")
        subprocess.run([os.path.join(self.bin_dir, "switchyard-make-model"), "--family",
                        "qwen3_moe", "--out", tmp, "--seed", "7"], check=True,
                       stdout=subprocess.DEVNULL)
        if exists:  # no suite runs while the fixture does: move the old one out of the way
            old = tempfile.mkdtemp(dir=self.work_dir, prefix="model-old-")
            os.rename(self.model_dir, os.path.join(old, "model"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, self.model_dir)  # atomic: parallel suites share the model
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
        with open(os.path.join(self.model_dir, "config.json"), encoding="utf-8") as f:
            json.load(f)

    def model_config(self):
        with open(os.path.join(self.model_dir, "config.json"), encoding="utf-8") as f:
            return json.load(f)

    def cli(self, address, *args, timeout=120):
        """(exit code, stdout, stderr) of `switchyard ARGS --address ADDRESS`."""
        p = subprocess.run([self.cli_path, *args, "--address", address], capture_output=True,
                           text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def reference_ids(self, prompt, max_tokens, ignore_eos=False):
        """Greedy output ids of the single-process engine."""
        out = os.path.join(self.work_dir, f"ref-{os.getpid()}-{threading.get_ident()}.ids")
        argv = [os.path.join(self.bin_dir, "switchyard-run"), "--model", self.model_dir,
                "--prompt-ids", ",".join(map(str, prompt)), "--temperature", "0",
                "--max-tokens", str(max_tokens), "--ids-out", out]
        if ignore_eos:
            argv.append("--ignore-eos")
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        with open(out, encoding="utf-8") as f:
            text = f.read().strip()
        os.remove(out)
        return [int(x) for x in text.split(",")] if text else []


def parse_stream(stdout):
    """(token ids, finished dict or None, deltas) from `generate --json` output."""
    ids, finished, deltas = [], None, 0
    for line in stdout.splitlines():
        if not line.strip():
            continue
        msg = json.loads(line)
        if "delta" in msg and msg["delta"] is not None:
            ids += [int(t) for t in msg["delta"].get("token_ids", [])]
            deltas += 1
        if msg.get("finished"):
            finished = msg["finished"]
    return ids, finished, deltas


def generate(env, address, prompt, max_tokens, *extra, timeout=120):
    rc, out, err = env.cli(address, "generate", "--prompt_ids", ",".join(map(str, prompt)),
                           "--temperature", "0", "--max_tokens", str(max_tokens), "--json",
                           *extra, timeout=timeout)
    ids, finished, _ = parse_stream(out) if rc == 0 else ([], None, 0)
    return rc, ids, finished, err


def status_json(env, address):
    rc, out, err = env.cli(address, "status", "--json", timeout=30)
    if rc != 0:
        raise RuntimeError(f"switchyard status failed ({rc}): {err.strip()}")
    return json.loads(out)


def random_prompts(vocab, count, seed, min_len=3, max_len=40, min_out=4, max_out=24):
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))],
             rng.randint(min_out, max_out)) for _ in range(count)]


# ------------------------------------------------------------------------------------- suites


def suite_greedy(env, checks, num_workers):
    """32 prompts arriving at random times in a mixed batch: greedy ids equal switchyard-run's."""
    vocab = env.model_config()["vocab_size"]
    prompts = random_prompts(vocab, 32, seed=1234)
    # The first 8 arrive together and generate 64 tokens each (EOS ignored), so that they are in
    # the batch together however fast the machine starts the clients.
    burst = 8
    prompts = [(p, 64) for p, _ in prompts[:burst]] + prompts[burst:]
    refs = [env.reference_ids(p, n, ignore_eos=idx < burst) for idx, (p, n) in enumerate(prompts)]
    log_dir = os.path.join(env.work_dir, f"logs-greedy-{num_workers}")
    with Cluster(env.bin_dir, env.model_dir, log_dir, num_workers) as cluster:
        results = [None] * len(prompts)
        # The burst at once, the rest at random times while it runs.
        delays = [0.0] * burst + random.Random(99).sample([i * 0.03 for i in range(50)],
                                                           len(prompts) - burst)

        def one(idx):
            time.sleep(delays[idx])
            extra = ("--ignore_eos",) if idx < burst else ()
            results[idx] = generate(env, cluster.address, *prompts[idx], *extra)

        steps_before = int(status_json(env, cluster.address).get("steps", 0))
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The point of the suite is a mixed, changing batch, checked on the server: run one after
        # another, the requests would need at least a step per generated token.
        steps = int(status_json(env, cluster.address).get("steps", 0)) - steps_before
        generated = sum(len(res[1]) for res in results if res is not None)
        checks.check(0 < steps < generated, f"greedy requests shared steps ({num_workers} workers, "
                     f"{generated} tokens in {steps} steps)", "no fewer steps than tokens")
        mismatches = []
        for idx, ((prompt, max_tokens), ref, res) in enumerate(zip(prompts, refs, results)):
            rc, ids, finished, err = res
            if rc != 0:
                mismatches.append(f"#{idx}: exit {rc}: {err.strip()}")
            elif ids != ref:
                mismatches.append(f"#{idx} (prompt {len(prompt)} tokens): got {ids}, "
                                  f"switchyard-run {ref}")
            elif finished is None or finished.get("usage", {}).get("completion_tokens") != len(ids):
                mismatches.append(f"#{idx}: Finished usage disagrees: {finished}")
        checks.check(not mismatches, f"greedy outputs equal switchyard-run ({num_workers} workers, "
                     f"32 prompts)", "; ".join(mismatches[:5]) + f" ({len(mismatches)} bad)")


def check_bench(env, checks, cluster):
    rc, out, err = env.cli(cluster.address, "bench", "--num_requests", "64", "--concurrency",
                           "64", "--input_len", "24", "--output_len", "12", "--range_ratio", "0.5",
                           "--seed", "3", "--json", timeout=180)
    try:
        report = json.loads(out)
    except ValueError:
        report = {}
    checks.check(rc == 0 and report.get("completed") == 64 and report.get("failed") == 0,
                 "bench: 64 concurrent streams all complete",
                 f"exit {rc}, report {report}, stderr {err.strip()}")
    checks.check(report.get("total_output_tokens", 0) >= 64 * 6,
                 "bench: ignore_eos gives the asked output lengths", f"report {report}")


def check_status_transport(env, checks, cluster):
    info = status_json(env, cluster.address)
    devices = [w.get("device") for w in info.get("workers", [])]
    checks.check(info.get("data_plane") == "gloo" and devices and set(devices) == {"cpu"},
                 "status: the data plane and each worker's device",
                 f"data_plane {info.get('data_plane')!r}, devices {devices}")


def check_cancel_frees_blocks(env, checks, cluster):
    before = status_json(env, cluster.address)
    used_before = sum(int(w.get("kv_blocks_used", 0)) for w in before.get("workers", []))
    prompt = random_prompts(env.model_config()["vocab_size"], 1, seed=5, min_len=60, max_len=60)[0][0]
    proc = subprocess.Popen([env.cli_path, "generate", "--address", cluster.address,
                             "--prompt_ids", ",".join(map(str, prompt)), "--max_tokens", "180",
                             "--ignore_eos", "--json"], stdout=subprocess.PIPE, text=True)
    got_tokens = 0
    for line in proc.stdout:
        got_tokens += len(json.loads(line).get("delta", {}).get("token_ids", []))
        if got_tokens >= 3:
            break
    mid = status_json(env, cluster.address)
    used_mid = sum(int(w.get("kv_blocks_used", 0)) for w in mid.get("workers", []))
    proc.kill()  # the client goes away mid-stream: gRPC cancels the call
    proc.wait()
    checks.check(got_tokens >= 3 and used_mid > used_before,
                 "cancel: the stream held KV blocks midway",
                 f"tokens {got_tokens}, blocks used {used_before} -> {used_mid}")
    deadline = time.monotonic() + 30
    used_after = None
    while time.monotonic() < deadline:
        info = status_json(env, cluster.address)
        used_after = sum(int(w.get("kv_blocks_used", 0)) for w in info.get("workers", []))
        if used_after <= used_before and int(info.get("num_running", 0)) == 0:
            break
        time.sleep(0.2)
    checks.check(used_after is not None and used_after <= used_before,
                 "cancel: a stream cancelled midway frees its KV blocks",
                 f"blocks used before {used_before}, midway {used_mid}, after {used_after}")


def check_prefix_cache(env, checks, cluster):
    vocab = env.model_config()["vocab_size"]
    first = random_prompts(vocab, 1, seed=77, min_len=48, max_len=48)[0][0]
    rc, ids1, fin1, err = generate(env, cluster.address, first, 8)
    checks.check(rc == 0 and fin1 is not None, "prefix cache: first turn completes", err.strip())
    second = first + ids1 + random_prompts(vocab, 1, seed=78, min_len=10, max_len=10)[0][0]
    ref = env.reference_ids(second, 8)
    rc, ids2, fin2, err = generate(env, cluster.address, second, 8)
    cached = int((fin2 or {}).get("usage", {}).get("cached_prompt_tokens", 0))
    checks.check(rc == 0 and cached > 0, "prefix cache: the second turn hits (cached tokens > 0)",
                 f"exit {rc}, finished {fin2}, {err.strip()}")
    checks.check(rc == 0 and ids2 == ref, "prefix cache: output unchanged by the hit",
                 f"got {ids2}, switchyard-run {ref}")


def check_invalid_requests(env, checks, cluster):
    cfg = env.model_config()
    vocab, context = cfg["vocab_size"], cfg.get("max_position_embeddings", 256)
    ok_ids = "1,2,3"
    table = [
        ("temperature < 0", ["--prompt_ids", ok_ids, "--temperature", "-0.5"], INVALID_ARGUMENT),
        ("top_p = 0", ["--prompt_ids", ok_ids, "--top_p", "0"], INVALID_ARGUMENT),
        ("top_p > 1", ["--prompt_ids", ok_ids, "--top_p", "1.5"], INVALID_ARGUMENT),
        ("top_k < -1", ["--prompt_ids", ok_ids, "--top_k", "-2"], INVALID_ARGUMENT),
        ("min_p > 1", ["--prompt_ids", ok_ids, "--min_p", "1.5"], INVALID_ARGUMENT),
        ("repetition_penalty = 0", ["--prompt_ids", ok_ids, "--repetition_penalty", "0"],
         INVALID_ARGUMENT),
        ("presence_penalty > 2", ["--prompt_ids", ok_ids, "--presence_penalty", "2.5"],
         INVALID_ARGUMENT),
        ("frequency_penalty < -2", ["--prompt_ids", ok_ids, "--frequency_penalty", "-3"],
         INVALID_ARGUMENT),
        ("logprobs > 20", ["--prompt_ids", ok_ids, "--logprobs", "21"], INVALID_ARGUMENT),
        ("token id = vocab", ["--prompt_ids", f"1,{vocab}"], INVALID_ARGUMENT),
        ("token id < 0", ["--prompt_ids", "1,-1"], INVALID_ARGUMENT),
        ("max_tokens = 0", ["--prompt_ids", ok_ids, "--max_tokens", "0"], INVALID_ARGUMENT),
        ("min_tokens > max_tokens", ["--prompt_ids", ok_ids, "--max_tokens", "4",
                                     "--min_tokens", "5"], INVALID_ARGUMENT),
        ("prompt + max_tokens > context",
         ["--prompt_ids", ",".join(["1"] * (context - 10)), "--max_tokens", "20"],
         INVALID_ARGUMENT),
        ("empty text prompt", ["--prompt", " ", "--max_tokens", "4", "--add_special_tokens=false"],
         None),  # whitespace may encode to tokens: only "not a crash" is checked
        ("deadline exceeded", ["--prompt_ids", ok_ids, "--max_tokens", "200", "--ignore_eos",
                               "--timeout_s", "0.05"], DEADLINE_EXCEEDED),
    ]
    for name, args, code in table:
        rc, out, err = env.cli(cluster.address, "generate", *args, timeout=60)
        if code is None:
            checks.check(rc in (OK, INVALID_ARGUMENT), f"invalid request: {name} -> OK or "
                         "INVALID_ARGUMENT", f"exit {rc}: {err.strip()}")
            continue
        one_line = len(err.strip().splitlines()) == 1
        checks.check(rc == code and one_line, f"invalid request: {name} -> code {code}",
                     f"exit {rc}, stderr {err.strip()!r}")
    rc, _, err = env.cli(cluster.address, "generate", "--prompt_ids", ok_ids, "--max_tokens", "2")
    checks.check(rc == OK, "a valid request still works after the invalid ones", err.strip())


def check_abort(env, checks, cluster):
    """The Abort RPC ends a running stream with FINISH_REASON_ABORT; an unknown id is NOT_FOUND."""
    proc = subprocess.Popen([env.cli_path, "generate", "--address", cluster.address,
                             "--request_id", "e2e-abort-1", "--prompt_ids", "9,8,7",
                             "--max_tokens", "240", "--ignore_eos", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    rc_abort, _, err_abort = env.cli(cluster.address, "abort", "--request_id", "e2e-abort-1")
    rest = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    ids, finished, _ = parse_stream(first + rest)
    checks.check(rc_abort == OK and proc.returncode == OK and finished is not None and
                 finished.get("reason") == "FINISH_REASON_ABORT" and len(ids) < 240,
                 "abort: the stream ends with FINISH_REASON_ABORT",
                 f"abort exit {rc_abort} {err_abort.strip()}, stream exit {proc.returncode} "
                 f"{err.strip()}, {len(ids)} tokens, finished {finished}")
    rc, _, err = env.cli(cluster.address, "abort", "--request_id", "no-such-request")
    checks.check(rc == 5, "abort: an unknown request id -> NOT_FOUND (5)", f"exit {rc} {err}")


def promtool_path():
    found = shutil.which("promtool")
    if found:
        return found
    try:
        p = subprocess.run(["bash", os.path.join(SOURCE_DIR, "scripts", "install-promtool.sh")],
                           capture_output=True, text=True, timeout=120)
        path = p.stdout.strip()
        return path if p.returncode == 0 and os.access(path, os.X_OK) else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_metrics(env, checks, cluster):
    promtool = promtool_path()
    for idx, url in enumerate(cluster.http_urls):
        process = "coordinator" if idx == 0 else "worker"
        name = "coordinator" if idx == 0 else f"worker {idx - 1}"
        p = subprocess.run([PYTHON, os.path.join(SOURCE_DIR, "tests", "helm", "check_scrape.py"),
                            "--process", process, "--url", url + "/metrics", "--require-all"],
                           capture_output=True, text=True, timeout=60)
        checks.check(p.returncode == 0, f"metrics: {name} /metrics conforms to the contract",
                     p.stdout.strip() + p.stderr.strip())
        status, body = http_get(url + "/metrics")
        if promtool is None:
            checks.check(False, f"metrics: promtool available to check {name}",
                         "scripts/install-promtool.sh failed (see its message above)")
            continue
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                           text=True, timeout=60)
        checks.check(status == 200 and p.returncode == 0,
                     f"metrics: promtool check metrics accepts the {name}'s scrape",
                     p.stdout.strip() + p.stderr.strip())
    _, body = http_get(cluster.http_urls[0] + "/metrics")
    checks.check("switchyard_generation_tokens_total" in body and
                 'switchyard_request_errors_total{code="INVALID_ARGUMENT"' in body,
                 "metrics: the coordinator counted the requests of this run", body[:300])


def check_sigterm_drain(env, checks, cluster):
    """Last: SIGTERM to the coordinator finishes the in-flight stream, then exits 0."""
    prompt = [5, 6, 7, 8]
    proc = subprocess.Popen([env.cli_path, "generate", "--address", cluster.address,
                             "--prompt_ids", ",".join(map(str, prompt)), "--max_tokens", "240",
                             "--ignore_eos", "--temperature", "0", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    cluster.coordinator.signal(signal.SIGTERM)
    # The coordinator's signal thread flips the state shortly after the signal: poll (bounded).
    deadline = time.monotonic() + 10
    while True:
        try:
            draining = status_json(env, cluster.address)
        except RuntimeError as e:
            draining = {"error": str(e)}
        if draining.get("state") == "SERVING_STATE_DRAINING" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    checks.check(draining.get("state") == "SERVING_STATE_DRAINING",
                 "drain: after SIGTERM the coordinator reports DRAINING",
                 f"{ {k: draining.get(k) for k in ('state', 'num_running', 'error')} }")
    # Refused while draining (or, once the port closed, unreachable): UNAVAILABLE either way.
    rc, _, err = env.cli(cluster.address, "generate", "--prompt_ids", "1,2", "--max_tokens", "2",
                         timeout=60)
    checks.check(rc == UNAVAILABLE, "drain: a new request during the drain gets UNAVAILABLE",
                 f"exit {rc}: {err.strip()}")
    # Not communicate(): it reads the raw pipe and would drop what readline() buffered.
    rest = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    ids, finished, _ = parse_stream(first + rest)
    checks.check(proc.returncode == 0 and len(ids) == 240 and finished is not None,
                 "drain: the in-flight stream finishes after SIGTERM",
                 f"exit {proc.returncode}, {len(ids)} tokens, {err.strip()}")
    rc = cluster.coordinator.wait(60)
    checks.check(rc == 0, "drain: the coordinator exits 0 after draining", f"exit {rc}")


def suite_features(env, checks):
    log_dir = os.path.join(env.work_dir, "logs-features")
    with Cluster(env.bin_dir, env.model_dir, log_dir, 2) as cluster:
        for step in (check_status_transport, check_bench, check_cancel_frees_blocks,
                     check_prefix_cache,
                     check_invalid_requests, check_abort, check_metrics, check_sigterm_drain):
            try:
                step(env, checks, cluster)
            except Exception as e:  # one broken step must not hide the others' results
                checks.check(False, step.__name__, f"{type(e).__name__}: {e}")


def suite_overflow(env, checks):
    """A full queue answers RESOURCE_EXHAUSTED while the accepted requests complete."""
    log_dir = os.path.join(env.work_dir, "logs-overflow")
    with Cluster(env.bin_dir, env.model_dir, log_dir, 1,
                 coordinator_flags=["--max_queued_requests", "2", "--max_num_seqs", "1"]) as c:
        results = [None] * 10

        def one(idx):
            # Long generations (near the 256-token context) keep the first ones running while
            # the rest arrive, even on a slow machine.
            results[idx] = generate(env, c.address, [idx + 1, 2, 3], 240, "--ignore_eos")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [r[0] for r in results]
        rejected = codes.count(RESOURCE_EXHAUSTED)
        accepted = [r for r in results if r[0] == OK]
        checks.check(rejected >= 1, "overflow: a full queue gives RESOURCE_EXHAUSTED",
                     f"exit codes {codes}")
        checks.check(len(accepted) >= 3 and rejected + len(accepted) == len(results),
                     "overflow: every other request is accepted", f"exit codes {codes}")
        print(f"overflow: exit codes {codes}")
        checks.check(all(len(r[1]) == 240 for r in accepted),
                     "overflow: the accepted requests complete",
                     f"lengths {[len(r[1]) for r in accepted]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", required=True)
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--suite", choices=["model", "greedy", "features", "overflow"], required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = Env(args)
    missing = env.missing_binaries()
    if missing:
        print(f"SKIP: not built: {', '.join(missing)}")
        return SKIP
    env.ensure_model(fresh=args.suite == "model")
    if args.suite == "model":
        return 0
    checks = Checks()
    try:
        if args.suite == "greedy":
            suite_greedy(env, checks, args.workers)
        elif args.suite == "features":
            suite_features(env, checks)
        else:
            suite_overflow(env, checks)
    except ClusterError as e:
        checks.check(False, "cluster start", str(e))
    print(f"{args.suite}: {len(checks.failures)} check(s) failed" if checks.failures
          else f"{args.suite}: all checks passed")
    return 1 if checks.failures else 0


if __name__ == "__main__":
    sys.exit(main())
