"""A client process for the chaos test: generates until told to stop, checks every output
against local generation, and writes a JSON report. Not a test module itself.

    python tests/chaos_client.py MODEL_PATH REPORT_PATH STOP_FILE SEED MADDR...
"""

import json
import os
import random
import sys
import time
import traceback

import torch
from transformers import AutoModelForCausalLM

from swarmnode import DistributedModelForCausalLM


def main() -> None:
    model_path, report_path, stop_file, seed, *peers = sys.argv[1:]
    rng = random.Random(int(seed))
    torch.set_num_threads(1)
    reference = AutoModelForCausalLM.from_pretrained(model_path)
    report = {"completed": 0, "mismatches": 0, "errors": [], "failovers": 0, "longest_s": 0.0}
    with DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers, wait_for_servers=30) as model:
        while not os.path.exists(stop_file):
            prompt = torch.tensor([[rng.randrange(256) for _ in range(rng.randint(3, 12))]])
            began = time.monotonic()
            try:
                with model.inference_session(max_length=prompt.shape[1] + 32) as session:
                    out = model.generate(prompt, max_new_tokens=32, session=session)
                    report["failovers"] += len(session.failovers)
            except Exception:  # noqa: BLE001 - the report must say what went wrong, whatever it was
                report["errors"].append(traceback.format_exc(limit=3))
                continue
            finally:
                report["longest_s"] = max(report["longest_s"], time.monotonic() - began)
            expected = reference.generate(prompt, max_new_tokens=32, do_sample=False)
            report["completed"] += 1
            report["mismatches"] += int(not torch.equal(out, expected))
            with open(report_path, "w") as f:
                json.dump(report, f)
    with open(report_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
