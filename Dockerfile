# syntax=docker/dockerfile:1
# Images of kim-operator and kim-worker, one target each:
#   docker build --target operator -t kim-operator:0.1.0 .
#   docker build --target worker   -t kim-worker:0.1.0 .
# Both build in one Rust stage (cached between the two builds) and run on distroless/cc as the
# non-root user 65532 with nothing but the binary.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# No debug info and stripped symbols in images (the workspace's release profile keeps line
# tables for profiling on developer machines).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kim-operator -p kim-worker --bin kim-operator --bin kim-worker \
    && mkdir -p /out && cp target/release/kim-operator target/release/kim-worker /out/

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build /out/kim-operator /usr/local/bin/kim-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kim-operator"]

FROM ${RUNTIME_IMAGE} AS worker
COPY --from=build /out/kim-worker /usr/local/bin/kim-worker
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kim-worker"]
