# Offline images: a Debian base made locally with debootstrap (no registry),
# the binaries built on the host, etcd from Debian's etcd-server, Prometheus
# from Debian's prometheus.
# Built by scripts/images.sh from a staging folder holding the binaries.

ARG VERSION=unreleased
ARG REVISION=unknown
# Where the source is (the repository's URL; images.sh passes git's origin).
ARG SOURCE=unknown

FROM claims-base:bookworm AS runtime
ARG VERSION
ARG REVISION
ARG SOURCE
LABEL org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.revision=${REVISION} \
      org.opencontainers.image.source=${SOURCE} \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent claims

FROM runtime AS claim-service
COPY claim-service claimctl /usr/local/bin/
USER claims
EXPOSE 50051 9464
# Liveness: etcd trouble makes a replica unready (/readyz), never unhealthy.
HEALTHCHECK --interval=3s --timeout=4s --start-period=3s --retries=5 CMD ["claim-service", "healthcheck"]
ENTRYPOINT ["claim-service"]

FROM runtime AS ingest-node
COPY ingest-node /usr/local/bin/
USER claims
EXPOSE 1935 8080
HEALTHCHECK --interval=3s --timeout=4s --start-period=3s --retries=5 CMD ["ingest-node", "healthcheck"]
ENTRYPOINT ["ingest-node"]

FROM runtime AS etcd
COPY etcd etcdctl /usr/local/bin/
RUN mkdir -p /etcd-data && chown claims:claims /etcd-data
USER claims
EXPOSE 2379 2380
ENTRYPOINT ["etcd"]

FROM runtime AS prometheus
COPY prometheus /usr/local/bin/
RUN mkdir -p /prometheus && chown claims:claims /prometheus
USER claims
EXPOSE 9090
ENTRYPOINT ["prometheus"]
