# The ncpi-followup application image: the `ncpi` command, running the worker by default.
#
#   docker build -t ncpi-followup .
#   docker run --rm ncpi-followup --help
#   docker run --rm -e NCPI_DATABASE_URL=... ncpi-followup db upgrade
#
# docker-compose.yml builds it for the `migrate` and `worker` services. Settings: NCPI_* variables
# (ncpi_workflow/settings.py); the working directory /app holds config/, migrations/ and examples/.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 ncpi \
 && useradd --system --uid 10001 --gid ncpi --create-home --home-dir /home/ncpi --shell /usr/sbin/nologin ncpi

WORKDIR /app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# The project. ncpi_workflow finds config/ and migrations/ next to its own directory
# (ncpi_workflow.PROJECT_ROOT = the parent of the package), so the package must be imported from
# /app, not from a copy in site-packages: install it in editable mode (the console script `ncpi`
# and the templates then come from /app as well). A plain `pip install .` would make `ncpi db
# upgrade` look for site-packages/migrations; the check below fails the build if that ever happens.
COPY alembic.ini worker.py ./
COPY ncpi_workflow ./ncpi_workflow
COPY workflows ./workflows
COPY activities ./activities
COPY config ./config
COPY migrations ./migrations
COPY examples ./examples
# The web app's GOV.UK Design System assets, installed from npm by `make` before `docker build`.
COPY node_modules/govuk-frontend/dist ./node_modules/govuk-frontend/dist
RUN pip install --no-deps --editable . \
 && python -c "import sys, pathlib, ncpi_workflow as p; root = p.PROJECT_ROOT; ok = root == pathlib.Path('/app') and (root / 'migrations' / 'env.py').is_file() and (root / 'config' / 'policy.toml').is_file(); sys.exit(0 if ok else f'ncpi_workflow resolves its project root to {root}, expected /app')" \
 && ncpi --help > /dev/null \
 && python -m compileall -q /app/ncpi_workflow /app/workflows /app/activities /app/worker.py /app/migrations \
 && mkdir -p /app/.data/evidence \
 && chown -R ncpi:ncpi /app/.data

# The code stays root-owned and read-only for the service user; only /app/.data (SQLite on the
# embedded defaults, evidence files) is writable. Mount a volume there to keep it.
USER ncpi:ncpi

# `ncpi health` exits 0 when this container's worker is running and polling its task queue.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["ncpi", "health", "--worker"]

ENTRYPOINT ["ncpi"]
CMD ["worker"]
