# Static musl binaries on distroless: small, non-root, nothing to patch but our code.
#   docker build --target operator -t rigging-operator:dev .
#   docker build --target sidecar  -t rigging-sidecar:dev .
# The version the images are labelled with: `--build-arg VERSION=$(git describe)`.
ARG VERSION=0.1.0

FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p rigging-operator -p rigging-sidecar \
    && mkdir /out \
    && cp target/x86_64-unknown-linux-musl/release/rigging-operator \
          target/x86_64-unknown-linux-musl/release/rigging-sidecar /out/

FROM gcr.io/distroless/static-debian12:nonroot AS operator
ARG VERSION
LABEL org.opencontainers.image.title="rigging-operator" \
      org.opencontainers.image.description="Rigging's controller manager: ReplicatedService, ShardedService, WorkQueue" \
      org.opencontainers.image.source="https://github.com/rigging-dev/rigging" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/rigging-operator /rigging-operator
USER 65532:65532
ENTRYPOINT ["/rigging-operator"]

FROM gcr.io/distroless/static-debian12:nonroot AS sidecar
ARG VERSION
LABEL org.opencontainers.image.title="rigging-sidecar" \
      org.opencontainers.image.description="Rigging's sidecars: TLS terminator, sharding ambassador, log and metrics adapters, health monitor" \
      org.opencontainers.image.source="https://github.com/rigging-dev/rigging" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/rigging-sidecar /rigging-sidecar
USER 65532:65532
ENTRYPOINT ["/rigging-sidecar"]
