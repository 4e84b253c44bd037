# Static musl binaries on distroless: small, non-root, nothing to patch but our code.
#   docker build --target operator -t rigging-operator:dev .
#   docker build --target sidecar  -t rigging-sidecar:dev .
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
COPY --from=build /out/rigging-operator /rigging-operator
USER 65532:65532
ENTRYPOINT ["/rigging-operator"]

FROM gcr.io/distroless/static-debian12:nonroot AS sidecar
COPY --from=build /out/rigging-sidecar /rigging-sidecar
USER 65532:65532
ENTRYPOINT ["/rigging-sidecar"]
