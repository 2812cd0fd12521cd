"""A client process for the NAT test, run inside the client's network namespace: generates
greedily and prints JSON with the tokens, the chain, and each node's announced relay. Not a
test module itself.

    python tests/relay_client.py MODEL_PATH NEW_TOKENS MADDR...
"""

import json
import sys

import torch

from swarmnode import DistributedModelForCausalLM

PROMPT = [[11, 22, 33, 44, 55, 66]]


def main() -> None:
    model_path, new_tokens, *peers = sys.argv[1:]
    with DistributedModelForCausalLM.from_pretrained(model_path, initial_peers=peers, wait_for_servers=60) as model:
        with model.inference_session(max_length=len(PROMPT[0]) + int(new_tokens)) as session:
            out = model.generate(torch.tensor(PROMPT), max_new_tokens=int(new_tokens), session=session)
            chain = [[hop.peer_id, hop.start, hop.end] for hop in session.chain]
        snapshot = model.remote.last_snapshot
        relays = {peer: record.relay for peer, record in snapshot.nodes.items()}
        pings = dict(model.remote.router.pings)
    print(json.dumps({"tokens": out.tolist(), "chain": chain, "relays": relays, "pings": pings}))


if __name__ == "__main__":
    main()
