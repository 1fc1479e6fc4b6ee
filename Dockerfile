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
 && useradd --system --uid 10001 --no-create-home callscribe
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PROXY_URL=0.0.0.0:5000
USER callscribe
EXPOSE 5000
# Checks /healthz over http, or https when CERT_PEM is set (the certificate is for the public name,
# so it is not verified against 127.0.0.1).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD ["python", "-c", "import os, ssl, urllib.request; port = os.environ['PROXY_URL'].rsplit(':', 1)[1]; scheme = 'https' if os.environ.get('CERT_PEM') else 'http'; urllib.request.urlopen(f'{scheme}://127.0.0.1:{port}/healthz', timeout=2, context=ssl._create_unverified_context())"]
ENTRYPOINT ["callscribe", "serve"]
