#!/usr/bin/python3
"""Independent float64 numpy reference of every supported family (see ref_model.py).

Usage:
  /usr/bin/python3 tests/reference/moe_reference.py --model DIR --prompt-ids 1,2,3
      [--logits-out FILE] [--generate N --ids-out FILE]

--logits-out writes the logits of every prompt position as raw little-endian float32
[num_prompt_tokens, vocab]. --generate N decodes N tokens greedily (no EOS stop) and prints, per
step, "step <i> token <id> top2_gap <gap>"; --ids-out writes the generated ids comma-separated.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ref_checkpoint import CheckpointError, load_model_dir  # noqa: E402
from ref_model import ReferenceModel, greedy_generate  # noqa: E402


def parse_ids(text):
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one prompt id")
    return ids


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (config.json + "
                        "model.safetensors or model.safetensors.index.json)")
    parser.add_argument("--prompt-ids", required=True, type=parse_ids)
    parser.add_argument("--logits-out", help="raw float32 [num_prompt_tokens, vocab] output")
    parser.add_argument("--generate", type=int, default=0, help="greedy tokens to generate")
    parser.add_argument("--ids-out", help="generated ids, comma-separated")
    args = parser.parse_args(argv)
    if args.ids_out and args.generate <= 0:
        parser.error("--ids-out needs --generate N with N > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        config, tensors = load_model_dir(args.model)
        model = ReferenceModel(config, tensors)
        logits = model.forward(args.prompt_ids)
    except (CheckpointError, ValueError) as e:
        print(f"moe_reference: error: {e}", file=sys.stderr)
        return 2
    unused = model.unused_tensors()
    if unused:
        print(f"moe_reference: warning: {len(unused)} tensors not used by the reference: "
              f"{unused[:8]}{' ...' if len(unused) > 8 else ''}", file=sys.stderr)
    if args.logits_out:
        logits.astype("<f4").tofile(args.logits_out)
    print(f"prompt_tokens {len(args.prompt_ids)} vocab {logits.shape[1]} "
          f"max_abs_logit {np.max(np.abs(logits)):.6g}")
    if args.generate > 0:
        ids, gaps = greedy_generate(model, args.prompt_ids, args.generate)
        for step, (token, gap) in enumerate(zip(ids, gaps)):
            print(f"step {step} token {token} top2_gap {gap:.9g}")
        if args.ids_out:
            with open(args.ids_out, "w") as f:
                f.write(",".join(str(t) for t in ids))
    return 0


if __name__ == "__main__":
    sys.exit(main())
