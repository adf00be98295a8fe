# One image for every gridchain program: gridchaind, gridchain-relay and the gridchain client.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The pinned, hashed dependencies first (a layer that changes only with the lock), then
# gridchain itself without dependencies: every image gets the versions the lock names.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY gridchain ./gridchain
RUN pip install --no-deps . \
    && rm -rf /src \
    && useradd --create-home --uid 10001 gridchain \
    && mkdir -p /data /network /init/node1 /init/node2 /init/node3 /init/node4 /init/relay \
    && chown -R gridchain:gridchain /data /network /init

# A fresh named volume takes the owner of the directory it is first mounted on, so the node
# can write to /data. /network and /init/* are where docker-compose.yml's one-shot init
# service mounts the shared network volume and each node's and the relay's data volume.
VOLUME /data
WORKDIR /data
USER gridchain

# Nodes listen on 5004-5007 (the prototype's ports), the relay on 5010.
EXPOSE 5004-5010

# gridchaind turns SIGTERM into a clean shutdown (it logs node.stopped and exits 0).
STOPSIGNAL SIGTERM
CMD ["gridchaind", "--host", "0.0.0.0", "--port", "5004", "--data-dir", "/data", "--log-format", "json"]
