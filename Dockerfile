# syntax=docker/dockerfile:1
# certwright's container images, one target per binary:
#   docker build --target controller -t ghcr.io/certwright/certwright-controller:0.1.0 .
#   docker build --target webhook    -t ghcr.io/certwright/certwright-webhook:0.1.0 .
# Both binaries are built once, in the shared builder stage (BuildKit reuses it for the
# second target). The runtime is distroless: glibc, libgcc, CA certificates (for the
# system roots a PKI's TLS is checked against when an issuer has no caBundle), no shell.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The registry and target/ live in cache mounts, kept between builds but not in the
# image, so the binaries are copied out of target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p certwright-controller -p certwright-webhook \
 && install -D -m 0755 target/release/certwright-controller /out/certwright-controller \
 && install -D -m 0755 target/release/certwright-webhook /out/certwright-webhook

FROM ${RUNTIME_IMAGE} AS controller
LABEL org.opencontainers.image.title="certwright-controller" \
      org.opencontainers.image.description="certwright's controller: signs cert-manager CertificateRequests through enterprise PKI" \
      org.opencontainers.image.source="https://github.com/certwright/certwright" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/certwright-controller /usr/local/bin/certwright-controller
USER 65532:65532
# metrics, health probes
EXPOSE 9402 8081
ENTRYPOINT ["/usr/local/bin/certwright-controller"]

FROM ${RUNTIME_IMAGE} AS webhook
LABEL org.opencontainers.image.title="certwright-webhook" \
      org.opencontainers.image.description="certwright's validating admission webhook for InternalIssuer and InternalClusterIssuer" \
      org.opencontainers.image.source="https://github.com/certwright/certwright" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/certwright-webhook /usr/local/bin/certwright-webhook
USER 65532:65532
# HTTPS admission, health probes
EXPOSE 9443 8081
ENTRYPOINT ["/usr/local/bin/certwright-webhook"]
