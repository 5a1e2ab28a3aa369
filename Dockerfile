# Images of the Broadcast Claims services, one file with a target each:
#   docker build --target claim-service -t claims/claim-service .
#   docker build --target ingest-node   -t claims/ingest-node .
# (docker-compose.yml builds both.) Where no registry can be reached, use
# scripts/images.sh and docker-compose.offline.yml instead.

# The version and commit the images are labelled with (scripts/release.sh
# and scripts/images.sh pass them; --version reads the commit too).
ARG VERSION=unreleased
ARG REVISION=unknown
# Where the source is (the repository's URL; images.sh passes git's origin).
ARG SOURCE=unknown

FROM rust:1-bookworm AS build
ARG REVISION
ENV CLAIMS_GIT_COMMIT=${REVISION}
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p claim-service -p claimctl -p ingest-node

FROM debian:bookworm-slim AS runtime
ARG VERSION
ARG REVISION
ARG SOURCE
LABEL org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.source=${SOURCE} \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent claims

FROM runtime AS claim-service
COPY --from=build /src/target/release/claim-service /src/target/release/claimctl /usr/local/bin/
USER claims
EXPOSE 50051 9464
# Liveness: etcd trouble makes a replica unready (/readyz), never unhealthy.
HEALTHCHECK --interval=3s --timeout=4s --start-period=3s --retries=5 CMD ["claim-service", "healthcheck"]
ENTRYPOINT ["claim-service"]

FROM runtime AS ingest-node
COPY --from=build /src/target/release/ingest-node /usr/local/bin/
USER claims
EXPOSE 1935 8080
HEALTHCHECK --interval=3s --timeout=4s --start-period=3s --retries=5 CMD ["ingest-node", "healthcheck"]
ENTRYPOINT ["ingest-node"]
