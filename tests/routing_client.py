"""A client process for the routing test: opens N short sessions and prints each session's
chain as JSON (one list of peer ids per session). Not a test module itself.

    python tests/routing_client.py MODEL_PATH SESSIONS MADDR...
"""

import json
import sys

import torch

from swarmnode import DistributedModelForCausalLM


def main() -> None:
    model_path, sessions, *peers = sys.argv[1:]
    chains = []
    with DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers) as model:
        snapshot = model.connection.run(model.connection.snapshot(model.remote.model_id, model.remote.num_blocks))
        print(json.dumps({"publishers": len(snapshot.shared)}), file=sys.stderr)
        for i in range(int(sessions)):
            with model.inference_session(max_length=16) as session:
                model.generate(torch.tensor([[1 + i, 2, 3, 4]]), max_new_tokens=4, session=session)
                chains.append([hop.peer_id for hop in session.chain])
    print(json.dumps(chains))


if __name__ == "__main__":
    main()
