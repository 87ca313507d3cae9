# syntax=docker/dockerfile:1
# The image `kubectl pvbackup schedule` runs: the plugin alone, as a non-root user, on a base
# with nothing but glibc and CA certificates (no shell, no package manager).
# Built by `cargo xtask release --image` (tag: ghcr.io/kubectl-pvbackup/kubectl-pvbackup:<version>).

# The toolchain of rust-toolchain.toml; Debian 12 matches the runtime's glibc.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
# Symbols for backtraces, no DWARF, as the release archives (xtask release).
RUN CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin kubectl-pvbackup \
    && install -D -m 0755 target/release/kubectl-pvbackup /out/kubectl-pvbackup

# distroless/cc: glibc, libgcc_s, CA certificates, /etc/passwd with nonroot (65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kubectl-pvbackup /usr/local/bin/kubectl-pvbackup
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-pvbackup"]
