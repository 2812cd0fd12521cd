"""Client layer: swarm connection, inference sessions, DistributedModelForCausalLM."""
