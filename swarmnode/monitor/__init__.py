"""The swarm monitor: a read-only exporter of swarm health with a health page (``swarmnode monitor``)."""
