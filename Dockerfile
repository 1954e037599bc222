# Build: docker build -t talos-etcd-backup .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p talos-etcd-backup && \
    install -m 0755 target/release/talos-etcd-backup /talos-etcd-backup

# No shell, no package manager: the binary, CA roots and a non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /talos-etcd-backup /usr/local/bin/talos-etcd-backup
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/talos-etcd-backup"]
CMD ["operator"]
