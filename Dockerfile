# observer's container image: `observer daemon` for the DaemonSet in deploy/kubernetes/, and the
# CLI (`observer pid`, `observer processes`).
#
#   docker build -t REGISTRY/observer:0.1.0 .
#
# The builder runs exactly what a developer machine and CI run, `cargo xtask build` (rust-src for
# nightly, bpf-linker built against nightly's LLVM, then the release build with the eBPF object
# embedded), on the toolchains those machines have: stable and nightly through rustup. The runtime
# image holds the binary and nothing else of the build.

# The project's toolchains (see rust-version in Cargo.toml). The nightly compiles the eBPF programs;
# bpf-linker is built against its LLVM, so a different nightly may need a different bpf-linker
# (xtask/src/main.rs, BPF_LINKER_VERSION).
ARG RUST_VERSION=1.95.0
ARG RUST_NIGHTLY=nightly-2026-05-19

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG RUST_VERSION
ARG RUST_NIGHTLY
# xtask and aya-build call the toolchains by channel name (`cargo +stable`, `rustup run nightly`):
# install the pinned ones and give them those names, as on a developer machine.
RUN set -eux; \
    rustup toolchain install "${RUST_NIGHTLY}" --profile minimal --component rust-src; \
    host="$(rustc -vV | sed -n 's/^host: //p')"; \
    cd "${RUSTUP_HOME}/toolchains"; \
    [ -e "stable-${host}" ] || ln -s "${RUST_VERSION}-${host}" "stable-${host}"; \
    [ -e "nightly-${host}" ] || ln -s "${RUST_NIGHTLY}-${host}" "nightly-${host}"; \
    rustup toolchain list; \
    cargo +stable --version; \
    rustup run nightly rustc --version
WORKDIR /src
COPY . .
RUN cargo xtask build && cp target/release/observer /observer

# Runtime: glibc (the binary links it dynamically) and the binary, nothing else.
FROM debian:bookworm-slim
COPY --from=builder /observer /usr/local/bin/observer
# Root in the container: loading eBPF programs needs CAP_BPF and CAP_PERFMON, and a non-root user
# only gets capabilities through ambient capabilities (which Kubernetes cannot grant) or file
# capabilities (which allowPrivilegeEscalation: false disables). The DaemonSet drops every
# capability but the few it needs and makes the root filesystem read-only (docs/deploy.md).
USER 0:0
EXPOSE 9645
ENTRYPOINT ["/usr/local/bin/observer"]
# The API listens on loopback unless told otherwise: the DaemonSet sets OBSERVER_LISTEN.
CMD ["daemon"]
