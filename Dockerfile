# syntax=docker/dockerfile:1
# Build stage: install callscribe into a virtualenv that the runtime stage copies as a whole.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

# Runtime stage: no compilers, no sources, an unprivileged user. espeak-ng is the offline voice
# for games talking back (CALLSCRIBE_SPEECH=espeak, or auto without Deepgram Aura).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends espeak-ng \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home callscribe \
 && mkdir /data && chown callscribe /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROXY_URL=0.0.0.0:5000 \
    CALLSCRIBE_RUN_FILE=/tmp/callscribe-serve.json \
    CALLSCRIBE_DATA_DIR=/data
USER callscribe
# The call store (callscribe.db) lives here: mount a named volume to keep calls across containers.
VOLUME /data
EXPOSE 5000
# Checks /healthz where the server really listens: `serve` writes its addresses to
# CALLSCRIBE_RUN_FILE, so the check follows --listen/--cert given after the image name too
# (flags there reach the entrypoint only, never this command).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["callscribe", "healthcheck"]
# Live calls get CALLSCRIBE_SHUTDOWN_GRACE (10 s) to finish on SIGTERM: stop with a longer timeout,
# e.g. `docker stop --time 20` or `docker run --stop-timeout 20`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["callscribe", "serve"]
