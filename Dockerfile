# One image for the web app and the workers (the command picks the role).
#   docker build -t lamanas-studio .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LAMANAS_ARTIFACTS=/artifacts \
    LAMANAS_DATA=/data

# graphviz: the `dot` binary that renders genotype SVGs (the distribution's current build).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends graphviz \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY pyproject.toml ./
COPY model ./model
COPY backend ./backend
COPY webapp ./webapp
RUN pip install --no-cache-dir --no-deps . \
    && useradd --create-home --uid 10001 lamanas \
    && mkdir -p /artifacts /data \
    && chown lamanas /artifacts

USER 10001
EXPOSE 8501
VOLUME ["/artifacts"]

# The web app; workers run `python -m backend worker --device cuda|cpu` (see docker-compose.yml).
CMD ["python", "-m", "streamlit", "run", "webapp/app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true"]
